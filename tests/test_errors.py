"""User errors: every command fed a file that is not an image, a truncated checkpoint or a malformed
dataset exits 2 with one line naming the input, and no traceback (errors.UserError)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from nativevlm import LanguageConfig, ModelConfig, NativeVLM, VisionConfig
from nativevlm.cli import main
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.errors import (CheckpointError, ConfigError, CurationError, DataError, ImageError, SampleDropped,
                              UserError)
from trainkit import vlm_recipe


def test_every_user_error_is_one_family():
    for cls in (ConfigError, DataError, ImageError, CheckpointError, CurationError, SampleDropped):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, train_world):
    """A model folder (with its tokenizer), a copy with its weights truncated, a file named .png that is
    not an image, a dataset that is not JSON, and a dataset whose only image is that non-image."""
    root = tmp_path_factory.mktemp("errors")
    tok = Tokenizer.load(train_world["tok"])
    torch.manual_seed(0)
    model = NativeVLM(ModelConfig(
        vision=VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=8),
        language=LanguageConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                num_kv_heads=1, intermediate_size=64), **tok.image_token_ids()))
    model.save_pretrained(root / "model")
    tok.save(root / "model")
    shutil.copytree(root / "model", root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "not-an-image.png").write_text("this is text, not a PNG")
    (root / "malformed.json").write_text('[{"id": "a", "conversations": [')
    (root / "bad-image.json").write_text(json.dumps([{"id": "a", "image": "not-an-image.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "text"}]}]))

    def recipe(name: str, **changes) -> str:
        r = vlm_recipe(train_world, **{k: v for k, v in changes.items() if k != "data"})
        if "data" in changes:
            for stage in r["stages"]:
                stage["data"] = [{"path": str(changes["data"])}]
                stage.pop("val_data", None)
        (root / name).write_text(yaml.safe_dump(r))
        return str(root / name)

    return {
        "root": root, "model": str(root / "model"), "truncated": str(root / "truncated"),
        "image": str(root / "not-an-image.png"), "malformed": str(root / "malformed.json"),
        "bad_image": str(root / "bad-image.json"), "qa": str(train_world["val"]),
        "recipe_malformed": recipe("malformed.yaml", data=root / "malformed.json"),
        "recipe_bad_image": recipe("bad-image.yaml", data=root / "bad-image.json"),
        "recipe_truncated": recipe("truncated.yaml", init={"path": str(root / "truncated")}),
    }


CASES = {
    "ask: not an image": lambda i: ["ask", i["model"], "--image", i["image"], "What is it?"],
    "ask: truncated checkpoint": lambda i: ["ask", i["truncated"], "hi"],
    "info: truncated checkpoint": lambda i: ["info", i["truncated"]],
    "info: not a checkpoint": lambda i: ["info", i["image"]],
    "train: malformed dataset": lambda i: ["train", i["recipe_malformed"], "--out", str(i["root"] / "r1")],
    "train: dataset of a non-image": lambda i: ["train", i["recipe_bad_image"], "--out", str(i["root"] / "r2")],
    "train: truncated checkpoint": lambda i: ["train", i["recipe_truncated"], "--out", str(i["root"] / "r3")],
    "curate: malformed dataset": lambda i: ["data", "curate", i["malformed"], "--out", str(i["root"] / "c1.json")],
    "curate: not an image (strict)": lambda i: ["data", "curate", i["bad_image"], "--out", str(i["root"] / "c2.json"),
                                                "--stages", "integrity", "--strict"],
    "curate: truncated judge checkpoint": lambda i: ["data", "curate", i["bad_image"], "--out",
                                                     str(i["root"] / "c3.json"), "--judge-model", i["truncated"]],
    "preferences: malformed dataset": lambda i: ["data", "preferences", i["malformed"], "--model", i["model"],
                                                 "--out", str(i["root"] / "p1.jsonl")],
    "preferences: no readable question": lambda i: ["data", "preferences", i["bad_image"], "--model", i["model"],
                                                    "--out", str(i["root"] / "p2.jsonl")],
    "preferences: truncated checkpoint": lambda i: ["data", "preferences", i["qa"], "--model", i["truncated"],
                                                    "--out", str(i["root"] / "p3.jsonl")],
    "tokenizer: malformed dataset": lambda i: ["tokenizer", "train", i["malformed"], "--vocab-size", "300",
                                               "--out", str(i["root"] / "t1")],
    "tokenizer: not text": lambda i: ["tokenizer", "train", str(i["root"] / "truncated" / "model.safetensors"),
                                      "--vocab-size", "300", "--out", str(i["root"] / "t2")],
}


@pytest.mark.parametrize("case", list(CASES))
def test_command_exits_2_with_one_line(case, inputs, capsys):
    argv = CASES[case](inputs)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"nativevlm {argv[0]}") and "error:" in err
