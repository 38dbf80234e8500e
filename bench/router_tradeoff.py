"""Visual tokens against accuracy with the visual resolution router (ViR), on the built-in world's held-out
test split, for a small model trained here.

    nice -n 10 python bench/router_tradeoff.py [--out bench/results/router] [--work runs/router-tradeoff]

1. The quickstart's world, tokenizer and text LM (`quickstart.prepare`, its sizes and steps).
2. A native VLM by the quickstart's recipe and sizes (its last stage 500 steps instead of 1000), with
   regions of 4x4 patches (64 px: 2x2 world cells) and both rates (`connector.extra_downsample: 4`): it
   trains at 1/4 only, as a model before ViCO does.
3. ViCO on it (`recipes/vico.yaml`, steps scaled like the quickstart's): consistency, then the router.
4. Each point of the curve answers every test question (greedy, the serving engine, `eval.local`) and counts
   the <img> tokens the prompts spent: the model before ViCO at 1/4 (the uncompressed reference), the ViCO
   model at 1/4, the ViCO model with its router at several relative thresholds (batch mode, as released,
   absolute threshold 0), the same thresholds with a router that draws its probabilities at random (the
   same number of tokens, chosen without looking), and nearly every region at 1/16.

Writes `<out>/tradeoff.json` (every point: tokens per image, accuracy per family, seconds) and
`<out>/tradeoff.png`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nativevlm.eval.benchmarks import load_benchmark  # noqa: E402
from nativevlm.eval.harness import evaluate  # noqa: E402
from nativevlm.eval.local import LocalAnswerer  # noqa: E402
from nativevlm.model.loading import load_pretrained  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe, prepare  # noqa: E402
from nativevlm.train.trainer import train  # noqa: E402

# The quickstart's native VLM with regions and both rates, its last stage shortened to fit the CPU budget.
NATIVE = ["model.connector.extra_downsample=4", "model.connector.region_size=4", "stages.2.steps=500"]
VICO = ["stages.0.steps=150", "stages.0.batch_size=16", "stages.0.lr=3e-4", "stages.1.steps=80",
        "stages.1.batch_size=16", "stages.1.lr=1e-3", "max_length=320", "checkpoint_every=500"]
THRESHOLDS = (0.25, 0.5, 0.75)
SMOKE = {"text-lm": ["stages.0.steps=2"], "native": [f"stages.{i}.steps=2" for i in range(3)],
         "vico": ["stages.0.steps=2", "stages.1.steps=2"]}


class RandomRouter(nn.Module):
    """The baseline: compress-probabilities drawn at random, so the decision rule compresses as many regions
    as the trained router at the same relative threshold, chosen without looking at them."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, regions) -> torch.Tensor:
        return torch.rand(len(regions), generator=self.generator)


class Counting:
    """An answerer that adds up the visual tokens of the replies it passes on."""

    def __init__(self, answerer):
        self.answerer, self.chunk_size, self.tokens, self.images = answerer, answerer.chunk_size, 0, 0

    def __call__(self, requests):
        replies = self.answerer(requests)
        self.tokens += sum(r.visual_tokens for r in replies)
        self.images += sum(len(r.images) for r in requests)
        return replies


def measure(name: str, model, tokenizer, bench, log) -> dict:
    t0 = time.perf_counter()
    answerer = Counting(LocalAnswerer(model, tokenizer, batch_size=64, max_new_tokens=8))
    summary = evaluate(bench, answerer).summary()
    point = {"name": name, "tokens_per_image": answerer.tokens / answerer.images, "accuracy": summary["accuracy"],
             "by_category": {k: v["accuracy"] for k, v in summary["by_category"].items()}, "n": summary["n"],
             "seconds": time.perf_counter() - t0}
    log(f"{name:28s} {point['tokens_per_image']:6.2f} tokens/image  accuracy {point['accuracy']:.3f}")
    return point


