"""The whole pipeline, tiny, on the built-in world: the README's main job (`nativevlm quickstart`).

1. generate the visual world (train / val / test splits that share no scene);
2. train a byte-level BPE tokenizer on its text;
3. pre-train a small text LM on the world's text corpus (`recipes/text-lm.yaml`), our stand-in for a
   pretrained LLM;
4. grow it into a native VLM and train it through NaViL's staged recipe (`recipes/native.yaml`);
5. evaluate on the held-out test split: accuracy per task family, perception vs reasoning.

The shipped recipes are used as they are, with their data paths pointed into the run folder and the sizes
and step counts scaled to a 2-core CPU (`SCALE` below: the only place the quickstart departs from them).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import read_yaml
from .data.formats import read_samples
from .data.image import ImageProcessor
from .data.tokenizer import Tokenizer
from .data.world import generate_world
from .data.world.corpus import tokenizer_texts
from .eval.curves import hooks_for
from .eval.world import evaluate_qa
from .model.loading import load_pretrained
from .train.recipe import recipe_from_dict, relocate_paths, stage_steps
from .train.trainer import samples_seen, train


RECIPES = Path(__file__).parent / "recipes"

# Sizes and steps for about 10 minutes on 2 CPU cores. The from-scratch text LM uses q/k-norm (as Qwen3
# does): without it, learning rates high enough to learn in minutes collapse the image pathway.
SCALE = {
    "text-lm": [
        "model.language.hidden_size=192", "model.language.num_layers=4", "model.language.num_heads=3",
        "model.language.num_kv_heads=1", "model.language.intermediate_size=512", "model.language.qk_norm=true",
        "model.language.max_position_embeddings=512", "max_length=192",
        "stages.0.steps=250", "stages.0.batch_size=32", "stages.0.lr=2e-3", "stages.0.warmup_steps=20",
        "stages.0.eval_every=0", "stages.0.eval_samples=64",
    ],
    "native": [
        "model.vision.hidden_size=128", "model.vision.num_layers=2", "model.vision.num_heads=4",
        "model.vision.intermediate_size=352", "model.vision.max_patches=64", "max_length=320",
        "stages.0.steps=250", "stages.0.batch_size=16", "stages.0.lr=3e-3", "stages.0.eval_every=0",
        "stages.1.steps=100", "stages.1.batch_size=16", "stages.1.lr=2e-3", "stages.1.eval_every=0",
        "stages.2.steps=1000", "stages.2.batch_size=16", "stages.2.lr=1.5e-3", "stages.2.eval_every=0",
        "stages.0.eval_samples=32", "stages.1.eval_samples=32", "stages.2.eval_samples=32",
        "checkpoint_every=500", "curves.every=250", "curves.samples=160",
    ],
}


def load_shipped_recipe(name: str, root: Path, extra: list[str] = ()):
    data = read_yaml(RECIPES / f"{name}.yaml", "recipe")
    return recipe_from_dict(relocate_paths(data, root), SCALE.get(name, []) + list(extra))


def banner(step: int, total: int, text: str) -> None:
    print(f"\n\033[1m[{step}/{total}] {text}\033[0m", flush=True)


def prepare(out: Path, train_scenes: int = 4000, test_scenes: int = 300, seed: int = 0,
            text_lm_overrides: list[str] = (), lap=lambda name: None):
    """Steps 1-3 into `out`: the world, the tokenizer and the pretrained text LM (what every native VLM run
    of the quickstart, and the learnability study, starts from). Returns the tokenizer."""
    out = Path(out)
    world = out / "data" / "world"
    banner(1, 5, f"Generating the visual world ({train_scenes} train scenes, basic preset) in {world}")
    for split, n in (("train", train_scenes), ("val", 200), ("test", test_scenes)):
        generate_world(str(world), n, seed=seed, split=split, preset="basic")
    lap("world")

    banner(2, 5, "Training a byte-level BPE tokenizer on the world's text")
    tokenizer = Tokenizer.train(tokenizer_texts(world), vocab_size=1024)
    tokenizer.save(out / "data" / "tokenizer")
    print(f"vocabulary: {tokenizer.vocab_size} tokens -> {out / 'data' / 'tokenizer'}")
    lap("tokenizer")

    banner(3, 5, "Pre-training the text LM (recipes/text-lm.yaml): our stand-in for a pretrained LLM")
    train(load_shipped_recipe("text-lm", out, text_lm_overrides), out / "runs" / "text-lm")
    lap("text_lm")
    return tokenizer


def quickstart(out: Path, train_scenes: int = 4000, test_scenes: int = 300, seed: int = 0,
               text_lm_overrides: list[str] = (), native_overrides: list[str] = ()) -> dict:
    """Run the five steps into `out`; the overrides go after `SCALE` (e.g. `stages.2.steps=2000`)."""
    out = Path(out)
    world, t0, timings = out / "data" / "world", time.time(), {}

    def lap(name: str) -> None:
        timings[name] = time.time() - t0 - sum(timings.values())

    tokenizer = prepare(out, train_scenes, test_scenes, seed, text_lm_overrides, lap)

    banner(4, 5, "Training the native VLM (recipes/native.yaml): S1.1 vision side, S1.2 + text attention, S2 all")
    native = load_shipped_recipe("native", out, native_overrides)
    result = train(native, out / "runs" / "native", hooks=hooks_for(native))
    lap("native_vlm")

    banner(5, 5, f"Evaluating on the held-out test split ({test_scenes} scenes, never seen in training)")
    model = load_pretrained(result.final)
    processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
    test, _ = read_samples(world / "test.json")
    evaluation = evaluate_qa(model, tokenizer, processor, test, batch_size=64)
    lap("evaluate")

    seen = samples_seen(native.stages, len(native.stages) - 1, stage_steps(native.stages[-1]))
    throughput = {"native_samples": seen, "native_samples_per_s": seen / timings["native_vlm"]}
    report = write_report(out, evaluation, timings, result.final, throughput)
    print("\n" + evaluation.table())
    print("\nSample answers:")
    for r in report["samples"]:
        mark = "ok " if r["correct"] else "MISS"
        print(f"  [{mark}] {r['question']!r} -> {r['prediction']!r} (reference {r['reference']!r})  {r['image']}")
    total = sum(timings.values())
    print(f"\nNative VLM: {throughput['native_samples']} training samples at {throughput['native_samples_per_s']:.1f} "
          "samples/s (learning-curve evaluations included)")
    print(f"\nDone in {total / 60:.1f} min. Model: {result.final}   Report: {out / 'report.md'}")
    print(f"Ask it yourself:   nativevlm ask {result.final} --image {report['samples'][0]['image']} "
          f"\"How many objects are there?\"")
    print(f"Inspect it:        nativevlm info {result.final}")
    print(f"Learning curves:   {result.out_dir / 'curves.png'} (accuracy per family against samples seen)")
    print(f"Training curves:   tensorboard --logdir {out / 'runs'}")
    return report


def write_report(out: Path, evaluation, timings: dict, final: Path, throughput: dict) -> dict:
    """report.md + eval.json in the run folder: the table, timings and three sample answers."""
    picks = []
    for family in ("color", "count", "arithmetic"):
        picks += [r for r in evaluation.records if r["family"] == family][:1]
    world = out / "data" / "world"
    samples = []
    for r in picks:
        scene = r["id"].rsplit("_q", 1)[0]
        samples.append({**r, "image": str(world / "images" / "test" / f"{scene}.png")})
    report = {"summary": evaluation.summary(), "timings_s": timings, "throughput": throughput, "model": str(final),
              "samples": samples}
    (out / "eval.json").write_text(json.dumps({**report, "records": evaluation.records}, indent=1) + "\n")
    lines = ["# nativevlm quickstart", "", f"Model: `{final}`", "", "```", evaluation.table(), "```", "",
             "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| total | {sum(timings.values()):.0f} |", "",
              f"Native VLM training: {throughput['native_samples']} samples, "
              f"{throughput['native_samples_per_s']:.1f} samples/s (learning-curve evaluations included).", "",
              f"![learning curves]({(Path(final).parent / 'curves.png').resolve()})", "", "## Sample answers", ""]
    for s in samples:
        lines.append(f"- ![]({Path(s['image']).resolve()}) {s['question']!r} -> **{s['prediction']}** "
                     f"(reference {s['reference']}, {'correct' if s['correct'] else 'wrong'})")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return report
