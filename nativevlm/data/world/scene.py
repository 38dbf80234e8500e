"""Scenes of the built-in world and their ground truth.

A scene is a small frozen record from which the image, the caption and every question are derived, so the
ground truth of each answer is known exactly. Objects sit on a grid of 32-px cells (one object per cell), so
"left of", "above" and counts are never ambiguous and shapes never overlap.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, fields, replace

from ...config import ConfigError
from .fonts import fit_font_size, text_bbox

CELL = 32  # grid cell in pixels; image sides are multiples of it (16-px patches, 2x2 merge)

# Well-separated colours, named as the answers spell them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 180),
    "orange": (255, 140, 0),
    "cyan": (0, 190, 210),
    "black": (20, 20, 20),
}
BACKGROUND = (255, 255, 255)
SHAPES = ("circle", "square", "triangle", "star", "diamond")
SIZES = ("small", "large")
KINDS = ("objects", "text", "chart")
CHART_TYPES = ("bar", "line", "pie")
# Dark enough to read on white; yellow and cyan are not.
TEXT_COLORS = ("red", "green", "blue", "purple", "orange", "black")
CATEGORIES = ("cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig", "hen", "elk")
WORDS = (
    "apple", "bread", "chair", "cloud", "dance", "earth", "flame", "grape", "house", "jelly", "kite",
    "lemon", "moon", "night", "ocean", "piano", "queen", "river", "snake", "table", "tiger", "train",
    "water", "zebra", "book", "fish", "lamp", "rain", "tree", "wind",
)
MIN_CHART_SIDE = 128  # below this, chart labels stop being legible


@dataclass(frozen=True)
class WorldObject:
    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def center(self) -> tuple[int, int]:
        return (self.col * CELL + CELL // 2, self.row * CELL + CELL // 2)

    @property
    def name(self) -> str:
        """Referring expression; unique in its scene because (color, shape) pairs are."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class TextItem:
    text: str
    is_number: bool
    color: str
    font_size: int
    x: int
    y: int
    bbox: tuple[int, int, int, int]  # ink box (x0, y0, x1, y1), exclusive right/bottom


@dataclass(frozen=True)
class Chart:
    chart_type: str
    categories: tuple[str, ...]
    values: tuple[int, ...]
    colors: tuple[str, ...]


