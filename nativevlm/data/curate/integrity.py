"""Image integrity: every referenced image exists, fully decodes, has a sane size and is not blank.

`Image.open` only reads the header, so a truncated file passes it; `img.load()` decodes every pixel and is
what catches truncation (as long as `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is left False, its default).
"""
from __future__ import annotations

from PIL import Image, ImageStat

from .base import Entry, Stage, Verdict, open_image


class ImageIntegrity(Stage):
    name = "integrity"
    strict_reasons = ("missing_file", "corrupt")

    def __init__(self, min_side: int = 16, max_side: int = 8192, blank_std: float = 2.0):
        self.min_side, self.max_side, self.blank_std = min_side, max_side, blank_std

    def check(self, entry: Entry) -> Verdict:
        min_std = float("inf")
        for path in entry.images:
            if not path.is_file():
                return Verdict(reason="missing_file", detail=f"{path} does not exist")
            try:
                with open_image(path) as img:
                    img.load()
                    w, h = img.size
                    std = max(ImageStat.Stat(img.convert("RGB")).stddev)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                return Verdict(reason="corrupt", detail=f"{path.name}: {e}")
            if min(w, h) < self.min_side:
                return Verdict(reason="too_small", detail=f"{path.name} is {w}x{h} (min side {self.min_side})")
            if max(w, h) > self.max_side:
                return Verdict(reason="too_large", detail=f"{path.name} is {w}x{h} (max side {self.max_side})")
            min_std = min(min_std, std)
            if std < self.blank_std:
                return Verdict({"pixel_std": std}, "blank", f"{path.name} pixel std {std:.2f} < {self.blank_std}")
        return Verdict({"pixel_std": min_std} if entry.images else {})
