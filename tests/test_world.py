"""The built-in world: answers recomputed from ground truth, pixels checked against scenes, determinism, splits."""
import argparse
import hashlib
import json
import os
import random
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from nativevlm.config import ConfigError
from nativevlm.data.world import generate_questions, generate_world, make_config, render_scene, sample_scene
from nativevlm.data.world.cli import register
from nativevlm.data.world.fonts import font_path
from nativevlm.data.world.scene import BACKGROUND, CELL, PALETTE, Scene, sample_chart, sample_objects, split_of

FULL = make_config("full")
BASIC = make_config("basic")


def scenes(cfg, n, sampler=sample_scene, seed=0):
    for i in range(n):
        rng = random.Random(f"test:{seed}:{i}")
        yield sampler(rng, cfg), rng


# ---- an independent oracle: parse each question, recompute its answer from the scene -------------------

def _only(items):
    assert len(items) == 1, f"ambiguous referent: {items}"
    return items[0]


def _obj(scene, color, shape):
    return _only([o for o in scene.objects if o.color == color and o.shape == shape])


def _n(scene, shape=None, color=None):
    return len([o for o in scene.objects if shape in (None, o.shape) and color in (None, o.color)])


def _yes(flag):
    return "yes" if flag else "no"


def _center(o):
    return ((o.col + 0.5) * CELL, (o.row + 0.5) * CELL)


def _half(scene, o, axis):
    x, y = _center(o)
    if axis == "left or right":
        assert x != scene.width / 2
        return "left" if x < scene.width / 2 else "right"
    assert y != scene.height / 2
    return "top" if y < scene.height / 2 else "bottom"


def _relation(a, b, rel):
    ax, ay = _center(a)
    bx, by = _center(b)
    holds, defined = {"to the left of": (ax < bx, ax != bx), "to the right of": (ax > bx, ax != bx),
                      "above": (ay < by, ay != by), "below": (ay > by, ay != by)}[rel]
    assert defined, "relation asked between objects on the same grid line"
    return _yes(holds)


def _extreme(scene, which):
    key = {"leftmost": lambda o: _center(o)[0], "topmost": lambda o: _center(o)[1]}[which]
    best = min(map(key, scene.objects))
    return _only([o for o in scene.objects if key(o) == best]).color


OBJECT_ORACLE = [
    (r"How many objects are there\?", lambda s: len(s.objects)),
    (r"How many (\w+) objects are there\?", lambda s, c: _n(s, color=c)),
    (r"How many (\w+)s are there\?", lambda s, sh: _n(s, shape=sh)),
    (r"What color is the (leftmost|topmost) object\?", _extreme),
    (r"What color is the (\w+)\?", lambda s, sh: _only([o for o in s.objects if o.shape == sh]).color),
    (r"What shape is the (\w+) object\?", lambda s, c: _only([o for o in s.objects if o.color == c]).shape),
    (r"Is there a (\w+) (\w+)\?", lambda s, c, sh: _yes(_n(s, sh, c) > 0)),
    (r"Is the (\w+) (\w+) small or large\?", lambda s, c, sh: _obj(s, c, sh).size),
    (r"Is the (\w+) (\w+) in the (left or right|top or bottom) half of the image\?",
     lambda s, c, sh, axis: _half(s, _obj(s, c, sh), axis)),
    (r"Is the (\w+) (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)\?",
     lambda s, c1, s1, rel, c2, s2: _relation(_obj(s, c1, s1), _obj(s, c2, s2), rel)),
    (r"How many (\w+)s and (\w+)s are there in total\?", lambda s, a, b: _n(s, shape=a) + _n(s, shape=b)),
    (r"How many objects are not (\w+)\?", lambda s, c: len(s.objects) - _n(s, color=c)),
    (r"Are there more (\w+) objects than (\w+) objects\?", lambda s, a, b: _yes(_n(s, color=a) > _n(s, color=b))),
    (r"Are there more (\w+)s than (\w+)s\?", lambda s, a, b: _yes(_n(s, shape=a) > _n(s, shape=b))),
    (r"How many other objects have the same color as the (\w+)\?",
     lambda s, sh: _n(s, color=_only([o for o in s.objects if o.shape == sh]).color) - 1),
]

