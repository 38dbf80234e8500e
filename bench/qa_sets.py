"""Generated image-QA sets that share nothing with the built-in world, for the learnability benchmark.

Each set has its own renderer, colour names and RGB values, objects, wording, image sizes and family mixture,
and none of them is the world's (white background, 32-px cell grid, its palette, its shapes and its question
templates). As in real image-QA sets, yes/no questions dominate the mixture and can be answered halfway from
the question alone. Every record is LLaVA JSON with `meta.family` and `meta.answer`:

- `solo`: one filled shape per image (hexagon, cross, ring, arrow, moon) on a light, slightly noisy
  background, 48-80 px; 70% yes/no ("Is there a teal shape in the picture?", "Is the object a ring?"), then
  the colour and the shape by name.
- `glyphs`: one digit drawn in a coloured ink on a tinted, noisy card, 56 px (some 40 x 72); yes/no ("Is the
  digit 7?", "Is the ink maroon?"), the digit, the ink colour.
- `multi`: two to four objects (plus, heart-free polygons: pentagon, triangle pointing down, bar, dot) in a
  96-112 px image with a gradient background; how many, yes/no about a (colour, object) pair, the colour of
  the one object of a kind, the object of a given colour. Each record's `meta.objects` lists what the image
  holds (`[colour, object]` pairs), for diagnostics only.

`python bench/qa_sets.py --out data/learnsets` writes all three (train / val / test JSON + images).
"""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SETS = ("solo", "glyphs", "multi")


# -- solo -----------------------------------------------------------------------------------------------

SOLO_HUES = {"teal": (0, 128, 128), "magenta": (220, 0, 220), "olive": (128, 128, 0), "navy": (10, 10, 140),
             "salmon": (250, 128, 114), "lime": (120, 230, 20), "maroon": (128, 0, 0), "gold": (212, 175, 55)}
SOLO_SHAPES = ("hexagon", "cross", "ring", "arrow", "moon")


def _noisy_background(size: tuple[int, int], base: tuple[int, int, int], rng: random.Random, amp: int) -> Image.Image:
    g = np.random.default_rng(rng.randrange(1 << 30))
    arr = np.clip(np.array(base, np.int16)[None, None] + g.integers(-amp, amp + 1, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


def _draw_shape(d: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    if kind == "hexagon":
        d.regular_polygon((cx, cy, r), 6, fill=fill)
    elif kind == "cross":
        w = max(2, r / 3)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r / 2.5)))
    elif kind == "arrow":
        d.polygon([(cx - r, cy - r / 3), (cx, cy - r / 3), (cx, cy - r), (cx + r, cy), (cx, cy + r),
                   (cx, cy + r / 3), (cx - r, cy + r / 3)], fill=fill)
    elif kind == "moon":
        d.pieslice((cx - r, cy - r, cx + r, cy + r), 90, 270, fill=fill)
    elif kind == "pentagon":
        d.regular_polygon((cx, cy, r), 5, fill=fill)
    elif kind == "wedge":
        d.polygon([(cx - r, cy - r * 0.8), (cx + r, cy - r * 0.8), (cx, cy + r)], fill=fill)
    elif kind == "bar":
        d.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=fill)
    elif kind == "dot":
        d.ellipse((cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6), fill=fill)
    else:
        raise ValueError(kind)


def _record(rid: str, image: str, question: str, answer: str, family: str, objects=None) -> dict:
    meta = {"family": family, "answer": answer} | ({"objects": objects} if objects is not None else {})
    return {"id": rid, "image": image, "meta": meta,
            "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def _solo(i: int, rng: random.Random, split: str) -> tuple[Image.Image, list[tuple[str, str, str]]]:
    size = rng.choice([48, 64, 64, 80])
    hue, kind = rng.choice(sorted(SOLO_HUES)), rng.choice(SOLO_SHAPES)
    img = _noisy_background((size, size), tuple(rng.randint(200, 240) for _ in range(3)), rng, 8)
    r = rng.uniform(size / 5, size / 3)
    cx, cy = rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)
    _draw_shape(ImageDraw.Draw(img), kind, cx, cy, r, SOLO_HUES[hue])
    u = rng.random()
    if u < 0.35:  # yes/no about the colour, half of them true
        asked = hue if rng.random() < 0.5 else rng.choice([h for h in SOLO_HUES if h != hue])
        qa = (f"Is there a {asked} shape in the picture?", "yes" if asked == hue else "no", "yes/no")
    elif u < 0.7:
        asked = kind if rng.random() < 0.5 else rng.choice([s for s in SOLO_SHAPES if s != kind])
        qa = (f"Is the object a {asked}?", "yes" if asked == kind else "no", "yes/no")
    elif u < 0.85:
        qa = ("Which hue does the object have?", hue, "colour")
    else:
        qa = ("What kind of shape is drawn?", kind, "shape")
    return img, [qa]


# -- glyphs ---------------------------------------------------------------------------------------------

GLYPH_INKS = {"maroon": (120, 0, 0), "indigo": (60, 0, 130), "forest": (20, 90, 20), "charcoal": (50, 50, 50),
              "rust": (190, 80, 20), "azure": (0, 110, 230)}


def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif.ttf"), size)


