"""The `answer_classes` objective: which answers become classes, each image's classes read back from the
batch's targets however it is packed, the loss as a cross-entropy of its head over the mean of the encoder's
grid (computed here by hand, the language model never run), an encoder stage that trains the vision side
only, checkpoints its head without exporting it, and resumes bit-identically."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from nativevlm.config import ConfigError, ModelConfig, from_dict
from nativevlm.data.collate import Collator
from nativevlm.data.image import ImageProcessor
from nativevlm.data.sample import Sample
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.model.vlm import NativeVLM
from nativevlm.train.data import StageData
from nativevlm.train.export import build_model
from nativevlm.train.objectives import MicroBatch, StageContext, StepInfo
from nativevlm.train.objectives.answer_classes import AnswerClasses, answer_counts, choose_classes
from nativevlm.train.recipe import recipe_from_dict
from nativevlm.train.trainer import train
from trainkit import tiny_model

QUIET = dict(log=lambda *a, **k: None)
HUES = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "grey": (128, 128, 128)}
CORPUS = [f"what colour is it? {h}. is it {h}? yes no. which shape? ring cross" for h in HUES] * 10


def chat(*turns, images=(), sid="s"):
    roles = ["user", "assistant"] * len(turns)
    return Sample(id=sid, messages=[{"role": r, "content": c} for r, c in zip(roles, turns)], images=list(images))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=320, min_frequency=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ac")
    out = {}
    for name, rgb in HUES.items():
        Image.new("RGB", (16, 16), rgb).save(folder / f"{name}.png")
        out[name] = str(folder / f"{name}.png")
    return out


class Data:
    def __init__(self, samples):
        self.sources = [samples]


def test_classes_leave_out_yes_no_rare_answers_and_keep_the_most_frequent(images):
    def q(answer, family=None, imgs=("x",)):
        s = chat("<image>\nq?", answer, images=list(imgs))
        if family:
            s.meta["family"] = family
        return s

    samples = ([q("Yes.", "yes/no")] * 9 + [q("Red.", "colour")] * 4 + [q("blue", "colour")] * 4
               + [q("a ring", "shape")] * 5 + [q("three", "count")] * 3 + [q("3", "digit")] * 2
               + [q("something long")] * 2 + [chat("text only?", "red")] * 9 + [q("green", "colour", ("x", "y"))] * 9)
    counts, n = answer_counts(Data(samples).sources, 1000)
    assert n == 29  # one-image conversations only
    assert counts == Counter({("yes/no", "yes"): 9, ("shape", "ring"): 5, ("colour", "red"): 4, ("colour", "blue"): 4,
                              ("count", "3"): 3, ("digit", "3"): 2, ("", "something long"): 2})  # normalised
    exclude = {"yes", "no"}
    # by count over all families, ties by text; each in the family it answers most
    assert choose_classes(counts, exclude, 3, 256) == (["3", "ring", "blue", "red"], ["count", "shape", "colour", "colour"])
    assert choose_classes(counts, exclude, 3, 2) == (["3", "ring"], ["count", "shape"])
    assert choose_classes(counts, exclude, 1, 256)[0][-1] == "something long"
    assert answer_counts(Data(samples).sources, 2) == (Counter({("yes/no", "yes"): 1, ("count", "3"): 1}), 2)  # 0 and 23 of 47


def test_each_answer_competes_with_its_own_familys_classes_only(tok, images):
    """Per-family softmax: a colour answer's loss ignores the shape logits, whatever they are."""
    samples = ([chat("<image>\nWhat colour?", h, images=[images[h]], sid=f"c{i}{h}") for i in range(3) for h in ("red", "blue")]
               + [chat("<image>\nWhich shape?", s, images=[images["red"]], sid=f"s{i}{s}") for i in range(3)
                  for s in ("ring", "cross")])
    for s in samples:
        s.meta["family"] = "colour" if s.id.startswith("c") else "shape"
    model = tiny_vlm(tok)
    lines = []
    obj, head = setup_objective(tok, samples, model, log=lines.append, max_classes=6)
    # the summary goes to the stage's log (the trainer's: silent on all ranks but the first)
    assert lines == ["stage enc: answer_classes: 4 classes in 2 families (colour 2, shape 2) from 12 one-image "
                     "conversations; 0 answers of other kinds are not classes"]
    assert sorted(zip(obj.classes, obj.families)) == [("blue", "colour"), ("cross", "shape"), ("red", "colour"),
                                                      ("ring", "shape")]
    proc = ImageProcessor(patch_size=8, factor=16, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512)([samples[0], samples[-1]])  # red (colour), cross (shape)
    info = StepInfo(step=0, stage_step=0, micro_batches=1, world=1, rank=0, target_weight=torch.tensor(1.0))
    out = obj.loss(model, MicroBatch(model, batch, 0), info)
    pooled = torch.stack([g.flatten(0, 1).mean(0) for g in model.vision(batch.pixel_values)])
    logits = head(pooled)
    c = obj.index
    expected = (F.cross_entropy(logits[0, [c["red"], c["blue"]]], torch.tensor(0))
                + F.cross_entropy(logits[1, [c["ring"], c["cross"]]], torch.tensor(1))) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def setup_objective(tok, samples, model, log=print, **options):
    from nativevlm.train.objectives.answer_classes import AnswerClassesOptions
    obj = AnswerClasses(AnswerClassesOptions(**options))
    head = obj.module(model)
    stage = type("Stage", (), {"name": "enc"})()
    stage.data = [None]
    obj.setup(StageContext(model=model, tokenizer=tok, stage=stage, data=Data(samples), processor=None,
                           device=torch.device("cpu"), module=head, log=log))
    return obj, head


