"""What every benchmark reader produces and the harness scores: `Item`, `Benchmark`, and the image an item
holds. Below the readers and the package's `load_benchmark`, so they import it without a circle."""
from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from typing import Union

from PIL import Image

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


def open_image(ref: ImageRef) -> Image.Image:
    """An item's image, decoded as RGB."""
    if isinstance(ref, str):
        return load_image(ref)
    try:
        with Image.open(io.BytesIO(ref)) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot decode an embedded image ({len(ref)} bytes): {e}") from None