TEXT_ORACLE = [
    (r"What is written in the image\?", lambda s: s.text.text),
    (r"What color is the text\?", lambda s: s.text.color),
    (r"How many letters does the word in the image have\?", lambda s: len(s.text.text)),
    (r"What is the number in the image plus (\d+)\?", lambda s, k: int(s.text.text) + int(k)),
    (r"What is the number in the image minus (\d+)\?", lambda s, k: int(s.text.text) - int(k)),
    (r"Is the number in the image greater than (\d+)\?", lambda s, k: _yes(int(s.text.text) > int(k))),
]


def _value(scene, name):
    return dict(zip(scene.chart.categories, scene.chart.values))[name]


def _extreme_category(scene, which):
    values = dict(zip(scene.chart.categories, scene.chart.values))
    best = (max if which == "largest" else min)(values.values())
    return _only([c for c, v in values.items() if v == best])


CHART_ORACLE = [
    (r"What type of chart is this\?", lambda s: s.chart.chart_type),
    (r"What is the value of (\w+)\?", _value),
    (r"How many categories does the chart show\?", lambda s: len(s.chart.categories)),
    (r"Which category has the (largest|smallest) value\?", _extreme_category),
    (r"Is the value of (\w+) greater than the value of (\w+)\?", lambda s, a, b: _yes(_value(s, a) > _value(s, b))),
    (r"What is the sum of the values of (\w+) and (\w+)\?", lambda s, a, b: _value(s, a) + _value(s, b)),
    (r"What is the difference between the values of (\w+) and (\w+)\?",
     lambda s, a, b: abs(_value(s, a) - _value(s, b))),
    (r"What is the total of all the values in the chart\?", lambda s: sum(s.chart.values)),
    (r"How much larger is the largest value than the smallest value\?",
     lambda s: max(s.chart.values) - min(s.chart.values)),
]

ORACLES = {"objects": OBJECT_ORACLE, "text": TEXT_ORACLE, "chart": CHART_ORACLE}


def oracle(scene: Scene, question: str) -> str:
    for pattern, answer in ORACLES[scene.kind]:
        m = re.fullmatch(pattern, question)
        if m:
            return str(answer(scene, *m.groups()))
    raise AssertionError(f"no oracle for question {question!r}")


def check_arithmetic(rationale: str) -> None:
    """Every "a + b - c = d" in a rationale is true."""
    for expr, result in re.findall(r"(\d+(?: [+-] \d+)+) = (\d+)", rationale):
        assert eval(expr) == int(result), rationale


@pytest.mark.parametrize("cfg", [BASIC, FULL], ids=["basic", "full"])
def test_every_answer_matches_ground_truth(cfg):
    families = set()
    for scene, rng in scenes(cfg, 600):
        for qa in generate_questions(scene, rng, cfg):
            families.add((qa.family, qa.kind))
            question, answer = qa.question, qa.answer
            if qa.choices is not None:
                lines = question.split("\n")
                assert lines[1:5] == [f"{L}. {c}" for L, c in zip("ABCD", qa.choices)]
                assert len(set(qa.choices)) == 4
                question, answer = lines[0], qa.choices["ABCD".index(qa.answer)]
            assert answer == oracle(scene, question), (scene, qa)
            if qa.kind == "reasoning":
                assert qa.rationale.endswith(f"Answer: {qa.answer}") and len(qa.steps) >= 2
                check_arithmetic(qa.rationale)
            else:
                assert qa.rationale is None
    expected = {"color", "shape", "count", "existence", "position", "relation", "arithmetic", "comparison",
                "multi_step"}
    if cfg is FULL:
        expected |= {"size", "ocr", "chart_value", "chart_type"}
    assert {f for f, _ in families} == expected
    assert {k for _, k in families} == {"perception", "reasoning"}


# ---- rendering: pixels checked against the scene ---------------------------------------------------------

def pixels(scene):
    return np.asarray(render_scene(scene))


