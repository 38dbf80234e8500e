"""Question generators, one per (scene kind, family); each reads the answer off the scene's ground truth.

A generator returns None when its question would be ambiguous for this scene (e.g. "the circle" when there
are two circles), so every emitted question has exactly one right answer.
"""
from __future__ import annotations

import random

from .qa import QA, can_be_mc, number_pool, perception, reasoning, to_multiple_choice, yes_no
from .scene import TEXT_COLORS, WORDS, Scene, WorldConfig


def count(objects, shape: str | None = None, color: str | None = None) -> int:
    return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in objects)


def pick_unique(objects, rng: random.Random, by: str):
    """An object whose `by` ("shape" or "color") no other object shares, so that naming it is unambiguous
    ("the circle"); None when there is none."""
    unique = [o for o in objects if count(objects, **{by: getattr(o, by)}) == 1]
    return rng.choice(unique) if unique else None


# ---- objects scenes -------------------------------------------------------------------------------------

def q_color(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    o = pick_unique(scene.objects, rng, "shape")
    if o is None:
        return None
    return perception(f"What color is the {o.shape}?", o.color, "color", cfg.colors)


def q_shape(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    o = pick_unique(scene.objects, rng, "color")
    if o is None:
        return None
    return perception(f"What shape is the {o.color} object?", o.shape, "shape", cfg.shapes)


def q_count(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    by = rng.choice(("all", "shape", "color"))
    if by == "shape":
        shape = rng.choice(cfg.shapes)
        question, n = f"How many {shape}s are there?", count(scene.objects, shape=shape)
    elif by == "color":
        color = rng.choice(cfg.colors)
        question, n = f"How many {color} objects are there?", count(scene.objects, color=color)
    else:
        question, n = "How many objects are there?", len(scene.objects)
    return perception(question, n, "count", number_pool(n))


def q_exists(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    # Half the time ask about a present object, so "yes" is not rare.
    if rng.random() < 0.5:
        present = rng.choice(scene.objects)
        color, shape = present.color, present.shape
    else:
        color, shape = rng.choice(cfg.colors), rng.choice(cfg.shapes)
    return perception(f"Is there a {color} {shape}?", yes_no(count(scene.objects, shape, color) > 0), "existence")


def q_size(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    if len(cfg.sizes) < 2:
        return None
    o = rng.choice(scene.objects)
    return perception(f"Is the {o.name} small or large?", o.size, "size", cfg.sizes)


def q_position(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    """Which half of the image; objects on the midline are never asked about."""
    options = []
    for o in scene.objects:
        x, y = o.center
        if 2 * x != scene.width:
            options.append((o, "left or right", "left" if 2 * x < scene.width else "right"))
        if 2 * y != scene.height:
            options.append((o, "top or bottom", "top" if 2 * y < scene.height else "bottom"))
    if not options:
        return None
    o, axis, answer = rng.choice(options)
    return perception(f"Is the {o.name} in the {axis} half of the image?", answer, "position")


RELATIONS = {
    "to the left of": lambda a, b: (a.col < b.col, a.col != b.col),
    "to the right of": lambda a, b: (a.col > b.col, a.col != b.col),
    "above": lambda a, b: (a.row < b.row, a.row != b.row),
    "below": lambda a, b: (a.row > b.row, a.row != b.row),
}


def q_relation(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    """Relations only along an axis where the two objects are in different grid lines (never ambiguous)."""
    options = [
        (a, b, rel, holds)
        for a in scene.objects for b in scene.objects if a is not b
        for rel, test in RELATIONS.items()
        for holds, defined in [test(a, b)] if defined
    ]
    if not options:
        return None
    a, b, rel, holds = rng.choice(options)
    return perception(f"Is the {a.name} {rel} the {b.name}?", yes_no(holds), "relation")


def q_arithmetic(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    objs = scene.objects
    if rng.random() < 0.5:
        s1, s2 = rng.sample(cfg.shapes, 2)
        n1, n2 = count(objs, shape=s1), count(objs, shape=s2)
        steps = [f"Count the {s1}s: {n1}.", f"Count the {s2}s: {n2}.", f"{n1} + {n2} = {n1 + n2}."]
        return reasoning(f"How many {s1}s and {s2}s are there in total?", n1 + n2, "arithmetic", steps,
                         number_pool(n1 + n2))
    color = rng.choice(cfg.colors)
    total, k = len(objs), count(objs, color=color)
    steps = [f"Count all objects: {total}.", f"Count the {color} objects: {k}.", f"{total} - {k} = {total - k}."]
    return reasoning(f"How many objects are not {color}?", total - k, "arithmetic", steps, number_pool(total - k))


def q_comparison(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    """Prefers pairs with unequal counts: ties (mostly 0 vs 0) would make "no" the usual answer."""
    by = "shape" if rng.random() < 0.5 else "color"
    values = cfg.shapes if by == "shape" else cfg.colors
    counts = {v: count(scene.objects, **{by: v}) for v in values}
    pairs = [(a, b) for a in values for b in values if a != b]
    a, b = rng.choice([(a, b) for a, b in pairs if counts[a] != counts[b]] or pairs)
    na, nb = counts[a], counts[b]
    la, lb = (f"{a}s", f"{b}s") if by == "shape" else (f"{a} objects", f"{b} objects")
    verdict = "is greater than" if na > nb else "is not greater than"
    steps = [f"Count the {la}: {na}.", f"Count the {lb}: {nb}.", f"{na} {verdict} {nb}."]
    return reasoning(f"Are there more {la} than {lb}?", yes_no(na > nb), "comparison", steps)


EXTREMES = {"leftmost": lambda o: o.col, "topmost": lambda o: o.row}


def q_multi_step(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    objs = scene.objects
    if rng.random() < 0.5:
        o = pick_unique(objs, rng, "shape")
        if o is None:
            return None
        k = count(objs, color=o.color) - 1
        steps = [f"Find the {o.shape}: it is {o.color}.", f"Count the other {o.color} objects: {k}."]
        return reasoning(f"How many other objects have the same color as the {o.shape}?", k, "multi_step",
                         steps, number_pool(k))
    which = rng.choice(sorted(EXTREMES))
    key = EXTREMES[which]
    best = min(key(o) for o in objs)
    winners = [o for o in objs if key(o) == best]
    if len(objs) < 2 or len(winners) != 1:
        return None
    o = winners[0]
    steps = [f"The {which} object is the {o.name}.", f"Its color is {o.color}."]
    return reasoning(f"What color is the {which} object?", o.color, "multi_step", steps, cfg.colors)


# ---- text scenes ----------------------------------------------------------------------------------------

def q_ocr(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    t = scene.text
    pool = number_pool(int(t.text)) if t.is_number else WORDS
    return perception("What is written in the image?", t.text, "ocr", pool)


def q_text_color(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    return perception("What color is the text?", scene.text.color, "color", TEXT_COLORS)


def q_text_reasoning(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    t = scene.text
    if not t.is_number:
        steps = [f"The word is {t.text}.", f"Its letters are {' '.join(t.text)}.", f"That is {len(t.text)} letters."]
        return reasoning("How many letters does the word in the image have?", len(t.text), "multi_step", steps,
                         number_pool(len(t.text)))
    n, k = int(t.text), rng.randint(1, 20)
    if k <= n and rng.random() < 0.5:
        question, answer, op = f"What is the number in the image minus {k}?", n - k, "-"
    else:
        question, answer, op = f"What is the number in the image plus {k}?", n + k, "+"
    steps = [f"The number is {n}.", f"{n} {op} {k} = {answer}."]
    return reasoning(question, answer, "arithmetic", steps, number_pool(answer))


def q_text_comparison(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    t = scene.text
    if not t.is_number:
        return None
    n, k = int(t.text), rng.randint(0, 999)
    verdict = "is greater than" if n > k else "is not greater than"
    return reasoning(f"Is the number in the image greater than {k}?", yes_no(n > k), "comparison",
                     [f"The number is {n}.", f"{n} {verdict} {k}."])


# ---- chart scenes ---------------------------------------------------------------------------------------

def _values_step(chart) -> str:
    return "The values are " + ", ".join(f"{c} {v}" for c, v in zip(chart.categories, chart.values)) + "."


def q_chart_type(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    return perception("What type of chart is this?", scene.chart.chart_type, "chart_type")


def q_chart_value(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    c = scene.chart
    i = rng.randrange(len(c.values))
    return perception(f"What is the value of {c.categories[i]}?", c.values[i], "chart_value", number_pool(c.values[i]))


def q_chart_count(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    n = len(scene.chart.values)
    return perception("How many categories does the chart show?", n, "count", number_pool(n))


def q_chart_comparison(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA | None:
    c = scene.chart
    if rng.random() < 0.5:
        which, pick = rng.choice((("largest", max), ("smallest", min)))
        best = pick(c.values)
        if c.values.count(best) != 1:
            return None
        name = c.categories[c.values.index(best)]
        steps = [_values_step(c), f"The {which} is {best}, for {name}."]
        return reasoning(f"Which category has the {which} value?", name, "comparison", steps, c.categories)
    i, j = rng.sample(range(len(c.values)), 2)
    (a, va), (b, vb) = (c.categories[i], c.values[i]), (c.categories[j], c.values[j])
    verdict = "is greater than" if va > vb else "is not greater than"
    steps = [f"{a} is {va}.", f"{b} is {vb}.", f"{va} {verdict} {vb}."]
    return reasoning(f"Is the value of {a} greater than the value of {b}?", yes_no(va > vb), "comparison", steps)


def q_chart_arithmetic(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    c = scene.chart
    (va, a), (vb, b) = sorted(((c.values[i], c.categories[i]) for i in rng.sample(range(len(c.values)), 2)),
                              reverse=True)
    if rng.random() < 0.5:
        question, answer, op = f"What is the sum of the values of {a} and {b}?", va + vb, "+"
    else:
        question, answer, op = f"What is the difference between the values of {a} and {b}?", va - vb, "-"
    steps = [f"{a} is {va}.", f"{b} is {vb}.", f"{va} {op} {vb} = {answer}."]
    return reasoning(question, answer, "arithmetic", steps, number_pool(answer))


def q_chart_multi_step(scene: Scene, rng: random.Random, cfg: WorldConfig) -> QA:
    c = scene.chart
    if rng.random() < 0.5:
        total = sum(c.values)
        steps = [_values_step(c), " + ".join(map(str, c.values)) + f" = {total}."]
        return reasoning("What is the total of all the values in the chart?", total, "multi_step", steps,
                         number_pool(total))
    hi, lo = max(c.values), min(c.values)
    steps = [_values_step(c), f"The largest is {hi} and the smallest is {lo}.", f"{hi} - {lo} = {hi - lo}."]
    return reasoning("How much larger is the largest value than the smallest value?", hi - lo, "multi_step",
                     steps, number_pool(hi - lo))


GENERATORS = {
    "objects": (q_color, q_shape, q_count, q_exists, q_size, q_position, q_relation, q_arithmetic,
                q_comparison, q_multi_step),
    "text": (q_ocr, q_text_color, q_text_reasoning, q_text_comparison),
    "chart": (q_chart_type, q_chart_value, q_chart_count, q_chart_comparison, q_chart_arithmetic,
              q_chart_multi_step),
}


def generate_questions(scene: Scene, rng: random.Random, cfg: WorldConfig) -> list[QA]:
    """At most one question per family template, so families stay balanced; some turned multiple-choice."""
    qas = [qa for gen in GENERATORS[scene.kind] if (qa := gen(scene, rng, cfg)) is not None]
    rng.shuffle(qas)
    qas = qas[: cfg.questions_per_scene]
    return [to_multiple_choice(qa, rng) if can_be_mc(qa) and rng.random() < cfg.mc_fraction else qa for qa in qas]

