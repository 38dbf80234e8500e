"""Shared by the training tests: a tiny world on disk (tokenizer, text corpus, image-caption data with
small images) and tiny recipes over it, small enough for 2 CPU cores."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import yaml
from PIL import Image

WORDS = "red blue green square circle triangle small large left right above below a the is of and".split()
COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def train_world_tokenizer(root: Path, out: Path, think_tags: bool = True) -> Path:
    """The tokenizer of a `make_object_world` world in `root`, trained on its text and saved in `out`."""
    from nativevlm.data.tokenizer import Tokenizer

    texts = (root / "train_text.txt").read_text().splitlines()
    Tokenizer.train(texts, vocab_size=400, min_frequency=1, think_tags=think_tags).save(out)
    return out


def pre_think_world_tokenizer(world: dict, out: Path) -> Path:
    """A `make_object_world` world's tokenizer as it was trained before the thinking tags were reserved
    (`think_tags=False`), saved in `out`: for the tests pinning numbers measured with it."""
    return train_world_tokenizer(world["root"], out, think_tags=False)


def make_world(root: Path, n_text: int = 64, n_images: int = 24) -> dict:
    """Writes tok/, text.txt, captions.json (+ images/), val.json; returns their paths."""
    from nativevlm.data.tokenizer import Tokenizer

    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n_text)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    (root / "images").mkdir(exist_ok=True)
    records = []
    for i in range(n_images):
        color = rng.choice(list(COLORS))
        w, h = rng.choice([(32, 32), (64, 32), (32, 64)])
        Image.new("RGB", (w, h), COLORS[color]).save(root / "images" / f"{i}.png")
        records.append({"id": str(i), "image": f"images/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": f"a {color} image of {w} by {h}"}]})
    (root / "captions.json").write_text(json.dumps(records[: n_images * 3 // 4]))
    (root / "val.json").write_text(json.dumps(records[n_images * 3 // 4:]))
    Tokenizer.train(lines + [r["conversations"][1]["value"] for r in records], vocab_size=300,
                    min_frequency=1).save(root / "tok")
    return {"root": root, "tok": root / "tok", "text": root / "text.txt", "captions": root / "captions.json",
            "val": root / "val.json"}


def tiny_model(vocab: int = 320) -> dict:
    return {
        "vision": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "patch_size": 8,
                   "min_patches": 4, "max_patches": 64},
        "language": {"vocab_size": vocab, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1,
                     "intermediate_size": 64, "max_position_embeddings": 256},
        "moe": {"modality_experts": True},
    }


def vlm_recipe(world: dict, **top) -> dict:
    """Two stages: vision side only (NaViL S1), then everything."""
    data = [{"path": str(world["captions"]), "weight": 3.0}, {"path": str(world["text"]), "weight": 1.0}]
    recipe = {
        "kind": "vlm", "model": tiny_model(), "tokenizer": str(world["tok"]), "max_length": 96, "seed": 0,
        "device": "cpu", "checkpoint_every": 2, "progress": False,
        "stages": [
            {"name": "vision", "data": data, "val_data": str(world["val"]), "eval_every": 2, "eval_samples": 4,
             "trainable": ["vision.*", "connector.*", "language.layers.*.visual_*"], "steps": 3, "batch_size": 4,
             "grad_accum": 2, "lr": 3e-3, "warmup_steps": 1, "lr_multipliers": {"connector.*": 2.0}},
            {"name": "all", "data": copy.deepcopy(data), "trainable": ["*"], "steps": 3, "batch_size": 4, "lr": 1e-3,
             "schedule": "cosine", "weight_decay": 0.1},
        ],
    }
    recipe.update(top)
    return recipe


def lm_recipe(world: dict, **top) -> dict:
    recipe = {
        "kind": "lm", "model": {"language": tiny_model()["language"]}, "tokenizer": str(world["tok"]),
        "max_length": 64, "seed": 0, "device": "cpu", "checkpoint_every": 2, "progress": False,
        "stages": [{"name": "text", "data": [{"path": str(world["text"])}], "steps": 4, "batch_size": 4,
                    "lr": 3e-3, "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1}],
    }
    recipe.update(top)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def make_object_world(root: Path, n_train: int = 24, n_val: int = 8) -> dict:
    """A tiny built-in world (basic preset: object scenes) with a tokenizer trained on its text."""
    from nativevlm.data.world import generate_world

    generate_world(str(root), n_train, split="train", preset="basic", progress=False)
    generate_world(str(root), n_val, split="val", preset="basic", progress=False)
    return {"root": root, "tok": train_world_tokenizer(root, root / "tok")}


def curve_recipe(world: dict, **top) -> dict:
    """Two stages over a `make_object_world` world, with learning curves on its val split."""
    root = world["root"]
    model = tiny_model(vocab=420)
    model["vision"].update(patch_size=16, min_patches=16, max_patches=64)
    recipe = {
        "kind": "vlm", "model": model, "tokenizer": str(world["tok"]), "max_length": 200, "seed": 0,
        "device": "cpu", "checkpoint_every": 2, "keep_checkpoints": 5, "progress": False,
        "curves": {"data": str(root / "val.json"), "every": 2, "samples": 10, "batch_size": 4},
        "stages": [
            {"name": "a", "data": [{"path": str(root / "train_chat.json")}], "trainable": ["*"], "steps": 2,
             "batch_size": 4, "lr": 3e-3},
            {"name": "b", "data": [{"path": str(root / "train_captions.json")}], "trainable": ["*"], "steps": 2,
             "batch_size": 2, "lr": 1e-3},
        ],
    }
    recipe.update(top)
    return recipe
