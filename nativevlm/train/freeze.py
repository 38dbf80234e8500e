"""The stage contract: which parameters train (fnmatch patterns over parameter names), checked against the
model before training and printed at the start of each stage, so what a stage changes is never implicit."""
from __future__ import annotations

import re
from collections import defaultdict
from fnmatch import fnmatchcase

import torch.nn as nn

from ..config import ConfigError
from .lora import canonical_name, is_adapter, lora_targets


def matches(name: str, patterns) -> bool:
    return any(fnmatchcase(canonical_name(name), p) for p in patterns)


def check_patterns(model: nn.Module, stages) -> None:
    """Every trainable, LR-multiplier and LoRA pattern must match something in this model: a pattern
    that matches nothing is a typo that would silently freeze (or not adapt) what was meant to train."""
    names = [canonical_name(n) for n, _ in model.named_parameters()]
    for i, stage in enumerate(stages):
        for field_name, patterns in (("trainable", stage.trainable), ("lr_multipliers", list(stage.lr_multipliers))):
            for p in patterns:
                if not any(fnmatchcase(n, p) for n in names):
                    raise ConfigError(f"stages[{i}].{field_name}: pattern {p!r} matches no parameter; names look "
                                      f"like {', '.join(names[:3])}")
        for p in stage.lora.modules if stage.lora.rank else ():
            if not lora_targets(model, [p]):
                raise ConfigError(f"stages[{i}].lora.modules: pattern {p!r} matches no nn.Linear module")


def apply_trainable(model: nn.Module, patterns: list[str]) -> None:
    """Train parameters matching `patterns` and all LoRA adapters; the base weight under an adapter stays
    frozen whatever the patterns say."""
    for name, p in model.named_parameters():
        base_under_adapter = canonical_name(name) != name
        p.requires_grad_(is_adapter(name) or (matches(name, patterns) and not base_under_adapter))


def _module_key(name: str) -> str:
    """`language.layers.3.attn.qkv_proj.weight` -> `language.layers.*.attn.qkv_proj` (layers grouped)."""
    if is_adapter(name):
        return re.sub(r"\.\d+(?=\.)", ".*", name.split(".parametrizations.")[0]) + " (lora)"
    return re.sub(r"\.\d+(?=\.)", ".*", canonical_name(name).rsplit(".", 1)[0])


def contract_table(model: nn.Module, title: str) -> str:
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, p in model.named_parameters():
        rows[_module_key(name)][0] += p.numel()
        rows[_module_key(name)][1] += p.numel() if p.requires_grad else 0
    total = sum(r[0] for r in rows.values())
    trainable = sum(r[1] for r in rows.values())
    width = max(len(k) for k in rows)
    lines = [f"{title}: {trainable:,} of {total:,} parameters train ({100 * trainable / max(total, 1):.1f}%)",
             f"  {'module':<{width}}  {'params':>12}  state"]
    for key, (n, t) in rows.items():
        state = "train" if t == n else "frozen" if t == 0 else "partly"
        lines.append(f"  {key:<{width}}  {n:>12,}  {state}")
    return "\n".join(lines)
