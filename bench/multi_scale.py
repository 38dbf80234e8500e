"""NaViL multi-scale packing at inference, measured: a trained native VLM answers the world's held-out test
split with each image at 1, 2, ... scales (tau = sqrt(2)/2 per step, coarse to fine, each scale its own
image block). The model was trained on one scale per image; the question is what the extra, coarser views
add or cost at inference, and how many visual tokens they take.

    python bench/multi_scale.py --run runs/quickstart [--scales 1 2 3] [--out bench/results/multi_scale.json]

`--run` is a quickstart folder (runs/native/final, data/tokenizer, data/world). Writes the JSON: per number
of scales, accuracy overall and per kind, and the mean visual tokens per question.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nativevlm.data.tokenizer import Tokenizer
from nativevlm.eval.benchmarks import load_benchmark
from nativevlm.eval.benchmarks.base import open_image
from nativevlm.eval.harness import evaluate
from nativevlm.eval.local import LocalAnswerer
from nativevlm.model.connector import token_grid
from nativevlm.model.loading import load_pretrained


def visual_tokens(answerer: LocalAnswerer, bench) -> float:
    """Mean <img> tokens per question at the answerer's processor settings."""
    p = answerer.processor
    total = 0
    for item in bench.items:
        for ref in item.images:
            for views in p.segments(open_image(ref)):
                total += sum(r * c for r, c in (token_grid(*v.shape[-2:], p.patch_size, p.downsample) for v in views))
    return total / len(bench.items)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a quickstart output folder")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", default="bench/results/multi_scale.json")
    args = ap.parse_args()
    run = Path(args.run)
    model = load_pretrained(run / "runs" / "native" / "final")
    tokenizer = Tokenizer.load(run / "data" / "tokenizer")
    bench = load_benchmark(f"world:{run / 'data' / 'world'}")
    rows = []
    for scales in args.scales:
        model.config.vision.scales = scales
        answerer = LocalAnswerer(model, tokenizer, 64, max_new_tokens=8)
        summary = evaluate(bench, answerer).summary()
        rows.append({"scales": scales, "visual_tokens_per_question": visual_tokens(answerer, bench),
                     "accuracy": summary["accuracy"],
                     "by_kind": {k: g["accuracy"] for k, g in summary["by_kind"].items() if k},
                     "by_category": {k: g["accuracy"] for k, g in summary["by_category"].items()}})
        r = rows[-1]
        print(f"scales {scales}: {r['visual_tokens_per_question']:.1f} visual tokens/question, accuracy "
              f"{r['accuracy']:.1%} ({', '.join(f'{k} {v:.1%}' for k, v in r['by_kind'].items())})", flush=True)
    result = {"what": "world test split, greedy answers of the quickstart's native VLM (trained at one scale)",
              "command": f"python bench/multi_scale.py --run {args.run} --scales {' '.join(map(str, args.scales))}",
              "questions": len(bench.items), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
