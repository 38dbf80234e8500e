"""Benchmark readers: each turns a file into `Item`s, the one form the harness scores.

A SPEC names a benchmark: `world:DIR` (the built-in world's test split), `llava:FILE` (LLaVA JSON / chat
JSONL QA pairs), `tsv:FILE` (a VLMEvalKit TSV), or a bare path whose form says which (a world folder, a
`.tsv`, a `.json` / `.jsonl`). `NAME=SPEC` names it in the results (default: the file's stem).
"""
from __future__ import annotations

from pathlib import Path

from ...config import ConfigError
from ...data.formats import DataError
from ...data.shards import is_sharded
from . import llava_qa, vlmevalkit_tsv, world
from .base import Benchmark, ImageRef, Item, open_image

__all__ = ["Benchmark", "ImageRef", "Item", "KINDS", "load_benchmark", "open_image"]

KINDS = ("world", "llava", "tsv")  # SPEC prefixes, each the reader module of that name


def load_benchmark(spec: str) -> Benchmark:
    """Read the benchmark a SPEC names (see the module docstring)."""
    name, sep, rest = spec.partition("=")
    if not sep or any(c in name for c in "/:."):  # the "=" belongs to the path
        name, rest = "", spec
    kind, sep, path = rest.partition(":")
    if not sep or kind not in KINDS:
        kind, path = "", rest
    p = Path(path)
    if not kind:
        if p.is_dir():
            kind = "llava" if is_sharded(p) else "world"
        elif p.suffix == ".tsv":
            kind = "tsv"
        elif p.suffix in (".json", ".jsonl", ".tar", ".parquet"):
            kind = "llava"
        elif not p.exists():
            raise FileNotFoundError(f"--bench {spec}: {path} does not exist")
        else:
            raise ConfigError(f"--bench {spec}: can't tell the format of {path}; write world:DIR, llava:FILE "
                              "(.json / .jsonl) or tsv:FILE")
    bench = {"world": world, "llava": llava_qa, "tsv": vlmevalkit_tsv}[kind].read(p)
    if name:
        bench.name = name
    if not bench.items:
        raise ConfigError(f"--bench {spec}: {bench.source} holds no questions")
    seen = set()
    for item in bench.items:  # answers are saved and resumed by id
        if item.id in seen:
            raise DataError(f"{bench.source}: question id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
    return bench
