"""Training objectives as plug-ins: recipe syntax and its errors, the world-only cell loss (the same numbers
as before it left the model, its own head checkpointed but not exported, refusal of other images), and a
new objective with options, metrics and checkpointed state that plugs in without touching the step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from nativevlm.config import ConfigError
from nativevlm.data.collate import Collator
from nativevlm.data.image import ImageProcessor
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.data.world.cells import NUM_CELL_CLASSES, NotAWorldRender, cell_labels
from nativevlm.data.world.render import render_scene
from nativevlm.data.world.scene import Scene, TextItem, WorldObject
from nativevlm.train.data import StageData
from nativevlm.train.export import build_model
from nativevlm.train import objectives
from nativevlm.train.objectives import MicroBatch, Output, StepInfo, register
from nativevlm.train.recipe import recipe_from_dict
from nativevlm.train.trainer import train
from trainkit import pre_think_world_tokenizer, tiny_model, vlm_recipe, write_recipe

QUIET = dict(log=lambda *a, **k: None)


def cell_recipe(world: dict, objectives: list, **stage) -> dict:
    """One stage of 4 steps, 2 micro-batches each, on the world's captions, vision side training."""
    model = tiny_model(vocab=420)
    model["vision"].update(patch_size=16, min_patches=16, max_patches=64)
    st = {"name": "a", "data": [{"path": str(world["root"] / "train_captions.json")}],
          "trainable": ["vision.*", "connector.*", "language.layers.*.visual_*"], "steps": 4, "batch_size": 4,
          "grad_accum": 2, "lr": 3e-3, "lr_multipliers": {"connector.*": 2.0}, "objectives": objectives, **stage}
    return {"kind": "vlm", "model": model, "tokenizer": str(world["tok"]), "max_length": 200, "seed": 0,
            "device": "cpu", "checkpoint_every": 100, "progress": False, "stages": [st]}


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


SFT_AND_WORDS = [{"name": "sft"}, {"name": "cells", "weight": 1.0, "target": "words"}]


def test_cell_loss_trains_as_it_did_inside_the_model(tiny_world, tmp_path):
    """The values the same run logged when the cell loss was computed by the model's forward
    (`cell_loss: 1.0, cell_target: words`, measured before the move, with image tokens at the connector's
    own initial scale as models were then built, and the world's tokenizer as it was trained then, before it
    reserved the thinking tags): the same losses to float precision."""
    recipe = cell_recipe(tiny_world, SFT_AND_WORDS)
    recipe["model"]["connector"] = {"match_text_scale": False}
    recipe["tokenizer"] = str(pre_think_world_tokenizer(tiny_world, tmp_path / "tok"))
    train(recipe_from_dict(recipe), tmp_path / "run", **QUIET)
    got = rows(tmp_path / "run")
    before_ce = [6.0344719886779785, 6.043715000152588, 6.047975063323975, 6.031516075134277]
    before_cells = [2.935718059539795, 3.458568811416626, 1.9658360481262207, 1.5532374382019043]
    assert [r["sft/loss"] for r in got] == pytest.approx(before_ce, rel=1e-6)
    assert [r["cells/loss"] for r in got] == pytest.approx(before_cells, rel=1e-5)
    assert [r["loss"] for r in got] == pytest.approx([a + b for a, b in zip(before_ce, before_cells)], rel=1e-5)


def test_cell_head_is_the_objectives_own_module(tiny_world, tmp_path):
    """target: head. The head trains although no `trainable` pattern names it, its first loss is the
    cross-entropy of the head over RMS-normalised image tokens (computed here from the initial weights and
    the step's batches), it is checkpointed, and the exported model does not hold it; a run stopped and
    resumed ends bit-identical, which needs the head restored."""
    recipe = cell_recipe(tiny_world, [{"name": "sft"}, {"name": "cells", "target": "head"}], steps=3)
    recipe.update(checkpoint_every=1, keep_checkpoints=5)
    cfg = recipe_from_dict(recipe)
    train(cfg, tmp_path / "run", **QUIET)
    got = rows(tmp_path / "run")

    tok = Tokenizer.load(tiny_world["tok"])
    torch.manual_seed(cfg.seed)  # as the trainer: the model, then the objective's head
    model = build_model(cfg, tok)
    head = torch.nn.Linear(model.config.language.hidden_size, NUM_CELL_CLASSES)
    collator = Collator(tok, ImageProcessor.from_config(model.config.vision, model.config.connector), cfg.max_length)
    batches = StageData(cfg.stages[0], collator, seed=f"{cfg.seed}:0").next_batches()
    with torch.no_grad():
        losses = []
        for b in batches:
            tokens = torch.cat(model.encode_images(b.pixel_values))
            labels = torch.cat([cell_labels(p) for p in b.pixel_values])
            losses.append(F.cross_entropy(head(F.rms_norm(tokens, tokens.shape[-1:])), labels))
    assert got[0]["cells/loss"] == pytest.approx(float(sum(losses) / len(losses)), rel=1e-5)
    assert got[0]["cells/loss"] == pytest.approx(torch.log(torch.tensor(41.0)).item(), abs=0.6)
    assert got[-1]["cells/loss"] < got[0]["cells/loss"]

    first = load_file(tmp_path / "run/checkpoints/step-00000001/model.safetensors")
    last = load_file(tmp_path / "run/checkpoints/step-00000003/model.safetensors")
    assert not torch.equal(first["objectives.cells.weight"], last["objectives.cells.weight"])
    final = load_file(tmp_path / "run/final/model.safetensors")
    assert not any(k.startswith("objectives.") for k in final)
    assert "cell_classes" not in json.loads((tmp_path / "run/final/config.json").read_text())["connector"]

    train(cfg, tmp_path / "resumed", max_steps=1, **QUIET)
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)
    resumed = load_file(tmp_path / "resumed/final/model.safetensors")
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)