def with_router(model, router, relative: float):
    model.router = router
    model.config = dataclasses.replace(model.config, router=dataclasses.replace(
        model.config.router, relative_threshold=relative, absolute_threshold=0.0, mode="batch"))
    return model


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = next(p for p in points if p["name"] == "before ViCO, all 1/4")
    for prefix, style, label in (("router q=", "o-", "trained router"), ("random q=", "s--", "random router")):
        pts = sorted([p for p in points if p["name"].startswith(prefix)], key=lambda p: p["tokens_per_image"])
        ax.plot([p["tokens_per_image"] for p in pts], [p["accuracy"] for p in pts], style, label=label)
        for p in pts:
            ax.annotate(p["name"].split()[-1], (p["tokens_per_image"], p["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    for p, marker in ((ref, "*"), (next(p for p in points if p["name"] == "ViCO, all 1/4"), "D"),
                      (next(p for p in points if p["name"] == "ViCO, nearly all 1/16"), "v")):
        ax.plot([p["tokens_per_image"]], [p["accuracy"]], marker, markersize=10, label=p["name"])
    ax.axhline(0.99 * ref["accuracy"], color="grey", lw=0.8, ls=":", label="99% of before ViCO")
    ax.axvline(0.6 * ref["tokens_per_image"], color="grey", lw=0.8, ls="-.", label="40% fewer tokens")
    ax.set_xlabel("visual tokens per image (<img> slots)")
    ax.set_ylabel("accuracy, world test split")
    ax.set_title("Visual resolution router: tokens vs accuracy (q = relative threshold)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/router")
    ap.add_argument("--work", default="runs/router-tradeoff")
    ap.add_argument("--train-scenes", type=int, default=4000)
    ap.add_argument("--test-scenes", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="a few steps of everything: checks the script end to end")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    smoke = SMOKE if args.smoke else {"text-lm": [], "native": [], "vico": []}
    out.mkdir(parents=True, exist_ok=True)
    t0, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        seconds[name] = time.perf_counter() - t0 - sum(seconds.values())

    tokenizer = prepare(work, args.train_scenes, args.test_scenes, text_lm_overrides=smoke["text-lm"], lap=lap)
    native = load_shipped_recipe("native", work, NATIVE + smoke["native"])
    base = train(native, work / "runs" / "native").final
    lap("native_vlm")
    vico = load_shipped_recipe("vico", work, [f"init.path={base}", *VICO, *smoke["vico"]])
    final = train(vico, work / "runs" / "vico").final
    lap("vico")

    bench = load_benchmark(f"world:{work / 'data' / 'world'}")
    points = [measure("before ViCO, all 1/4", load_pretrained(base), tokenizer, bench, print)]
    model = load_pretrained(final)
    trained = model.router
    points.append(measure("ViCO, all 1/4", with_router(model, None, 0.5), tokenizer, bench, print))
    for q in THRESHOLDS:
        points.append(measure(f"router q={q}", with_router(model, trained, q), tokenizer, bench, print))
        points.append(measure(f"random q={q}", with_router(model, RandomRouter(), q), tokenizer, bench, print))
    points.append(measure("ViCO, nearly all 1/16", with_router(model, RandomRouter(), 0.0), tokenizer, bench, print))
    lap("evaluate")

    ref = points[0]
    for p in points:
        p["tokens_vs_reference"] = p["tokens_per_image"] / ref["tokens_per_image"]
        p["accuracy_vs_reference"] = p["accuracy"] / ref["accuracy"] if ref["accuracy"] else None
    result = {"command": "nice -n 10 python bench/router_tradeoff.py", "machine": platform.platform(),
              "threads": torch.get_num_threads(), "seconds": seconds, "total_minutes": sum(seconds.values()) / 60,
              "test_questions": ref["n"], "points": points}
    (out / "tradeoff.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(points, out / "tradeoff.png")
    print(f"done in {result['total_minutes']:.1f} min -> {out / 'tradeoff.json'}, {out / 'tradeoff.png'}")


if __name__ == "__main__":
    main()