def tiny_vlm(tok):
    torch.manual_seed(0)
    return NativeVLM(from_dict(ModelConfig, {**tiny_model(vocab=tok.vocab_size), **tok.image_token_ids()}))


@pytest.mark.parametrize("pack,question_weight", [(False, 0.0), (True, 0.0), (False, 1.0), (True, 0.5)])
def test_each_image_gets_the_classes_of_its_own_answers(tok, images, pack, question_weight):
    """Labels come from the batch's target tokens, image by image in `pixel_values` order: checked by the
    pixels themselves (each image is one solid hue), packed or not, and with the question's words as targets
    too (a question loss: the labels are still the answers')."""
    samples = [
        chat("<image>\nWhat colour is it?", "Red.", "Is it red?", "yes", images=[images["red"]], sid="two turns"),
        chat("<image>\nIs it blue?", "yes", images=[images["blue"]], sid="yes only"),
        chat("what colour?", "green", sid="text"),
        chat("<image> <image>\nWhich colours?", "green", images=[images["green"], images["grey"]], sid="two images"),
        chat("<image>\nWhat colour is it?", "green", images=[images["green"]], sid="green"),
        chat("<image>\nWhat colour is it?", "grey", images=[images["grey"]], sid="grey"),
    ] + [chat("<image>\nWhat colour is it?", h, images=[images[h]], sid=f"pad{i}{h}") for i in range(3) for h in HUES]
    obj, _ = setup_objective(tok, samples, tiny_vlm(tok))
    assert set(obj.classes) == set(HUES)
    proc = ImageProcessor(patch_size=8, factor=16, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512, pack=pack, question_weight=question_weight)(samples[:6])
    assert (batch.question_mask is not None) == (question_weight > 0)
    labels = obj.labels(MicroBatch(None, batch, 0))
    assert len(labels) == batch.n_images == 6
    by_hue = {}
    for pixels, lab in zip(batch.pixel_values, labels):
        by_hue.setdefault(pixels.mean((1, 2)).round(decimals=3).tolist().__repr__(), []).append(lab)
    got = sorted(sorted(map(tuple, v)) for v in by_hue.values())
    c = obj.index
    # red: its colour answer (the yes is no class); blue: yes only; green: the two-image conversation gives
    # nothing, the one-image one its answer; grey: likewise
    assert got == sorted([[(c["red"],)], [()], sorted([(), (c["green"],)]), sorted([(), (c["grey"],)])])