def test_cell_loss_refuses_images_that_are_not_world_renders(train_world, tmp_path):
    """Plain user images (solid colours, not drawn as the world draws) under the cells objective: the
    command exits 2 with one line naming the data file, before any step."""
    recipe = vlm_recipe(train_world)
    recipe["model"]["vision"]["patch_size"] = 16  # one token per 32-px cell, as the objective needs
    recipe["stages"][0]["objectives"] = SFT_AND_WORDS
    path = write_recipe(tmp_path / "r.yaml", recipe)
    proc = subprocess.run([sys.executable, "-m", "nativevlm", "train", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and str(train_world["captions"]) in error[0], proc.stderr
    assert "not a render of the built-in world" in error[0] and "remove cells" in error[0]
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_cell_loss_names_the_geometry_that_resizes_world_renders():
    """A world render that the model's image geometry upscales (a floor of 64 patches for a 96x64 render of
    24) fails the pixel check; the error says that the geometry resized it and which setting keeps it whole,
    and says nothing of the kind when the render is read at its own size."""
    from types import SimpleNamespace

    from nativevlm.train.objectives.cells import resize_hint

    image = render_scene(Scene("objects", 96, 64, (WorldObject("star", "red", "large", 0, 1),)))
    floor_64 = ImageProcessor(patch_size=16, factor=32, min_patches=64, max_patches=256)
    with pytest.raises(NotAWorldRender, match="palette"):
        cell_labels(floor_64(image))
    vision = SimpleNamespace(patch_size=16, min_patches=64, max_patches=256)
    w, h = floor_64.size_for(96, 64)
    assert (w, h) != (96, 64)
    hint = resize_hint(floor_64, (96, 64), vision)
    assert f"resizes this 96x64 image to {w}x{h}" in hint and "model.vision.min_patches <= 24" in hint
    whole = ImageProcessor(patch_size=16, factor=32, min_patches=16, max_patches=256)
    assert cell_labels(whole(image)).count_nonzero() == 1
    assert resize_hint(whole, (96, 64), SimpleNamespace(patch_size=16, min_patches=16, max_patches=256)) == ""


def test_cell_labels_refuse_what_the_world_does_not_draw():
    """A world object scene reads back; the world's own text scenes (anti-aliased), a resized render, a
    second colour in a cell, a shape the world does not draw, and a photo-like image do not."""
    processor = ImageProcessor(patch_size=16, factor=32, min_patches=16, max_patches=4096)
    scene = Scene("objects", 96, 64, (WorldObject("star", "red", "large", 0, 1), WorldObject("circle", "blue", "small", 1, 2)))
    image = render_scene(scene)
    assert cell_labels(processor(image)).count_nonzero() == 2

    def refused(img, why):
        with pytest.raises(NotAWorldRender, match=why):
            cell_labels(processor(img) if isinstance(img, Image.Image) else img)

    text = Scene("text", 128, 64, text=TextItem("river", False, "blue", 30, 10, 10, (10, 10, 90, 40)))
    refused(render_scene(text), "palette")
    refused(processor(image.resize((192, 128), Image.BICUBIC)), "palette")
    two = image.copy()
    two.putpixel((40, 2), (30, 160, 50))  # a green pixel in the red star's cell
    refused(two, "more than one colour")
    blob = Image.new("RGB", (64, 64), (255, 255, 255))
    blob.paste((220, 30, 30), (2, 2, 30, 12))  # a red bar: palette colour, but no world shape
    refused(blob, "none of the world's shapes")
    refused(Image.effect_noise((64, 64), 40).convert("RGB"), "palette")


@pytest.mark.parametrize("stage_edit, message", [
    ({"cell_loss": 1.0, "cell_target": "words"},
     r"stages\[0\].cell_loss: .*objectives: \[\{name: sft\}, \{name: cells, weight: 1.0, target: words\}\]"),
    ({"cell_loss": 0.5}, r"\{name: cells, weight: 0.5, target: head\}"),
    ({"objectives": [{"name": "sft"}, {"name": "cells", "target": "pixels"}]},
     r"stages\[0\].objectives\[1\].target: 'pixels' is not one of words, head"),
    ({"objectives": [{"name": "sft"}, {"name": "cels"}]}, r"stages\[0\].objectives\[1\].name: unknown objective 'cels'"),
    ({"objectives": [{"name": "sft"}, {"name": "cells", "targett": "words"}]},
     r"stages\[0\].objectives\[1\].targett: objective cells has no option"),
    ({"objectives": [{"name": "sft"}, {"name": "sft"}]}, r"stages\[0\].objectives\[1\].name: .* appears twice"),
    ({"objectives": [{"name": "sft", "weight": 0}]}, r"stages\[0\].objectives\[0\].weight: expected a positive"),
    ({"objectives": []}, r"stages\[0\].objectives: a stage needs at least one objective"),
])
def test_objective_settings_fail_naming_the_entry(train_world, stage_edit, message):
    recipe = vlm_recipe(train_world)
    recipe["stages"][0].update(stage_edit)
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe)


def test_old_cell_head_key_says_what_to_write(train_world):
    recipe = vlm_recipe(train_world)
    recipe["model"]["connector"] = {"cell_classes": 41}
    with pytest.raises(ConfigError, match=r"model.connector.cell_classes: .*\{name: cells, target: head\}"):
        recipe_from_dict(recipe)


def documented_example() -> type:
    """The objective the package docstring shows how to write, run as written (it registers itself)."""
    doc = objectives.__doc__
    code = doc[doc.index("    from dataclasses import dataclass"):doc.index("after which a recipe may say")]
    namespace: dict = {}
    exec(textwrap.dedent(code), namespace)
    return namespace["TokenNorm"]


@register("test_token_norm")
class CountingTokenNorm(documented_example()):
    """The documented example, plus state: how many image tokens it has seen, checkpointed."""

    metrics = ("loss", "rms", "seen")

    def setup(self, ctx) -> None:
        self.seen = 0

    def loss(self, model, mb: MicroBatch, info: StepInfo) -> Output:
        out = super().loss(model, mb, info)
        if out.loss is not None:
            self.seen += out.metrics["rms"][1]
            out.metrics["seen"] = (self.seen, 1)
        return out

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]