def test_objects_render_where_and_as_the_scene_says():
    for scene, _ in scenes(FULL, 60, sample_objects):
        px = pixels(scene)
        assert px.shape == (scene.height, scene.width, 3)
        occupied = np.zeros(px.shape[:2], bool)
        for o in scene.objects:
            x, y = o.col * CELL + CELL // 2, o.row * CELL + CELL // 2
            assert tuple(px[y, x]) == PALETTE[o.color], (o, px[y, x])
            cell = px[o.row * CELL:(o.row + 1) * CELL, o.col * CELL:(o.col + 1) * CELL]
            area = (cell == PALETTE[o.color]).all(-1).sum()
            assert area > (150 if o.size == "large" else 40), (o, area)
            occupied[o.row * CELL:(o.row + 1) * CELL, o.col * CELL:(o.col + 1) * CELL] = True
        ink = (px != BACKGROUND).any(-1)
        assert not (ink & ~occupied).any(), "ink outside the objects' cells"


def test_text_renders_inside_its_box_and_reads_as_the_word():
    cfg = make_config("full", kinds=("text",))
    for scene, _ in scenes(cfg, 30):
        t = scene.text
        ink = (pixels(scene) != BACKGROUND).any(-1)
        x0, y0, x1, y1 = t.bbox
        assert ink[y0:y1, x0:x1].sum() > 0.05 * (x1 - x0) * (y1 - y0)
        inside = np.zeros_like(ink)
        inside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
        assert not (ink & ~inside).any(), "ink outside the text box"
        assert 0 <= x0 and x1 <= scene.width and 0 <= y0 and y1 <= scene.height

        def alone(word):
            image = Image.new("RGB", (scene.width, scene.height), BACKGROUND)
            font = ImageFont.truetype(font_path(), t.font_size)
            ImageDraw.Draw(image).text((t.x, t.y), word, fill=PALETTE[t.color], font=font, anchor="la")
            return np.asarray(image)

        assert (alone(t.text) == pixels(scene)).all()
        other = "0" if t.text != "0" else "1"
        assert not (alone(other) == pixels(scene)).all()


def _charts(chart_type, n=40):
    cfg = make_config("full", kinds=("chart",))
    found = [s for s, _ in scenes(cfg, 400, sample_chart) if s.chart.chart_type == chart_type]
    assert len(found) >= 10
    return found[:n]


def _mask(px, color):
    return (px == PALETTE[color]).all(-1)


def test_bar_heights_are_proportional_to_values():
    for scene in _charts("bar"):
        px, c = pixels(scene), scene.chart
        boxes = []
        for color in c.colors:
            ys, xs = np.nonzero(_mask(px, color))
            boxes.append((xs.min(), ys.max() - ys.min() + 1))
        assert [x for x, _ in boxes] == sorted(x for x, _ in boxes), "bars out of category order"
        tallest = max(h for _, h in boxes)
        for (_, h), v in zip(boxes, c.values):
            assert abs(h - tallest * v / max(c.values)) <= 1.5, (scene, h, v)


def test_line_points_are_proportional_to_values():
    for scene in _charts("line"):
        px, c = pixels(scene), scene.chart
        axis = (px == PALETTE["black"]).all(-1).sum(1).argmax()  # the baseline is the longest ink row
        heights = [axis - np.nonzero(_mask(px, color))[0].mean() for color in c.colors]
        for h, v in zip(heights, c.values):
            assert abs(h - max(heights) * v / max(c.values)) <= 1.5, (scene, h, v)


def test_pie_slices_are_proportional_to_values():
    for scene in _charts("pie"):
        px, c = pixels(scene), scene.chart
        ink_cols = (px != BACKGROUND).any(-1).any(0)
        start = ink_cols.argmax()
        end = start + (~ink_cols[start:]).argmax()  # the pie ends at the first blank column
        pie = px[:, start:end]
        areas = np.array([_mask(pie, color).sum() for color in c.colors], float)
        assert np.allclose(areas / areas.sum(), np.array(c.values) / sum(c.values), atol=0.03), scene


# ---- files: layout, determinism, disjoint splits, CLI ----------------------------------------------------

