"""Pillow renderer: scene -> RGB image.

Shapes and chart marks are drawn without anti-aliasing, so every mark has exactly its palette colour and
tests can check pixels against the scene. Only text is anti-aliased (it is read, not colour-matched).
"""
from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .fonts import fit_font_size, get_font
from .scene import BACKGROUND, CELL, PALETTE, Chart, Scene, WorldObject

LARGE_RADIUS = CELL * 13 // 32  # fills most of a cell, leaving a gap to the neighbours
SMALL_RADIUS = CELL * 7 // 32
INK = PALETTE["black"]


def render_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if scene.kind == "objects":
        for obj in scene.objects:
            draw_object(draw, obj)
    elif scene.kind == "text":
        t = scene.text
        draw.text((t.x, t.y), t.text, fill=PALETTE[t.color], font=get_font(t.font_size), anchor="la")
    else:
        CHART_DRAWERS[scene.chart.chart_type](draw, scene.chart, scene.width, scene.height)
    return image


def _regular_polygon(cx: int, cy: int, radius: float, n: int, start_deg: float) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(math.radians(start_deg + 360 * i / n)),
         cy + radius * math.sin(math.radians(start_deg + 360 * i / n)))
        for i in range(n)
    ]


def _star(cx: int, cy: int, radius: float) -> list[tuple[float, float]]:
    outer = _regular_polygon(cx, cy, radius, 5, -90)
    inner = _regular_polygon(cx, cy, radius * 0.45, 5, -90 + 36)
    return [p for pair in zip(outer, inner) for p in pair]


def draw_object(draw: ImageDraw.ImageDraw, obj: WorldObject) -> None:
    cx, cy = obj.center
    r = LARGE_RADIUS if obj.size == "large" else SMALL_RADIUS
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        s = round(r * 0.85)  # same visual weight as the circle
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy + r * 0.15, r * 1.1, 3, -90), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r, 4, -90), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, r * 1.1), fill=fill)
    else:
        raise AssertionError(f"no drawer for shape {obj.shape}")


def _label_size(chart: Chart, width: int, height: int, slot: float) -> int:
    """One label size per chart: as large as fits the narrowest slot and a 1/11 of the height."""
    widest = max(list(chart.categories) + [str(v) for v in chart.values], key=len)
    return fit_font_size(widest + " ", max_width=int(slot), max_height=max(height // 11, 1))


def _plot_area(width: int, height: int, font_size: int) -> tuple[int, int]:
    """Top and bottom y of the value axis: room for value labels above, category labels below."""
    return font_size + 6, height - font_size - 6


def _draw_category_axis(draw, chart: Chart, width: int, height: int, slot: float, fs: int) -> list[int]:
    font = get_font(fs)
    xs = [round(slot * (i + 0.5)) for i in range(len(chart.categories))]
    for x, name in zip(xs, chart.categories):
        draw.text((x, height - 2), name, fill=INK, font=font, anchor="md")
    _, bottom = _plot_area(width, height, fs)
    draw.line((0, bottom, width - 1, bottom), fill=INK)
    return xs


def _value_y(value: int, vmax: int, top: int, bottom: int) -> int:
    return bottom - round(value / vmax * (bottom - top))


def draw_bar(draw: ImageDraw.ImageDraw, chart: Chart, width: int, height: int) -> None:
    slot = width / len(chart.values)
    fs = _label_size(chart, width, height, slot)
    top, bottom = _plot_area(width, height, fs)
    xs = _draw_category_axis(draw, chart, width, height, slot, fs)
    half = max(round(slot * 0.3), 2)
    vmax = max(chart.values)
    for x, value, color in zip(xs, chart.values, chart.colors):
        y = _value_y(value, vmax, top, bottom)
        draw.rectangle((x - half, y, x + half - 1, bottom - 1), fill=PALETTE[color])
        draw.text((x, y - 2), str(value), fill=INK, font=get_font(fs), anchor="md")


def draw_line(draw: ImageDraw.ImageDraw, chart: Chart, width: int, height: int) -> None:
    slot = width / len(chart.values)
    fs = _label_size(chart, width, height, slot)
    top, bottom = _plot_area(width, height, fs)
    xs = _draw_category_axis(draw, chart, width, height, slot, fs)
    vmax = max(chart.values)
    points = [(x, _value_y(v, vmax, top, bottom)) for x, v in zip(xs, chart.values)]
    draw.line(points, fill=INK, width=1)
    for (x, y), value, color in zip(points, chart.values, chart.colors):
        draw.rectangle((x - 3, y - 3, x + 3, y + 3), fill=PALETTE[color])
        draw.text((x, y - 5), str(value), fill=INK, font=get_font(fs), anchor="md")


def draw_pie(draw: ImageDraw.ImageDraw, chart: Chart, width: int, height: int) -> None:
    """Pie on the left starting at 12 o'clock, clockwise; legend "name value" on the right."""
    pad = 4
    diameter = min(height - 2 * pad, width // 2 - pad)
    cy = height // 2
    total = sum(chart.values)
    start = -90.0
    for value, color in zip(chart.values, chart.colors):
        end = start + 360 * value / total
        draw.pieslice((pad, cy - diameter // 2, pad + diameter, cy + diameter // 2), start, end,
                      fill=PALETTE[color])
        start = end
    rows = len(chart.values)
    legend_x = pad * 3 + diameter
    row_h = min((height - 2 * pad) // rows, height // 6)
    box = min(row_h * 2 // 3, 12)
    labels = [f"{c} {v}" for c, v in zip(chart.categories, chart.values)]
    fs = fit_font_size(max(labels, key=len), max_width=width - legend_x - box - 3 - pad, max_height=row_h - 2)
    y0 = cy - rows * row_h // 2
    for i, (label, color) in enumerate(zip(labels, chart.colors)):
        y = y0 + i * row_h
        draw.rectangle((legend_x, y + (row_h - box) // 2, legend_x + box - 1, y + (row_h + box) // 2 - 1),
                       fill=PALETTE[color])
        draw.text((legend_x + box + 3, y + row_h // 2), label, fill=INK, font=get_font(fs), anchor="lm")


CHART_DRAWERS = {"bar": draw_bar, "line": draw_line, "pie": draw_pie}
