"""The built-in world's held-out test split (`nativevlm data world --split test`): LLaVA QA records whose
meta carries the family (the category), the kind (perception / reasoning) and, for multiple choice, the
options."""
from __future__ import annotations

from pathlib import Path

from ...config import ConfigError
from . import llava_qa
from .base import Benchmark

SPLIT = "test"


def read(path: Path) -> Benchmark:
    data = path / f"{SPLIT}.json"
    if not data.is_file():
        raise ConfigError(f"world:{path}: no {data}; write the split with `nativevlm data world --out {path} "
                          f"--split {SPLIT} --n 300`")
    bench = llava_qa.read(data)
    bench.name = f"world-{SPLIT}"
    return bench