def test_loss_is_the_heads_cross_entropy_over_the_mean_grid_without_the_language_model(tok, images, monkeypatch):
    samples = [chat("<image>\nWhat colour is it?", h, images=[images[h]], sid=f"{i}{h}") for i in range(3) for h in HUES]
    samples.append(chat("<image>\nIs it red?", "no", images=[images["blue"]], sid="no"))
    model = tiny_vlm(tok)
    obj, head = setup_objective(tok, samples, model, max_classes=8)
    proc = ImageProcessor(patch_size=8, factor=16, min_patches=4, max_patches=64)
    batch = Collator(tok, proc, max_length=512)(samples[:4] + samples[-1:])
    torch.manual_seed(1)  # patches that differ, so the mean of the grid is not any one token
    batch.pixel_values = [torch.rand_like(p) for p in batch.pixel_values]
    monkeypatch.setattr(model.language, "forward", lambda *a, **k: pytest.fail("the language model ran"))
    info = StepInfo(step=0, stage_step=0, micro_batches=2, world=1, rank=0, target_weight=torch.tensor(1.0))
    out = obj.loss(model, MicroBatch(model, batch, 0), info)
    grids = model.vision(batch.pixel_values[:4])
    logits = head(torch.stack([g.flatten(0, 1).mean(0) for g in grids]))[:, :4]  # the head's 4 unused outputs: no class
    targets = torch.tensor([obj.index[h] for h in HUES])
    expected = F.cross_entropy(logits, targets)
    assert out.loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)  # its share of a 2-micro-batch step
    assert out.metrics["labelled"] == (4, 5)
    assert out.metrics["accuracy"] == (int((logits.argmax(-1) == targets).sum()), 4)
    out.loss.backward()
    assert head.weight.grad is not None and model.vision.parameters().__next__().grad is not None
    assert all(p.grad is None for p in model.language.parameters())


def test_no_class_answers_is_a_clear_error(tok, images):
    samples = [chat("<image>\nIs it red?", "yes", images=[images["red"]], sid=str(i)) for i in range(5)]
    with pytest.raises(ConfigError, match="no answer other than yes/no occurs 3 times"):
        setup_objective(tok, samples, tiny_vlm(tok))


