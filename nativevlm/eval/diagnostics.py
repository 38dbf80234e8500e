"""Measurements that say *why* a family is or is not learnt (the instruments of docs/learnability.md).

- `answer_attention`: where the answer position looks. For each question it runs the prompt once and reads
  every layer's attention from the last prompt position (the one that predicts the first answer token) over
  the image tokens: the share of attention given to the image, the normalised entropy of that attention
  over the image tokens (1 = uniform), and, when the question names one object of a world scene, the share
  of the image attention that lands on that object's token (chance = 1 / number of image tokens).
- `SensitivityProbe`: what the image tokens encode. It re-renders world scenes with one object recoloured,
  reshaped or removed and measures how far that object's token (connector output) moves in each case,
  against the token's norm: a token whose colour moves it by 1% of its norm is a token the language model
  can barely tell apart from its recoloured twin.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import replace
from typing import Optional, Sequence

import torch

from ..data.collate import encode_sample
from ..data.sample import Sample, user_turn
from ..data.world.scene import CELL, PALETTE, SHAPES
from .benchmarks import Item


@contextlib.contextmanager
def recorded_attention(model, rows: list):
    """Within the block, every decoder attention call of `model` (a NativeVLM or a LanguageModel) appends
    the probabilities of its last query row ([B, H, S]) to `rows`; outputs are unchanged (the real
    attention still runs). It wraps that model's own `attention_fn`, so other models in the process, and
    this one after the block, compute attention as before."""
    lm = getattr(model, "language", model)
    original = lm.attention_fn

    def recording(q, k, v, mask, causal):
        if k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k_full = k.repeat_interleave(rep, dim=1)
        else:
            k_full = k
        scores = (q[:, :, -1:].float() @ k_full.float().transpose(-1, -2)).squeeze(2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, -1].expand_as(scores), float("-inf"))
        rows.append(scores.softmax(-1))
        return original(q, k, v, mask, causal)

    lm.attention_fn = recording
    try:
        yield rows
    finally:
        lm.attention_fn = original


def target_object(question: str, scene: dict) -> Optional[dict]:
    """The one object of `scene` that the question names by colour and/or shape, or None (no object named,
    several match, or several objects are named, as in relations)."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    objects = scene.get("objects", [])
    named_c = words & set(PALETTE)
    named_s = {s for s in SHAPES if s in words or s + "s" in words}
    if len(named_c) > 1 or len(named_s) > 1 or not (named_c or named_s):
        return None
    match = [o for o in objects if (not named_c or o["color"] in named_c) and (not named_s or o["shape"] in named_s)]
    return match[0] if len(match) == 1 else None


@torch.no_grad()
def answer_attention(model, tokenizer, processor, items: Sequence[Item], scenes: dict) -> dict:
    """Attention from the answer position over the image tokens, averaged over the questions (one image each).
    Returns `attn/image_mass`, `attn/entropy` (normalised, lowest layer mean) and, over questions naming one
    object, `attn/target_share` (highest layer mean) beside `attn/target_chance`."""
    model.eval()
    device = next(model.parameters()).device
    image_id = model.config.image_token_id
    per_layer: dict[str, list[list[float]]] = {"mass": [], "entropy": [], "share": []}
    chance = []
    for item in items:
        if len(item.images) != 1:
            continue
        prompt = Sample(id=item.id, images=list(item.images),
                        messages=[{"role": "user", "content": user_turn(item.prompt(), 1)}])
        enc = encode_sample(prompt, tokenizer, processor, add_generation_prompt=True)
        ids = torch.tensor([enc.input_ids], device=device)
        img_pos = (ids[0] == image_id).nonzero().squeeze(1)
        if len(img_pos) < 2:
            continue
        rows: list = []
        with recorded_attention(model, rows):
            model(ids, pixel_values=[p.to(device) for p in enc.pixel_values])
        probs = torch.stack([r[0].mean(0) for r in rows])  # [layers, S], mean over heads
        on_image = probs[:, img_pos]
        mass = on_image.sum(-1)
        dist = on_image / mass.clamp_min(1e-12)[:, None]
        entropy = -(dist * dist.clamp_min(1e-12).log()).sum(-1) / math.log(len(img_pos))
        per_layer["mass"].append(mass.tolist())
        per_layer["entropy"].append(entropy.tolist())
        scene = scenes.get(item.meta.get("scene_id", ""), {})
        obj = target_object(item.prompt(), scene) if scene else None
        if obj is not None:
            _, h, w = enc.pixel_values[0].shape
            cols = w // processor.factor
            if (h // processor.factor, cols) == (scene["height"] // CELL, scene["width"] // CELL):
                per_layer["share"].append(dist[:, obj["row"] * cols + obj["col"]].tolist())
                chance.append(1 / len(img_pos))
    out = {}
    if per_layer["mass"]:
        mean = {k: torch.tensor(v).mean(0) for k, v in per_layer.items() if v}
        out["attn/image_mass"] = float(mean["mass"].max())
        out["attn/entropy"] = float(mean["entropy"].min())
        if "share" in mean:
            out["attn/target_share"] = float(mean["share"].max())
            out["attn/target_chance"] = sum(chance) / len(chance)
            for layer, v in enumerate(mean["share"].tolist()):
                out[f"attn/target_share_L{layer}"] = v
    return out


class SensitivityProbe:
    """Recolour / reshape / remove the first object of up to `n` world scenes and measure how far its token
    moves (L2 at the connector output), next to the token's norm."""

    def __init__(self, scenes: Sequence[dict], n: int = 24):
        from ..data.world.render import render_scene
        from ..data.world.scene import Scene

        self.cases = []
        usable = [s for s in scenes if s.get("kind") == "objects" and s.get("objects")][:n]
        colours = sorted({o["color"] for s in usable for o in s["objects"]})
        shapes = sorted({o["shape"] for s in usable for o in s["objects"]})
        for raw in usable:
            scene = Scene.from_dict(raw)
            obj = scene.objects[0]
            others = scene.objects[1:]
            taken = {(o.color, o.shape) for o in others}
            variants = {"color": [replace(obj, color=c) for c in colours if c != obj.color and (c, obj.shape) not in taken],
                        "shape": [replace(obj, shape=s) for s in shapes if s != obj.shape and (obj.color, s) not in taken]}
            images = {"original": [render_scene(scene)],
                      "occupancy": [render_scene(replace(scene, objects=tuple(others)))]}
            for kind, objs in variants.items():
                images[kind] = [render_scene(replace(scene, objects=(o, *others))) for o in objs]
            self.cases.append((obj.row * scene.grid[1] + obj.col, images))

    @torch.no_grad()
    def __call__(self, model) -> dict:
        from ..data.image import ImageProcessor

        model.eval()
        processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
        device = next(model.parameters()).device
        moved: dict[str, list[float]] = {"color": [], "shape": [], "occupancy": [], "norm": []}
        for index, images in self.cases:
            flat = [(k, img) for k, imgs in images.items() for img in imgs]
            feats = model.encode_images([processor(img).to(device) for _, img in flat])
            tokens = [f[index] for f in feats]
            base = tokens[0]
            moved["norm"].append(float(base.norm()))
            for (kind, _), tok in zip(flat[1:], tokens[1:]):
                moved[kind].append(float((tok - base).norm()))
        out = {f"sens/{k}": sum(v) / len(v) for k, v in moved.items() if v}
        if out.get("sens/norm"):
            for k in ("color", "shape", "occupancy"):
                if f"sens/{k}" in out:
                    out[f"sens/{k}_rel"] = out[f"sens/{k}"] / out["sens/norm"]
        return out
