"""Small synthetic corpus of coloured shapes with captions and QA, for curation tests and the noise benchmark
when the built-in world generator is not available. Captions are full sentences naming every shape's size,
colour and position, so an image-text matcher has something to learn."""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from ..sample import user_turn

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "purple": (140, 50, 170), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
CELLS = {(0, 0): "top left", (1, 0): "top", (2, 0): "top right", (0, 1): "left", (1, 1): "centre",
         (2, 1): "right", (0, 2): "bottom left", (1, 2): "bottom", (2, 2): "bottom right"}
BACKGROUNDS = ((255, 255, 255), (235, 235, 225), (215, 225, 240))


def draw_scene(rng: random.Random, size: int = 96) -> tuple[Image.Image, list[dict]]:
    img = Image.new("RGB", (size, size), rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(img)
    objects = []
    for cell in rng.sample(sorted(CELLS), rng.randint(2, 4)):
        colour, shape, large = rng.choice(sorted(COLOURS)), rng.choice(SHAPES), rng.random() < 0.5
        c = size // 3
        r = (c * (0.45 if large else 0.25))
        cx, cy = (cell[0] + 0.5) * c + rng.uniform(-2, 2), (cell[1] + 0.5) * c + rng.uniform(-2, 2)
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        objects.append({"colour": colour, "shape": shape, "size": "large" if large else "small",
                        "where": CELLS[cell]})
    return img, objects


def caption(objects: list[dict]) -> str:
    parts = [f"a {o['size']} {o['colour']} {o['shape']} at the {o['where']}" for o in objects]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = len(objects)
    return f"The picture shows {n} shape{'s' if n > 1 else ''}: {listed}."


def generate(out_dir: Path, n: int, seed: int = 0, qa_per_image: int = 1) -> Path:
    """Write `n` scenes to `out_dir/images/`, one caption record and `qa_per_image` QA records per scene, to
    `out_dir/data.json`; returns that path."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        img, objects = draw_scene(rng)
        rel = f"images/scene_{i:05d}.png"
        img.save(out_dir / rel)
        records.append({"id": f"cap-{i}", "image": rel, "conversations": [
            {"from": "human", "value": user_turn("Describe the image.", 1)},
            {"from": "gpt", "value": caption(objects)}]})
        for q in range(qa_per_image):
            o = rng.choice(objects)
            qa = rng.choice([(f"What colour is the {o['shape']} at the {o['where']}?", o["colour"]),
                             ("How many shapes are there?", str(len(objects)))])
            records.append({"id": f"qa-{i}-{q}", "image": rel, "conversations": [
                {"from": "human", "value": user_turn(qa[0], 1)}, {"from": "gpt", "value": qa[1]}]})
    path = out_dir / "data.json"
    path.write_text(json.dumps(records, indent=1))
    return path