def test_a_new_objective_plugs_in_with_options_metrics_and_state(train_world, tmp_path):
    recipe = vlm_recipe(train_world, checkpoint_every=1)
    for st in recipe["stages"]:
        st["objectives"] = [{"name": "sft"}, {"name": "test_token_norm", "weight": 0.5, "target": 2.0}]
    cfg = recipe_from_dict(recipe)
    assert cfg.stages[0].objectives[1] == {"name": "test_token_norm", "weight": 0.5, "target": 2.0}
    train(cfg, tmp_path / "run", **QUIET)
    got = rows(tmp_path / "run")
    assert all(r["loss"] == pytest.approx(r["sft/loss"] + 0.5 * r["test_token_norm/loss"]) for r in got)
    assert all(r["test_token_norm/rms"] > 0 for r in got)
    # Stopped after 4 steps and resumed inside stage 2: the counter comes back from the checkpoint.
    train(cfg, tmp_path / "resumed", max_steps=4, **QUIET)
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)
    assert [r["test_token_norm/seen"] for r in rows(tmp_path / "resumed")] == [r["test_token_norm/seen"] for r in got]
    reference = load_file(tmp_path / "run/final/model.safetensors")
    resumed = load_file(tmp_path / "resumed/final/model.safetensors")
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())


def test_a_model_exported_with_the_old_connector_cell_head_still_loads(tmp_path):
    """Models exported while the cell head lived in the connector carry `connector.cell_classes` and its
    tensors: they load, the head left out, with every other tensor as saved."""
    from safetensors.torch import save_file

    from nativevlm.config import ModelConfig, from_dict
    from nativevlm.model.vlm import NativeVLM

    torch.manual_seed(0)
    model = NativeVLM(from_dict(ModelConfig, tiny_model()))
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m/config.json").read_text())
    config["connector"]["cell_classes"] = NUM_CELL_CLASSES
    (tmp_path / "m/config.json").write_text(json.dumps(config))
    state = {**model.state_dict(), "connector.cell_head.weight": torch.zeros(NUM_CELL_CLASSES, 32),
             "connector.cell_head.bias": torch.zeros(NUM_CELL_CLASSES)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "m/model.safetensors"))
    loaded = NativeVLM.from_pretrained(tmp_path / "m")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
