"""Curate one dataset end to end: read, run the chosen stages, write kept records and the report.

The input is a LLaVA JSON / JSONL file or a sharded source (`data.shards`); the output is a JSON / JSONL
file (records unchanged) when `out` ends in `.json` / `.jsonl`, otherwise a shard folder holding the kept
records with their images' bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .balance import Balance
from .base import CurationError, CurationResult, Stage, load_records, run_pipeline
from .dedup import Dedup
from .integrity import ImageIntegrity
from .judge import ImageTextJudge, LogprobFn
from .output import source_name, write_kept
from .report import write_report
from .text import TextQuality

STAGE_NAMES = ("integrity", "text", "dedup", "judge", "balance")
DEFAULT_STAGES = ("integrity", "text", "dedup", "judge")


def build_stages(names: list[str], balance_buckets: int = 32, balance_per_bucket: Optional[int] = None,
                 balance_total: Optional[int] = None, seed: int = 0,
                 judge_fn: Optional[LogprobFn] = None) -> list[Stage]:
    """`judge_fn(image_path, prompt, answer) -> log-likelihood` scores alignment (a trained model's, built by
    the caller, e.g. `infer.chat.model_logprob_fn`; a few negatives, since each costs a forward pass);
    without it the judge uses its proxy matcher."""
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise CurationError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
    if "balance" in names and (balance_per_bucket is None) == (balance_total is None):
        raise CurationError("the balance stage needs exactly one of --balance-per-bucket / --balance-total")
    make = {
        "integrity": ImageIntegrity,
        "text": TextQuality,
        "dedup": Dedup,
        "judge": lambda: (ImageTextJudge(judge_fn, negatives=4, seed=seed) if judge_fn
                          else ImageTextJudge(seed=seed)),
        "balance": lambda: Balance(balance_buckets, balance_per_bucket, balance_total, seed=seed),
    }
    return [make[n]() for n in names]


def curate_file(src: Path, out: Path, stages: list[Stage], image_root: Optional[Path] = None,
                report_dir: Optional[Path] = None, strict: bool = False, progress: bool = False,
                engine: str = "local", address: Optional[str] = None, workers: int = 2) -> CurationResult:
    """Under `strict`, broken input (malformed records, missing/corrupt images, marker mismatch) raises a
    CurationError naming the file and records instead of being dropped; nothing is written then.
    `engine="ray"` runs the stages on Ray Data over shards (`ray_engine`): on the cluster at `address`, or
    a local Ray with `workers` CPUs."""
    src = Path(src)
    if engine == "ray":
        from .ray_engine import run_ray, start

        start(address, workers)
        result = run_ray(stages, src, Path(out), workers, strict)
    elif engine == "local":
        entries, load_drops = load_records(src, image_root)
        result = run_pipeline(stages, entries, load_drops, src, progress=progress, strict=strict)
        write_kept(result.kept, Path(out), source_name(src))
    else:
        raise CurationError(f"--engine {engine!r}: choose local or ray")
    if report_dir is not None:
        write_report(result, Path(report_dir))
    return result
