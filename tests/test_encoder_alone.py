"""`bench/encoder_alone.py`: which families it probes (not yes/no ones, whose answer depends on the
question), one head per family over the mean of the encoder's grid, and that it learns a family any encoder
must learn (the colour of a plain image) and reports it against the prior."""
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench")]

encoder_alone = pytest.importorskip("encoder_alone")

SMALL = ["model.vision.hidden_size=32", "model.vision.num_layers=1", "model.vision.num_heads=2",
         "model.vision.intermediate_size=64", "model.vision.patch_size=8", "model.vision.min_patches=4",
         "model.vision.max_patches=16"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def write_set(folder: Path, n: int, start: int) -> Path:
    records = []
    for i in range(start, start + n):
        name = list(COLOURS)[i % 3]
        path = folder / f"{i}.png"
        Image.new("RGB", (24, 24), COLOURS[name]).save(path)
        ask_colour = i % 2 == 0
        q, a = ("What colour is it?", name) if ask_colour else (f"Is it {list(COLOURS)[i % 2]}?", "yes" if i % 3 == i % 2 else "no")
        records.append({"id": str(i), "image": path.name,
                        "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}],
                        "meta": {"family": "colour" if ask_colour else "yes/no", "answer": a}})
    out = folder / f"set{start}.json"
    out.write_text(json.dumps(records))
    return out


def test_yes_no_families_are_left_out():
    turns = [("a.png", "q", "Yes", "yes/no", "1"), ("a.png", "q", "no.", "yes/no", "2"),
             ("a.png", "q", "red", "colour", "3"), ("b.png", "q", "blue", "colour", "4"),
             ("b.png", "q", "yes", "mixed", "5"), ("b.png", "q", "two", "mixed", "6")]
    assert encoder_alone.question_free(turns) == {"colour": ["blue", "red"], "mixed": ["two"]}


def test_one_head_per_family_over_the_mean_grid():
    from nativevlm.config import VisionConfig
    torch.manual_seed(0)
    cfg = VisionConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, patch_size=8)
    probe = encoder_alone.EncoderProbe(cfg, {"colour": ["a", "b", "c"], "count": ["one", "two"]})
    images = [torch.randn(3, 16, 16), torch.randn(3, 16, 24)]
    out = probe(images, ["colour", "count"])
    assert [tuple(o.shape) for o in out] == [(3,), (2,)]
    grid = probe.encoder([images[1]])[0]
    assert torch.allclose(out[1], probe.heads["f1"](grid.flatten(0, 1).mean(0)), atol=1e-6)


def test_learns_the_colour_of_a_plain_image(tmp_path, monkeypatch):
    train, test = write_set(tmp_path, 90, 0), write_set(tmp_path, 30, 1000)
    out = tmp_path / "res" / "set0.json"  # named after the training file
    monkeypatch.setattr(sys, "argv", ["encoder_alone.py", "--train", str(train), "--eval", str(test),
                                      "--samples", "512", "--batch", "32", "--eval-every", "256",
                                      "--out", str(out.parent), *(x for s in SMALL for x in ("--set", s))])
    encoder_alone.main()
    result = json.loads(out.read_text())
    assert result["left_out"] == ["yes/no"] and list(result["classes"]) == ["colour"]
    assert result["priors"]["colour"] == pytest.approx(1 / 3, abs=0.01)
    assert result["test"]["acc/colour"] == 1.0 and result["test"]["samples"] == 512
    assert out.with_suffix(".png").exists()


def test_default_samples_are_the_recipe_runs_share(tmp_path, monkeypatch):
    """Without --samples the probe sees as many of its families' questions as the recipe's full model: steps x
    batch size x their share of the training questions (here 10 x 16 x 45/90 = 80, so three batches of 32; the
    recipe's encoder stage, which trains the encoder alone, does not count)."""
    train, test = write_set(tmp_path, 90, 0), write_set(tmp_path, 30, 1000)
    monkeypatch.setattr(sys, "argv", ["encoder_alone.py", "--train", str(train), "--eval", str(test), "--batch", "32",
                                      "--out", str(tmp_path / "res"), "--set", "stages.1.steps=10",
                                      *(x for s in SMALL for x in ("--set", s))])
    encoder_alone.main()
    result = json.loads((tmp_path / "res" / "set0.json").read_text())
    assert result["train_questions"] == 45 and result["all_train_questions"] == 90
    assert [p["samples"] for p in result["curve"]] == [96]


def test_the_cnn_reference_learns_it_too(tmp_path, monkeypatch):
    train, test = write_set(tmp_path, 90, 0), write_set(tmp_path, 30, 1000)
    monkeypatch.setattr(sys, "argv", ["encoder_alone.py", "--train", str(train), "--eval", str(test), "--encoder",
                                      "cnn", "--samples", "512", "--batch", "32", "--out", str(tmp_path / "res"),
                                      *(x for s in SMALL for x in ("--set", s))])
    encoder_alone.main()
    result = json.loads((tmp_path / "res" / "set0.json").read_text())
    assert result["encoder"] == "cnn" and result["test"]["acc/colour"] == 1.0


def test_init_vlm_carries_the_trained_encoder(tmp_path, monkeypatch):
    """--init-vlm writes a NativeVLM of the recipe's shape whose encoder is the probe's (so a run started from
    it with init.path begins with the encoder trained here), with the tokenizer beside it."""
    from nativevlm.data.tokenizer import Tokenizer
    from nativevlm.model.loading import load_pretrained

    train, test = write_set(tmp_path, 90, 0), write_set(tmp_path, 30, 1000)
    Tokenizer.train(["what colour is it red green blue yes no"] * 20, vocab_size=300).save(tmp_path / "tok")
    monkeypatch.setattr(sys, "argv", ["encoder_alone.py", "--train", str(train), "--eval", str(test), "--samples",
                                      "64", "--batch", "32", "--out", str(tmp_path / "res"), "--init-vlm",
                                      str(tmp_path / "init"), "--tokenizer", str(tmp_path / "tok"),
                                      "--set", "model.language.vocab_size=300",
                                      *(x for s in SMALL for x in ("--set", s))])
    encoder_alone.main()
    vlm = load_pretrained(tmp_path / "init")
    trained = encoder_alone.probe.last_model.encoder.state_dict()
    assert set(vlm.vision.state_dict()) == set(trained)
    for k, v in vlm.vision.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    assert Tokenizer.load(tmp_path / "init").vocab_size <= 300
