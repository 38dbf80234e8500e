"""LoRA as a weight parametrization: `weight = W + (alpha / r) * B @ A`.

A parametrization (rather than a wrapper module) keeps module names and call sites unchanged, and merging
is `remove_parametrizations(leave_parametrized=True)`, which stores exactly the tensor the adapted forward
used, so the merged export computes bit-identical outputs. B starts at zero: the adapted model starts as
the base model.
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

ORIGINAL = ".parametrizations.weight.original"
ADAPTER = ".parametrizations.weight.0.lora_"


class LoraDelta(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_B @ self.lora_A).to(weight.dtype) * self.scale


def lora_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the nn.Linear modules matching any pattern."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(fnmatchcase(name, p) for p in patterns)]


def add_lora(model: nn.Module, patterns: list[str], rank: int, alpha: float) -> list[str]:
    names = lora_targets(model, patterns)
    for name in names:
        linear = model.get_submodule(name)
        delta = LoraDelta(linear.out_features, linear.in_features, rank, alpha).to(linear.weight.device)
        parametrize.register_parametrization(linear, "weight", delta)
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight, leaving plain nn.Linear weights."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def canonical_name(name: str) -> str:
    """A base weight's name as it was before LoRA, so stage patterns match either way."""
    return name.replace(ORIGINAL, ".weight")


def is_adapter(name: str) -> bool:
    return ADAPTER in name