def _glyphs(i: int, rng: random.Random, split: str) -> tuple[Image.Image, list[tuple[str, str, str]]]:
    w, h = rng.choice([(56, 56), (56, 56), (72, 40)])
    digit, ink = str(rng.randrange(10)), rng.choice(sorted(GLYPH_INKS))
    img = _noisy_background((w, h), (rng.randint(215, 250), rng.randint(205, 240), rng.randint(170, 215)), rng, 12)
    d = ImageDraw.Draw(img)
    font = _font(int(min(w, h) * rng.uniform(0.6, 0.8)))
    x0, y0, x1, y1 = d.textbbox((0, 0), digit, font=font)
    x = rng.uniform(-x0, max(-x0, w - x1)) if w > x1 - x0 else -x0
    y = rng.uniform(-y0, max(-y0, h - y1)) if h > y1 - y0 else -y0
    d.text((x, y), digit, fill=GLYPH_INKS[ink], font=font)
    u = rng.random()
    if u < 0.3:
        asked = digit if rng.random() < 0.5 else str(rng.choice([k for k in range(10) if str(k) != digit]))
        qa = (f"Is the digit {asked}?", "yes" if asked == digit else "no", "yes/no")
    elif u < 0.6:
        asked = ink if rng.random() < 0.5 else rng.choice([k for k in GLYPH_INKS if k != ink])
        qa = (f"Is the ink {asked}?", "yes" if asked == ink else "no", "yes/no")
    elif u < 0.8:
        qa = ("Which digit is written on the card?", digit, "digit")
    else:
        qa = ("What colour is the ink?", ink, "colour")
    return img, [qa]


# -- multi ----------------------------------------------------------------------------------------------

MULTI_COLOURS = {"scarlet": (230, 20, 60), "emerald": (0, 160, 100), "cobalt": (0, 70, 170),
                 "amber": (255, 170, 0), "violet": (150, 60, 220)}
MULTI_KINDS = ("pentagon", "wedge", "bar", "dot")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")


def _multi(i: int, rng: random.Random, split: str) -> tuple[Image.Image, list[tuple]]:
    size = rng.choice([96, 112])
    n = rng.randint(2, 4)
    top, bottom = (rng.randint(215, 245) for _ in range(2))
    ramp = np.linspace(top, bottom, size)[:, None, None] * np.ones((1, size, 3))
    img = Image.fromarray(np.clip(ramp + np.array([0, 5, -5]), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    r = size / 9
    placed: list[tuple[float, float, str, str]] = []
    while len(placed) < n:
        cx, cy = rng.uniform(r + 2, size - r - 2), rng.uniform(r + 2, size - r - 2)
        if all(math.hypot(cx - x, cy - y) > 2.3 * r for x, y, _, _ in placed):
            placed.append((cx, cy, rng.choice(sorted(MULTI_COLOURS)), rng.choice(MULTI_KINDS)))
    for cx, cy, colour, kind in placed:
        _draw_shape(d, kind, cx, cy, r, MULTI_COLOURS[colour])
    pairs = {(c, k) for _, _, c, k in placed}
    u = rng.random()
    kinds = [k for _, _, _, k in placed]
    colours = [c for _, _, c, _ in placed]
    unique_kinds = [k for k in kinds if kinds.count(k) == 1]
    unique_colours = [c for c in colours if colours.count(c) == 1]
    if u < 0.55:
        if rng.random() < 0.5:
            c, k = rng.choice(sorted(pairs))
        else:
            c, k = rng.choice(sorted(MULTI_COLOURS)), rng.choice(MULTI_KINDS)
        qa = (f"Can you see a {c} {k}?", "yes" if (c, k) in pairs else "no", "yes/no")
    elif u < 0.7:
        qa = ("How many items are in the picture?", NUMBER_WORDS[n], "count")
    elif u < 0.85 and unique_kinds:
        k = rng.choice(unique_kinds)
        qa = (f"What colour is the {k}?", colours[kinds.index(k)], "colour")
    elif unique_colours:
        c = rng.choice(unique_colours)
        qa = (f"Which item is {c}?", kinds[colours.index(c)], "shape")
    else:
        qa = ("How many items are in the picture?", NUMBER_WORDS[n], "count")
    # What is in the image ([colour, object] each), for diagnostics: not part of any question or answer.
    return img, [(*qa, [[c, k] for _, _, c, k in placed])]


MAKERS = {"solo": _solo, "glyphs": _glyphs, "multi": _multi}
SPLIT_SEEDS = {"train": 11, "val": 12, "test": 13}


def write_set(name: str, out: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Write `name`'s splits under out/name/ (images/<split>/*.png + <split>.json); returns the JSON paths.
    Splits are drawn from different seeds; an image of a held-out split that equals a training image
    pixel for pixel is redrawn, so held-out questions are about unseen images."""
    root = out / name
    paths: dict[str, Path] = {}
    seen: set[bytes] = set()
    for split in ("train", "val", "test"):
        path = root / f"{split}.json"
        paths[split] = path
        if path.exists():
            continue
        rng = random.Random(SPLIT_SEEDS[split] * 1000 + SETS.index(name))
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        records = []
        i = 0
        while len(records) < sizes[split]:
            img, qas = MAKERS[name](i, rng, split)
            key = img.tobytes()
            if split != "train" and key in seen:
                continue
            if split == "train":
                seen.add(key)
            rel = f"images/{split}/{i:06d}.png"
            img.save(root / rel)
            records += [_record(f"{name}-{split}-{i}-{j}", rel, *qa) for j, qa in enumerate(qas)]
            i += 1
        path.write_text(json.dumps(records))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/learnsets")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--test", type=int, default=1500)
    a = ap.parse_args()
    for name in a.sets:
        paths = write_set(name, Path(a.out), {"train": a.train, "val": a.val, "test": a.test})
        print(name, {k: str(v) for k, v in paths.items()})


if __name__ == "__main__":
    main()
