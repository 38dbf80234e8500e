"""AdamW over the trainable parameters, grouped by (weight decay, LR multiplier).

Matrices decay; vectors (norm gains, biases) do not, since decaying a gain pulls it towards zero rather
than regularising. `lr_multipliers` maps fnmatch patterns to LR factors (the first matching pattern wins),
e.g. a fresh connector at 10x the LR of a pretrained LLM. Each group keeps its factor as `lr_scale` so the
trainer sets `lr = schedule(step) * lr_scale`.

The update runs fused (one kernel over all of a group's tensors) where torch has that kernel, i.e. for
plain tensors on CPU and CUDA: PyTorch's default on CPU is a Python loop of about ten elementwise ops per
parameter tensor. Sharded (FSDP2 DTensor) parameters keep the default implementation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .freeze import matches


def lr_scale(name: str, multipliers: dict[str, float]) -> float:
    return next((m for p, m in multipliers.items() if matches(name, [p])), 1.0)


def build_optimizer(model: nn.Module, stage) -> torch.optim.AdamW:
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.ndim >= 2, lr_scale(name, stage.lr_multipliers))
            groups.setdefault(key, []).append(p)
    param_groups = [
        {"params": params, "weight_decay": stage.weight_decay if decay else 0.0, "lr_scale": scale, "lr": stage.lr}
        for (decay, scale), params in sorted(groups.items())
    ]
    params = [p for g in param_groups for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and not hasattr(p, "full_tensor") for p in params)
    return torch.optim.AdamW(param_groups, lr=stage.lr, betas=tuple(stage.betas), eps=stage.eps,
                             fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
