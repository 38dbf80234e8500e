"""Dense captions: everything needed to answer any question about the scene, in words.

Objects carry their grid row and column as well as a coarse place, so a text-only reader of the caption
(Prism-style perception/reasoning split) can answer relation and count questions exactly.
"""
from __future__ import annotations

from ..extract_think import EXTRACT_PROMPT
from .scene import Scene

CAPTION_PROMPT = EXTRACT_PROMPT  # the world's models learn to describe as Extract+Think's perceiver is asked


def place(x: float, y: float, width: int, height: int) -> str:
    """Coarse location in thirds: "top left", "center", "bottom", ..."""
    vert = ("top", "middle", "bottom")[min(int(3 * y / height), 2)]
    horiz = ("left", "center", "right")[min(int(3 * x / width), 2)]
    if vert == "middle":
        return horiz
    return vert if horiz == "center" else f"{vert} {horiz}"


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption_objects(scene: Scene) -> str:
    parts = [
        f"a {o.size} {o.color} {o.shape} at the {place(*o.center, scene.width, scene.height)} "
        f"(row {o.row + 1}, column {o.col + 1})"
        for o in scene.objects
    ]
    rows, cols = scene.grid
    n = len(scene.objects)
    noun = "object" if n == 1 else "objects"
    return (f"A white {scene.width}x{scene.height} image divided into {rows} rows and {cols} columns, "
            f"with {n} {noun}: {join_words(parts)}.")


def caption_text(scene: Scene) -> str:
    t = scene.text
    what = f"The number {t.text}" if t.is_number else f'The word "{t.text}"'
    x0, y0, x1, y1 = t.bbox
    where = place((x0 + x1) / 2, (y0 + y1) / 2, scene.width, scene.height)
    return f"{what} written in {t.color} letters at the {where} of a white {scene.width}x{scene.height} image."


def caption_chart(scene: Scene) -> str:
    c = scene.chart
    values = join_words([f"{name} {value}" for name, value in zip(c.categories, c.values)])
    marks = {"bar": "bars", "line": "points", "pie": "slices"}[c.chart_type]
    colors = join_words(list(c.colors))
    return (f"A {c.chart_type} chart on a white {scene.width}x{scene.height} image with {len(c.values)} "
            f"categories: {values}. The {marks} are {colors}.")


CAPTIONERS = {"objects": caption_objects, "text": caption_text, "chart": caption_chart}


def caption(scene: Scene) -> str:
    return CAPTIONERS[scene.kind](scene)