@dataclass(frozen=True)
class Scene:
    kind: str
    width: int
    height: int
    objects: tuple[WorldObject, ...] = ()
    text: TextItem | None = None
    chart: Chart | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return (self.height // CELL, self.width // CELL)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        text = d.get("text")
        chart = d.get("chart")
        return cls(
            kind=d["kind"],
            width=d["width"],
            height=d["height"],
            objects=tuple(WorldObject(**o) for o in d.get("objects", ())),
            text=TextItem(**{**text, "bbox": tuple(text["bbox"])}) if text else None,
            chart=Chart(**{k: tuple(v) if isinstance(v, list) else v for k, v in chart.items()}) if chart else None,
        )


@dataclass(frozen=True)
class WorldConfig:
    """What a preset fixes: which scenes are drawn and how many questions each gets."""

    kinds: tuple[str, ...] = ("objects",)
    min_objects: int = 1
    max_objects: int = 3
    shapes: tuple[str, ...] = SHAPES[:4]
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    sizes: tuple[str, ...] = ("large",)
    min_side: int = 64
    max_side: int = 128
    max_categories: int = 5
    max_value: int = 9
    questions_per_scene: int = 4
    mc_fraction: float = 0.25

    def __post_init__(self):
        for side in (self.min_side, self.max_side):
            if side % CELL or side < 2 * CELL:
                raise ConfigError(f"image sides must be multiples of {CELL} and >= {2 * CELL}, got {side}")
        if self.min_side > self.max_side:
            raise ConfigError(f"min_side {self.min_side} > max_side {self.max_side}")
        if "chart" in self.kinds and self.max_side < MIN_CHART_SIDE:
            raise ConfigError(f"chart scenes need max_side >= {MIN_CHART_SIDE}; raise --max-side")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown scene kinds {sorted(unknown)}; choose from {KINDS}")
        for name, chosen, known in (("colors", self.colors, PALETTE), ("shapes", self.shapes, SHAPES)):
            if len(set(chosen)) < 2 or not set(chosen) <= set(known):
                raise ConfigError(f"{name} must be at least two of {tuple(known)}, got {chosen}")
        if not self.sizes or not set(self.sizes) <= set(SIZES):
            raise ConfigError(f"sizes must be drawn from {SIZES}, got {self.sizes}")
        if not 2 <= self.max_categories <= len(PALETTE) - 1:
            raise ConfigError(f"max_categories must be in 2..{len(PALETTE) - 1} (one colour each)")
        if self.max_value < 1 or self.questions_per_scene < 1:
            raise ConfigError("max_value and questions_per_scene must be >= 1")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")


PRESETS: dict[str, WorldConfig] = {
    # Learnable by a tiny model in minutes: few large objects, four colours, four shapes.
    "basic": WorldConfig(),
    # Every scene kind, more and smaller objects, the whole palette, bigger and more varied images.
    "full": WorldConfig(
        kinds=KINDS,
        max_objects=6,
        shapes=SHAPES,
        colors=tuple(PALETTE),
        sizes=SIZES,
        min_side=64,
        max_side=256,
        max_value=20,
        questions_per_scene=6,
        mc_fraction=0.3,
    ),
}


def make_config(preset: str = "basic", **overrides) -> WorldConfig:
    """A preset with some fields replaced; `None` overrides are ignored so CLI defaults pass through."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(WorldConfig)}
    if unknown:
        raise ConfigError(f"unknown world settings {sorted(unknown)}; see WorldConfig for the fields")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


def _side(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randrange(lo, hi + 1, CELL)


def sample_objects(rng: random.Random, cfg: WorldConfig) -> Scene:
    w, h = _side(rng, cfg.min_side, cfg.max_side), _side(rng, cfg.min_side, cfg.max_side)
    cells = [(r, c) for r in range(h // CELL) for c in range(w // CELL)]
    looks = [(color, shape) for color in cfg.colors for shape in cfg.shapes]
    n = rng.randint(cfg.min_objects, min(cfg.max_objects, len(cells), len(looks)))
    objects = tuple(
        WorldObject(shape=shape, color=color, size=rng.choice(cfg.sizes), row=r, col=c)
        for (color, shape), (r, c) in zip(rng.sample(looks, n), sorted(rng.sample(cells, n)))
    )
    return Scene(kind="objects", width=w, height=h, objects=objects)


def sample_text(rng: random.Random, cfg: WorldConfig) -> Scene:
    w, h = _side(rng, cfg.min_side, cfg.max_side), _side(rng, cfg.min_side, cfg.max_side)
    is_number = rng.random() < 0.4
    text = str(rng.randint(0, 999)) if is_number else rng.choice(WORDS)
    size = fit_font_size(text, max_width=int(w * 0.85), max_height=int(h * rng.uniform(0.3, 0.6)))
    x0, y0, x1, y1 = text_bbox(text, size)
    x = rng.randint(2 - x0, w - 2 - x1)
    y = rng.randint(2 - y0, h - 2 - y1)
    item = TextItem(text=text, is_number=is_number, color=rng.choice(TEXT_COLORS), font_size=size,
                    x=x, y=y, bbox=(x + x0, y + y0, x + x1, y + y1))
    return Scene(kind="text", width=w, height=h, text=item)


def sample_chart(rng: random.Random, cfg: WorldConfig) -> Scene:
    lo = max(cfg.min_side, MIN_CHART_SIDE)
    w, h = _side(rng, lo, cfg.max_side), _side(rng, lo, cfg.max_side)
    n = rng.randint(2, cfg.max_categories)
    colors = tuple(rng.sample([c for c in PALETTE if c != "black"], n))
    chart = Chart(
        chart_type=rng.choice(CHART_TYPES),
        categories=tuple(rng.sample(CATEGORIES, n)),
        values=tuple(rng.randint(1, cfg.max_value) for _ in range(n)),
        colors=colors,
    )
    return Scene(kind="chart", width=w, height=h, chart=chart)


SAMPLERS = {"objects": sample_objects, "text": sample_text, "chart": sample_chart}


def sample_scene(rng: random.Random, cfg: WorldConfig) -> Scene:
    return SAMPLERS[rng.choice(cfg.kinds)](rng, cfg)


def signature(scene: Scene) -> str:
    """Canonical ground-truth string: equal scenes, and only they, have equal signatures."""
    return json.dumps(scene.to_dict(), sort_keys=True, separators=(",", ":"))


SPLIT_BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}


def split_of(scene: Scene) -> str:
    """Stable split of a scene from a hash of its signature (not `hash()`, which is salted per process)."""
    bucket = int(hashlib.sha256(signature(scene).encode()).hexdigest()[:8], 16) % 100
    return next(s for s, (lo, hi) in SPLIT_BUCKETS.items() if lo <= bucket < hi)
