"""Learning curves and the learnability diagnostics: the curve's evaluation at step N equals a separate
evaluation of the step-N checkpoint; priors and subsets; the world's cell labels read back from pixels; the
cell loss; attention recording leaves outputs unchanged; token sensitivity of a constant connector is 0."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nativevlm.config import from_dict
from nativevlm.data.formats import read_samples
from nativevlm.data.image import ImageProcessor
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.data.world import generate_world
from nativevlm.data.world.cells import NUM_CELL_CLASSES, cell_class, cell_labels, class_name, class_word_ids
from nativevlm.data.world.render import render_scene
from nativevlm.data.world.scene import Scene
from nativevlm.eval.benchmarks import Item, llava_qa
from nativevlm.eval.curves import LearningCurves, fixed_subset
from nativevlm.eval.harness import answer_priors
from nativevlm.eval.diagnostics import SensitivityProbe, answer_attention, recorded_attention, target_object
from nativevlm.model import layers
from nativevlm.model.vlm import NativeVLM
from nativevlm.train import checkpoint
from nativevlm.train.config import TrainConfig
from nativevlm.train.export import build_model
from nativevlm.train.recipe import recipe_from_dict
from nativevlm.train.objectives.cells import word_loss
from nativevlm.train.trainer import train
from trainkit import curve_recipe, pre_think_world_tokenizer, tiny_model


def test_curve_at_step_n_equals_a_separate_evaluation_of_the_step_n_checkpoint(tiny_world, tmp_path):
    cfg = recipe_from_dict(curve_recipe(tiny_world))
    hook = LearningCurves(cfg)
    train(cfg, tmp_path / "run", hooks=[hook], log=lambda *a, **k: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    points = {r["step"]: r for r in rows if "acc/all" in r}
    assert sorted(points) == [0, 2, 4]  # before the first step, every 2 steps (= each stage end)
    assert [points[s]["samples"] for s in (0, 2, 4)] == [0, 8, 12]  # 2 x 4, then + 2 x 2
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    priors = json.loads((tmp_path / "run" / "curves.json").read_text())["priors"]
    assert priors == answer_priors(hook.subset)

    tok = Tokenizer.load(tiny_world["tok"])
    folder = next(p for p in (tmp_path / "run" / "checkpoints").iterdir()
                  if json.loads((p / "trainer.json").read_text())["global_step"] == 2)
    model_state = checkpoint.load(folder, 0)[0]
    model = build_model(cfg, tok)
    model.load_state_dict(model_state)
    again = hook.evaluate(model, tok)
    logged = [json.loads(line) for line in (tmp_path / "run" / "curves" / "step_0000002.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in again.records] == [r["prediction"] for r in logged]
    summary = again.summary()
    assert summary["accuracy"] == pytest.approx(points[2]["acc/all"])
    for fam, g in summary["by_category"].items():
        assert points[2][f"acc/{fam}"] == pytest.approx(g["accuracy"])


def test_curves_do_not_change_training(tiny_world, tmp_path):
    """Evaluating mid-run leaves the RNG and the weights' trajectory as they were."""
    with_curves = recipe_from_dict(curve_recipe(tiny_world))
    plain = recipe_from_dict(curve_recipe(tiny_world, curves={}))
    a = train(with_curves, tmp_path / "a", hooks=[LearningCurves(with_curves)], log=lambda *a, **k: None)
    b = train(plain, tmp_path / "b", log=lambda *a, **k: None)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_fixed_subset_is_round_robin_over_families_and_priors_are_majority_shares():
    items = [Item(str(i), "q", ans, category=fam) for i, (fam, ans) in
             enumerate([("a", "x"), ("a", "x"), ("a", "y"), ("a", "x"), ("b", "z")])]
    sub = fixed_subset(items, 3)
    assert [x.id for x in sub] == ["0", "4", "1"]
    assert answer_priors(items) == {"all": 0.8, "a": 0.75, "b": 1.0}


def test_cell_labels_read_the_scene_back_from_pixels(tmp_path):
    for preset in ("basic", "full"):
        generate_world(str(tmp_path / preset), 30, split="train", preset=preset, progress=False, kinds=("objects",))
        processor = ImageProcessor(patch_size=16, factor=32, min_patches=16, max_patches=4096)
        for line in (tmp_path / preset / "train_scenes.jsonl").read_text().splitlines():
            scene = Scene.from_dict(json.loads(line))
            expected = torch.zeros(scene.grid[0] * scene.grid[1], dtype=torch.long)
            for o in scene.objects:
                expected[o.row * scene.grid[1] + o.col] = cell_class(o.color, o.shape)
            assert torch.equal(cell_labels(processor(render_scene(scene))), expected)
    assert NUM_CELL_CLASSES == 41 and class_name(cell_class("red", "star")) == "red star"


def test_target_object_is_the_one_object_the_question_names():
    scene = {"objects": [{"color": "red", "shape": "circle", "row": 0, "col": 1},
                         {"color": "blue", "shape": "circle", "row": 1, "col": 0}]}
    assert target_object("What color is the triangle?", scene) is None
    assert target_object("What shape is the red object?", scene)["col"] == 1
    assert target_object("Is the blue circle in the left or right half?", scene)["row"] == 1
    assert target_object("How many circles are there?", scene) is None  # two match
    assert target_object("Is the red circle above the blue circle?", scene) is None  # two named