def write_set(root, n: int) -> str:
    """A yes/no-heavy colour set: half "Is it <hue>?", half "What colour is it?"."""
    import random
    rng = random.Random(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        hue = rng.choice(sorted(HUES))
        Image.new("RGB", (16, 16), HUES[hue]).save(root / "images" / f"{i}.png")
        if rng.random() < 0.5:
            asked = rng.choice(sorted(HUES))
            turn = [f"Is it {asked}?", "yes" if asked == hue else "no"]
        else:
            turn = ["What colour is it?", hue]
        records.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{turn[0]}"}, {"from": "gpt", "value": turn[1]}]})
    (root / "train.json").write_text(json.dumps(records))
    return str(root / "train.json")


def encoder_recipe(tok_path, data: str, steps: int) -> dict:
    st = {"name": "encoder", "data": [{"path": data}], "objectives": [{"name": "answer_classes", "max_classes": 8}],
          "trainable": ["vision.*"], "steps": steps, "batch_size": 8, "lr": 3e-3}
    model = tiny_model(vocab=320)
    model["vision"].update(stem="conv")
    return {"kind": "vlm", "model": model, "tokenizer": tok_path, "max_length": 96, "seed": 0, "device": "cpu",
            "checkpoint_every": 1, "keep_checkpoints": 40, "progress": False,
            "stages": [st, {"name": "all", "data": [{"path": data}], "trainable": ["*"], "steps": 1, "batch_size": 4,
                            "lr": 1e-3}]}


def test_an_encoder_stage_learns_colour_trains_vision_only_and_resumes_exactly(tok, tmp_path):
    tok.save(tmp_path / "tok")
    cfg = recipe_from_dict(encoder_recipe(str(tmp_path / "tok"), write_set(tmp_path / "data", 64), steps=30))
    train(cfg, tmp_path / "run", **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    enc = [r for r in rows if r.get("stage") == "encoder" and "answer_classes/loss" in r]
    assert len(enc) == 30
    # its first loss: the head over the initial model's grids on the step's batch, by hand
    torch.manual_seed(cfg.seed)  # as the trainer: the model, then the objective's head
    model = build_model(cfg, Tokenizer.load(tmp_path / "tok"))
    head = torch.nn.Linear(model.config.vision.hidden_size, 8)
    collator = Collator(Tokenizer.load(tmp_path / "tok"), ImageProcessor.from_config(model.config.vision,
                                                                                      model.config.connector), 96)
    data = StageData(cfg.stages[0], collator, seed=f"{cfg.seed}:0")
    obj, _ = setup_objective(collator.tokenizer, data.sources[0], model, max_classes=8)
    (batch,) = data.next_batches()
    labels = obj.labels(MicroBatch(None, batch, 0))
    kept = [k for k, lab in enumerate(labels) if lab]
    with torch.no_grad():
        logits = head(torch.stack([g.flatten(0, 1).mean(0) for g in model.vision([batch.pixel_values[k] for k in kept])]))
        first = F.cross_entropy(logits[:, :len(obj.classes)], torch.tensor([labels[k][0] for k in kept]))
    assert enc[0]["answer_classes/loss"] == pytest.approx(first.item(), rel=1e-4)
    assert sum(r["answer_classes/accuracy"] for r in enc[-5:]) / 5 >= 0.9  # four solid hues: read by step 30
    assert sum(r["answer_classes/accuracy"] for r in enc[:3]) / 3 <= 0.5

    start = load_file(tmp_path / "run/checkpoints/step-00000001/model.safetensors")
    end = load_file(tmp_path / "run/checkpoints/step-00000030/model.safetensors")
    changed = {k.split(".")[0] for k in end if not torch.equal(start[k], end[k])}
    assert changed == {"vision", "objectives"}  # the encoder and its head; the connector and LM as they were
    final = load_file(tmp_path / "run/final/model.safetensors")
    assert not any(k.startswith("objectives.") for k in final)

    train(cfg, tmp_path / "resumed", max_steps=12, **QUIET)
    train(cfg, tmp_path / "resumed", resume=True, **QUIET)
    resumed = load_file(tmp_path / "resumed/final/model.safetensors")
    assert resumed.keys() == final.keys() and all(torch.equal(resumed[k], final[k]) for k in final)


def test_a_sharded_source_gives_the_same_classes_as_its_json(tmp_path):
    """Read ahead of training, a sharded source gives the same answer counts (answer_classes) and common
    answer tokens (answer_words) as the JSON it was made from, without moving the training stream."""
    from nativevlm.cli import main
    from nativevlm.train.objectives.answer_words import common_answer_tokens, stage_sources

    path = write_set(tmp_path / "data", 40)
    assert main(["data", "shard", path, "--out", str(tmp_path / "shards"), "--shard-size", "16"]) == 0
    tok = Tokenizer.train(CORPUS, vocab_size=320, min_frequency=1)
    tok.save(tmp_path / "tok")
    collator = Collator(tok, ImageProcessor(patch_size=8, factor=16, min_patches=4, max_patches=64), 96)
    got = []
    for where in (path, str(tmp_path / "shards")):
        cfg = recipe_from_dict(encoder_recipe(str(tmp_path / "tok"), where, steps=1))
        data = StageData(cfg.stages[0], collator, seed="0:0")
        got.append((answer_counts(stage_sources(data, cfg.stages[0]), 1000),
                    common_answer_tokens(stage_sources(data, cfg.stages[0]), tok, 0.1, 1000)))
    assert got[0] == got[1] and got[0][0][1] == 40 and got[0][1]
    before = data.sources[0].position
    assert answer_counts(stage_sources(data, cfg.stages[0]), 10)[1] == 10 and data.sources[0].position == before
