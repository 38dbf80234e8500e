"""Run metrics: one JSON object per logged step in `metrics.jsonl` and the same scalars in TensorBoard.

Throughput is reported as tokens/s (non-padding tokens, all ranks) and an *estimated* model FLOP
utilisation: FLOPs are taken as 6 * N * tokens for forward + backward, N = parameters outside the
embedding table (a lookup, not a matmul). It ignores attention's T^2 term and overcounts frozen stages
(frozen weights need no weight gradient), so treat it as a yardstick between runs, not a measurement.
MFU needs the device's peak (`peak_tflops` in the recipe); without it only achieved TFLOP/s is logged.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch.nn as nn


def flop_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)


def throughput(tokens: int, seconds: float, n_params: int, peak_tflops: float) -> dict:
    tflops = 6 * n_params * tokens / max(seconds, 1e-9) / 1e12
    return {"tokens_per_s": tokens / max(seconds, 1e-9), "tflops_est": tflops,
            "mfu_est": tflops / peak_tflops if peak_tflops > 0 else None}


class MetricsLog:
    """Writes only on rank 0. On resume, rows past the checkpoint's step are dropped (they will be
    recomputed) and TensorBoard purges its events past that step likewise."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(r + "\n" for r in rows))
        elif resume_step is None:
            self.path.write_text("")
        from torch.utils.tensorboard import SummaryWriter  # deferred: loading tensorboard takes seconds

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(f"train/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
