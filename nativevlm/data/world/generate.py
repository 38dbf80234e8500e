"""Write one split of the world to disk: images, LLaVA-style QA and caption JSON, scenes, text corpus, and
the reasoner's text-only QA (each question with its scene's caption in place of the image).

Scene k is drawn from its own RNG seeded by (seed, k), so output depends only on the arguments. A scene
belongs to the split its signature hashes to; generation for a split skips scenes of other splits, which
keeps train/val/test disjoint however many scenes each asks for.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from typing import Iterator

from tqdm import tqdm

from ...config import ConfigError
from ..extract_think import descriptions_by_image, reasoner_records
from ..sample import strip_image_markers, user_turn
from .captions import CAPTION_PROMPT, caption
from .corpus import scene_document, word_problem
from .questions import generate_questions
from .render import render_scene
from .scene import SPLIT_BUCKETS, Scene, WorldConfig, make_config, sample_scene, split_of

MAX_ATTEMPTS_PER_SCENE = 1000  # a world too small to fill a split fails loudly instead of looping


def split_scenes(seed: int, split: str, cfg: WorldConfig) -> Iterator[tuple[Scene, random.Random]]:
    """Scenes of `split` in a fixed order, each with its RNG (still used afterwards for its questions)."""
    attempt, found = 0, 0
    while True:
        rng = random.Random(f"nativevlm-world:{seed}:{attempt}")
        scene = sample_scene(rng, cfg)
        attempt += 1
        if split_of(scene) == split:
            found += 1
            yield scene, rng
        elif attempt > MAX_ATTEMPTS_PER_SCENE * (found + 1):
            raise ConfigError(f"the world config yields too few {split} scenes; widen it (more objects/sides)")


def conversation(record_id: str, image: str, prompt: str, answer: str, meta: dict) -> dict:
    return {
        "id": record_id,
        "image": image,
        "conversations": [{"from": "human", "value": user_turn(prompt, 1)}, {"from": "gpt", "value": answer}],
        "meta": meta,
    }


def chat_record(scene_id: str, image: str, qa_records: list[dict]) -> dict:
    """All of a scene's questions as one multi-turn conversation: the image is encoded once for every
    answer. The caption is left out on purpose: a question after it could be answered from its text
    instead of from the image."""
    turns = []
    for k, r in enumerate(qa_records):
        human, gpt = r["conversations"]
        turns += [{"from": "human", "value": human["value"] if k == 0 else strip_image_markers(human["value"])},
                  gpt]
    meta = {"family": "chat", "kind": "mixed", "scene_id": scene_id,
            "families": [r["meta"]["family"] for r in qa_records]}
    return {"id": f"{scene_id}_chat", "image": image, "conversations": turns, "meta": meta}


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False))  # dumps uses the C encoder; dump streams in Python


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def scene_records(scene: Scene, rng: random.Random, cfg: WorldConfig, scene_id: str, image: str):
    """Everything said about one scene: QA records, its caption record, its text-corpus documents."""
    qas = generate_questions(scene, rng, cfg)
    text = caption(scene)
    qa_records = [conversation(f"{scene_id}_q{j}", image, qa.question, qa.answer, qa.meta(scene_id))
                  for j, qa in enumerate(qas)]
    caption_meta = {"family": "caption", "kind": "perception", "answer": text, "scene_id": scene_id}
    caption_record = conversation(f"{scene_id}_caption", image, CAPTION_PROMPT, text, caption_meta)
    return qa_records, caption_record, [scene_document(text, qas), word_problem(rng, cfg)]


def generate_world(out_dir: str, n: int, seed: int = 0, split: str = "train", preset: str = "basic",
                   progress: bool = True, **overrides) -> dict:
    """Generate `n` scenes of `split` under `out_dir`; `overrides` replace preset fields (see WorldConfig).

    Returns counts of what was written.
    """
    if split not in SPLIT_BUCKETS:
        raise ConfigError(f"unknown split {split!r}; choose from {sorted(SPLIT_BUCKETS)}")
    cfg = make_config(preset, **overrides)
    os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
    qa_records, chat_records, caption_records, scene_lines, text_lines = [], [], [], [], []
    scenes = split_scenes(seed, split, cfg)
    for index in tqdm(range(n), desc=f"world {split}", unit="scene", disable=not progress):
        scene, rng = next(scenes)
        scene_id = f"{split}_{index:06d}"
        image = f"images/{split}/{scene_id}.png"
        render_scene(scene).save(os.path.join(out_dir, image), format="PNG")
        qas, caption_record, documents = scene_records(scene, rng, cfg, scene_id, image)
        qa_records += qas
        chat_records.append(chat_record(scene_id, image, qas))
        caption_records.append(caption_record)
        scene_lines.append(json.dumps({"id": scene_id, "split": split, **scene.to_dict()}, sort_keys=True))
        text_lines += documents
    _write_json(os.path.join(out_dir, f"{split}.json"), qa_records)
    _write_json(os.path.join(out_dir, f"{split}_chat.json"), chat_records)
    _write_json(os.path.join(out_dir, f"{split}_captions.json"), caption_records)
    reason, _ = reasoner_records(qa_records, descriptions_by_image(caption_records))  # every scene has its caption
    _write_json(os.path.join(out_dir, f"{split}_reason.json"), reason)
    _write_lines(os.path.join(out_dir, f"{split}_scenes.jsonl"), scene_lines)
    _write_lines(os.path.join(out_dir, f"{split}_text.txt"), text_lines)
    _write_json(os.path.join(out_dir, f"{split}_config.json"),
                {"preset": preset, "seed": seed, "n": n, "split": split, "config": asdict(cfg)})
    return {"scenes": n, "qa": len(qa_records), "text_documents": len(text_lines)}
