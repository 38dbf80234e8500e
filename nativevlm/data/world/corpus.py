"""Text-only corpus in the world's language, for pre-training the language model before it sees images.

Two documents per scene: the scene in words with its open questions answered (reasoning shown), and a
word problem that exercises the same counting and arithmetic with no image at all.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..formats import read_samples
from .qa import QA
from .scene import CATEGORIES, WorldConfig


def scene_document(caption: str, qas: list[QA]) -> str:
    parts = [caption]
    for qa in qas:
        if qa.choices is not None:
            continue  # the letters mean nothing without the options laid out on separate lines
        reasoning = f" {' '.join(qa.steps)}" if qa.steps else ""
        parts.append(f"Question: {qa.question}{reasoning} Answer: {qa.answer}.")
    return " ".join(parts)


def word_problem(rng: random.Random, cfg: WorldConfig) -> str:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    c1, c2 = rng.sample(cfg.colors, 2)
    s1, s2 = rng.sample(cfg.shapes, 2)
    kind = rng.choice(("sum", "compare", "difference"))
    if kind == "sum":
        return (f"A picture has {a} {c1} {s1}s and {b} {c2} {s2}s. How many shapes does it have in total? "
                f"{a} + {b} = {a + b}. Answer: {a + b}.")
    if kind == "compare":
        verdict = "is greater than" if a > b else "is not greater than"
        return (f"A picture has {a} {s1}s and {b} {s2}s. Are there more {s1}s than {s2}s? "
                f"{a} {verdict} {b}. Answer: {'yes' if a > b else 'no'}.")
    x, y = sorted((a, b), reverse=True)
    n1, n2 = rng.sample(CATEGORIES, 2)
    return (f"A bar chart shows {n1} at {x} and {n2} at {y}. What is the difference between {n1} and {n2}? "
            f"{x} - {y} = {x - y}. Answer: {x - y}.")


def tokenizer_texts(world_dir) -> list[str]:
    """What a tokenizer for a generated world trains on: its text corpus and the first 4,000 QA records'
    turns (the quickstart's and the study runner's tokenizers)."""
    world = Path(world_dir)
    texts = (world / "train_text.txt").read_text().splitlines()
    qa, _ = read_samples(world / "train.json", check_images=False)
    return texts + [m["content"] for s in qa[:4000] for m in s.messages]
