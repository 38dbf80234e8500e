"""Learning-rate schedules as pure functions of the step: linear warm-up, then constant (NaViL
pre-training) or cosine decay to `min_lr_ratio * lr` (SFT). Being pure, the schedule's whole state is the
step counter the checkpoint already holds."""
from __future__ import annotations

import math


def lr_at(step: int, total: int, lr: float, schedule: str, warmup: int, min_lr_ratio: float) -> float:
    """LR for optimizer step `step` (0-based) of a `total`-step stage."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def stage_lr(stage, step: int, total: int) -> float:
    return lr_at(step, total, stage.lr, stage.schedule, stage.warmup_steps, stage.min_lr_ratio)
