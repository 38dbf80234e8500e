"""Benchmark readers: each turns a file into `Item`s, the one form the harness scores.

A SPEC names a benchmark: `world:DIR` (the built-in world's test split), `llava:FILE` (LLaVA JSON / chat
JSONL QA pairs), `tsv:FILE` (a VLMEvalKit TSV), or a bare path whose form says which (a world folder, a
`.tsv`, a `.json` / `.jsonl`). `NAME=SPEC` names it in the results (default: the file's stem).
"""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image

from ...config import ConfigError
from ...data.formats import DataError
from ...data.image import ImageError, load_image

ImageRef = Union[str, bytes]  # a file path, or an encoded image (PNG, JPEG, ...) as read from a TSV


@dataclass
class Item:
    """One question. Multiple choice when `options` (letter -> text, in letter order) is not empty; then
    `answer` is the right letter and the prompt is `question`, the options one per line, then `suffix`
    (each benchmark's own instruction), which is what circular evaluation re-renders per rotation."""

    id: str
    question: str
    answer: str
    images: list[ImageRef] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    suffix: str = ""
    category: str = "all"
    kind: str = ""
    meta: dict = field(default_factory=dict)

    def rotated(self, k: int) -> "Item":
        """The same question with the option texts shifted k places (circular evaluation)."""
        letters, texts = list(self.options), list(self.options.values())
        n = len(texts)
        options = {letters[i]: texts[(i + k) % n] for i in range(n)}
        answer = letters[(letters.index(self.answer) - k) % n]
        return dataclasses.replace(self, options=options, answer=answer)

    def prompt(self) -> str:
        lines = [self.question] + [f"{k}. {v}" for k, v in self.options.items()]
        return "\n".join(lines + ([self.suffix] if self.suffix else []))


@dataclass
class Benchmark:
    name: str
    source: str
    items: list[Item]


KINDS = ("world", "llava", "tsv")  # SPEC prefixes, each the reader module of that name


def open_image(ref: ImageRef) -> Image.Image:
    """An item's image, decoded as RGB."""
    if isinstance(ref, str):
        return load_image(ref)
    try:
        with Image.open(io.BytesIO(ref)) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot decode an embedded image ({len(ref)} bytes): {e}") from None


def load_benchmark(spec: str) -> Benchmark:
    """Read the benchmark a SPEC names (see the module docstring)."""
    from . import llava_qa, vlmevalkit_tsv, world

    name, sep, rest = spec.partition("=")
    if not sep or any(c in name for c in "/:."):  # the "=" belongs to the path
        name, rest = "", spec
    kind, sep, path = rest.partition(":")
    if not sep or kind not in KINDS:
        kind, path = "", rest
    p = Path(path)
    if not kind:
        if p.is_dir():
            kind = "world"
        elif p.suffix == ".tsv":
            kind = "tsv"
        elif p.suffix in (".json", ".jsonl"):
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
