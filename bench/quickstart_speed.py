"""Training samples/s of the quickstart's native VLM, with and without the cell loss (the
word-aligned cell loss, whose labels are read from the pixels of every batch), measured in the same run:
rounds of optimizer steps on the S2 data alternate between the two, so a machine whose speed drifts
affects both alike. The learning-curve evaluations are timed on their own (they run every 250 steps).

    python bench/quickstart_speed.py --quickstart runs/quickstart [--steps 15] [--rounds 3]

`--quickstart` is a finished `nativevlm quickstart --out` folder (its world, tokenizer and text LM are
reused). Writes bench/results/quickstart_speed.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nativevlm.data.collate import Collator  # noqa: E402
from nativevlm.data.image import ImageProcessor  # noqa: E402
from nativevlm.eval.curves import LearningCurves  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe  # noqa: E402
from nativevlm.train.data import StageData  # noqa: E402
from nativevlm.train.export import build_model, load_tokenizer  # noqa: E402
from nativevlm.train.optim import build_optimizer  # noqa: E402
from nativevlm.train.objectives import StageContext, build as build_objectives  # noqa: E402
from nativevlm.train.step import train_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quickstart", default="runs/quickstart")
    ap.add_argument("--steps", type=int, default=15, help="optimizer steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quickstart_speed.json"))
    args = ap.parse_args()
    root = Path(args.quickstart)
    cfg = load_shipped_recipe("native", root)
    stage = cfg.stages[2]  # S2, the longest stage: QA chats, captions and text, everything trains
    tokenizer = load_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    collator = Collator(tokenizer, ImageProcessor.from_config(model.config.vision, model.config.connector),
                        cfg.max_length)
    data = StageData(stage, collator, seed="bench")
    optimizer = build_optimizer(model, stage)
    params = [p for p in model.parameters() if p.requires_grad]
    variants = {"without cell loss (before)": build_objectives([{"name": "sft"}], "sft"),
                "word-aligned cell loss (after)": build_objectives([{"name": "sft"}, {"name": "cells", "target": "words"}],
                                                                   "sft and cells")}
    for objectives in variants.values():
        for o in objectives:
            o.objective.setup(StageContext(model=model, tokenizer=tokenizer, stage=stage, data=data,
                                           processor=collator.image_processor, device=torch.device("cpu")))
    seconds = {k: 0.0 for k in variants}
    samples = {k: 0 for k in variants}
    for _ in range(args.rounds):
        for name, objectives in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                batches = data.next_batches()  # loading is timed too, as in the trainer's step time
                train_step(model, batches, optimizer, params, stage.grad_clip, 1, torch.device("cpu"), False, objectives)
                seconds[name] += time.perf_counter() - t0
                samples[name] += sum(b.n_samples for b in batches)
    curves = LearningCurves(cfg)
    t0 = time.perf_counter()
    curves.evaluate(model, tokenizer)
    eval_s = time.perf_counter() - t0
    rates = {k: samples[k] / seconds[k] for k in variants}
    before, after = rates["without cell loss (before)"], rates["word-aligned cell loss (after)"]
    from nativevlm.train.recipe import stage_steps

    ends, total = [], 0
    for st in cfg.stages:
        total += stage_steps(st)
        ends.append(total)
    points = {0, *ends, *range(cfg.curves.every, total + 1, cfg.curves.every)}  # as the trainer evaluates
    n_evals = len(points)
    result = {
        "command": "python bench/quickstart_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32",
        "samples_per_s": rates, "after_over_before": after / before,
        "curve_evaluation_s": eval_s, "curve_questions": len(curves.subset),
        "curve_evaluations_per_quickstart": n_evals,
        "curve_share_of_native_vlm_time": n_evals * eval_s / (n_evals * eval_s + total * stage.batch_size / after),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