def tree_digest(root):
    digest = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            digest[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


def test_layout_and_records(tmp_path):
    generate_world(str(tmp_path), 12, seed=3, split="val", preset="full", progress=False)
    records = json.load(open(tmp_path / "val.json"))
    captions = json.load(open(tmp_path / "val_captions.json"))
    scene_lines = open(tmp_path / "val_scenes.jsonl").read().splitlines()
    assert len(captions) == len(scene_lines) == 12 and len(records) >= 12
    documents = open(tmp_path / "val_text.txt").read().splitlines()
    assert len(documents) == 24
    for doc in documents:
        check_arithmetic(doc)
    for r in records + captions:
        assert os.path.exists(tmp_path / r["image"]) and r["image"].startswith("images/val/")
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        assert gpt["value"] == r["meta"]["answer"]
    assert all(r["meta"]["family"] == "caption" for r in captions)
    chats = json.load(open(tmp_path / "val_chat.json"))
    assert len(chats) == 12
    chat_turns = [(h["value"].replace("<image>\n", ""), g["value"])
                  for c in chats for h, g in zip(c["conversations"][::2], c["conversations"][1::2])]
    assert chat_turns == [(r["conversations"][0]["value"].replace("<image>\n", ""), r["conversations"][1]["value"])
                          for r in records]
    for c in chats:  # one image marker, on the first turn; no caption to answer from
        assert sum(t["value"].count("<image>") for t in c["conversations"]) == 1
        assert c["conversations"][0]["value"].startswith("<image>\n")
    for line in scene_lines:
        d = json.loads(line)
        scene = Scene.from_dict({k: v for k, v in d.items() if k not in ("id", "split")})
        assert split_of(scene) == "val"
        assert Image.open(tmp_path / f"images/val/{d['id']}.png").size == (scene.width, scene.height)
        assert scene.width % 32 == 0 and scene.height % 32 == 0


def test_same_arguments_same_bytes_and_seeds_differ(tmp_path):
    for name in ("a", "b"):
        generate_world(str(tmp_path / name), 20, seed=1, split="train", preset="full", progress=False)
    generate_world(str(tmp_path / "c"), 20, seed=2, split="train", preset="full", progress=False)
    a, b, c = (tree_digest(tmp_path / name) for name in "abc")
    assert a == b
    assert a["train.json"] != c["train.json"] and a["train_scenes.jsonl"] != c["train_scenes.jsonl"]


def test_splits_share_no_scene(tmp_path):
    signatures = {}
    for split in ("train", "val", "test"):
        generate_world(str(tmp_path), 150, seed=0, split=split, preset="basic", progress=False)
        lines = open(tmp_path / f"{split}_scenes.jsonl").read().splitlines()
        signatures[split] = {json.dumps({k: v for k, v in json.loads(x).items() if k not in ("id", "split")},
                                        sort_keys=True) for x in lines}
    assert not signatures["train"] & signatures["val"]
    assert not signatures["train"] & signatures["test"]
    assert not signatures["val"] & signatures["test"]


def test_cli_end_to_end(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["world", "--out", str(tmp_path), "--n", "8", "--seed", "4", "--split", "test",
                              "--preset", "full", "--max-side", "128", "--no-progress"])
    assert args.func(args) == 0
    for name in ("test.json", "test_chat.json", "test_captions.json", "test_scenes.jsonl", "test_text.txt", "test_config.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "images" / "test").iterdir())) == 8
    assert json.load(open(tmp_path / "test_config.json"))["config"]["max_side"] == 128


def test_more_scenes_extend_fewer_scenes(tmp_path):
    """Scene k depends only on (seed, k): a bigger split starts with the smaller one."""
    for n in (5, 10):
        generate_world(str(tmp_path / str(n)), n, seed=7, split="test", preset="full", progress=False)
    small = open(tmp_path / "5" / "test_scenes.jsonl").read()
    assert open(tmp_path / "10" / "test_scenes.jsonl").read().startswith(small)


@pytest.mark.parametrize("overrides", [{"max_side": 100}, {"preset": "huge"}, {"kinds": ("video",)},
                                       {"split": "dev"}, {"max_colors": 3},
                                       {"colors": ("red",)}, {"shapes": ("circle", "hexagon")}])
def test_bad_settings_name_the_problem(tmp_path, overrides):
    with pytest.raises(ConfigError):
        generate_world(str(tmp_path), 2, progress=False, **overrides)
