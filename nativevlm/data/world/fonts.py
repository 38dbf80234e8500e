"""The world's one font: DejaVu Sans Bold, shipped with matplotlib, so text renders the same everywhere."""
from __future__ import annotations

import functools
import os

from PIL import ImageFont

MIN_FONT_SIZE = 9
REFERENCE_SIZE = 64


@functools.lru_cache(maxsize=1)
def font_path() -> str:
    import matplotlib  # deferred: heavy to import, for one font file

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; the world renders text with matplotlib's DejaVu Sans")
    return path


@functools.lru_cache(maxsize=128)
def get_font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(), size)


@functools.lru_cache(maxsize=1 << 16)  # the vocabulary is small; split rejection re-measures the same texts
def text_bbox(text: str, size: int) -> tuple[int, int, int, int]:
    """Ink box of `text` drawn at the origin with anchor "la" (left, ascender)."""
    return tuple(int(v) for v in get_font(size).getbbox(text, anchor="la"))


def fit_font_size(text: str, max_width: int, max_height: int) -> int:
    """Largest size whose ink fits the box, never below MIN_FONT_SIZE (legibility floor).

    Ink scales about linearly with size, so one measurement at a reference size gives a start that is
    at most a few steps too large.
    """
    x0, y0, x1, y1 = text_bbox(text, REFERENCE_SIZE)
    scale = min(max_width / max(x1 - x0, 1), max_height / max(y1 - y0, 1))
    size = max(min(int(REFERENCE_SIZE * scale) + 2, max_height), MIN_FONT_SIZE)
    while size > MIN_FONT_SIZE:
        x0, y0, x1, y1 = text_bbox(text, size)
        if x1 - x0 <= max_width and y1 - y0 <= max_height:
            break
        size -= 1
    return size