def test_recorded_attention_changes_nothing_and_rows_are_distributions(tiny_world, tmp_path):
    recipe = curve_recipe(tiny_world)
    recipe["model"]["connector"] = {"match_text_scale": False}  # the model as built when the rows below were measured
    # and the world's tokenizer as it was trained then, before it reserved the thinking tags
    recipe["tokenizer"] = str(pre_think_world_tokenizer(tiny_world, tmp_path / "tok"))
    cfg = recipe_from_dict(recipe)
    tok = Tokenizer.load(recipe["tokenizer"])
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    samples, _ = read_samples(tiny_world["root"] / "val.json")
    from nativevlm.data.collate import encode_sample

    enc = encode_sample(samples[0], tok, processor)
    ids = torch.tensor([enc.input_ids])
    plain = model(ids, pixel_values=enc.pixel_values).logits
    rows: list = []
    with recorded_attention(model, rows):
        recorded = model(ids, pixel_values=enc.pixel_values).logits
    assert torch.equal(plain, recorded)
    assert len(rows) == model.config.language.num_layers
    assert torch.allclose(rows[0].sum(-1), torch.ones(1, rows[0].shape[1]), atol=1e-5)
    # The rows recorded by swapping the module-level attention function (before attention became a
    # per-model hook), for this model and input: each layer's sum of position * probability over heads.
    assert [float((r.detach() * torch.arange(r.shape[-1])).sum()) for r in rows] == pytest.approx([55.072136, 55.032787],
                                                                                          abs=2e-5)
    scenes = {json.loads(x)["id"]: json.loads(x) for x in (tiny_world["root"] / "val_scenes.jsonl").read_text().splitlines()}
    stats = answer_attention(model, tok, processor, llava_qa.read(tiny_world["root"] / "val.json").items[:12], scenes)
    assert 0 < stats["attn/image_mass"] <= 1 and 0 < stats["attn/entropy"] <= 1 + 1e-6


def test_recording_one_models_attention_leaves_another_untouched(tiny_world):
    """Two models in one process: while the first records its attention, the second keeps its own
    attention function and gives the same outputs, and records nothing."""
    cfg = recipe_from_dict(curve_recipe(tiny_world))
    tok = Tokenizer.load(tiny_world["tok"])
    recording, other = (build_model(cfg, tok).eval() for _ in range(2))
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        before = other(ids).logits
        rows: list = []
        with recorded_attention(recording, rows):
            assert other.language.attention_fn is layers.attention
            during = other(ids).logits
            assert rows == []
            recording(ids)
        assert len(rows) == cfg.model.language.num_layers
    assert torch.equal(before, during)
    assert recording.language.attention_fn is layers.attention  # restored after the block


def test_sensitivity_of_a_constant_connector_is_zero_and_of_a_random_one_is_not(tiny_world):
    cfg = recipe_from_dict(curve_recipe(tiny_world))
    tok = Tokenizer.load(tiny_world["tok"])
    model = build_model(cfg, tok).eval()
    scenes = [json.loads(x) for x in (tiny_world["root"] / "train_scenes.jsonl").read_text().splitlines()]
    probe = SensitivityProbe(scenes, n=6)
    moved = probe(model)
    assert moved["sens/color"] > 0 and moved["sens/shape"] > 0 and moved["sens/occupancy"] > 0
    last = model.connector.mlp1[-1]
    with torch.no_grad():
        last.weight.zero_()
    still = probe(model)
    assert still["sens/color"] == 0 and still["sens/occupancy"] == 0 and still["sens/norm"] > 0


def test_word_cell_loss_points_tokens_at_their_words(tiny_world, tmp_path):
    """The word-aligned cell loss is low when each occupied token is its colour word's embedding plus its
    shape word's, high when the words are swapped, and training with it lowers it."""
    from nativevlm.data.world.cells import COLOURS, SHAPES

    cfg = recipe_from_dict(curve_recipe(tiny_world, curves={}))
    tok = Tokenizer.load(tiny_world["tok"])
    model = build_model(cfg, tok)
    words = class_word_ids(tok)
    table = model.language.embed_tokens.weight.detach()
    unit = lambda v: v / v.norm()  # noqa: E731
    targets = torch.tensor([0, cell_class("red", "star"), cell_class("blue", "circle")])
    def token(colour, shape):
        return unit(table[words[0][COLOURS.index(colour)]].mean(0)) + unit(table[words[1][SHAPES.index(shape)]].mean(0))
    right = torch.stack([torch.zeros(table.shape[1]), token("red", "star"), token("blue", "circle")])
    wrong = torch.stack([torch.zeros(table.shape[1]), token("blue", "circle"), token("red", "star")])
    assert word_loss(right, targets, table, *words) < word_loss(wrong, targets, table, *words)

    recipe = curve_recipe(tiny_world, curves={})
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0].update(objectives=[{"name": "sft"}, {"name": "cells", "target": "words"}], steps=6)
    train(recipe_from_dict(recipe), tmp_path / "run", log=lambda *a, **k: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    cell = [r["cells/loss"] for r in rows if "cells/loss" in r]
    assert len(cell) == 6 and min(cell[3:]) < cell[0]
