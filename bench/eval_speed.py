"""Evaluation through the serving engine against the naive greedy loop it replaced, on the quickstart's
questions and model size: the 240 val questions of a learning-curve point and the 1,200 test questions of the
final table, batches of 64, at most 8 new tokens. Rounds alternate between the two paths in one process, so a
machine whose speed drifts affects both alike; every round checks that both give the same answers.

    python bench/eval_speed.py [--work runs/eval_speed] [--rounds 3]

The old path is what `eval/local.py` ran before evaluation moved onto the engine: the prompts of a batch
left-padded into one tensor and decoded step by step through the model's static KV cache until every row
ends (`tests/reference.py`, `use_cache=True`). The model is the quickstart's native VLM, randomly
initialised (speed and agreement don't need a trained one; a random model rarely says end-of-turn, so each
answer runs to the 8-token cap: the slowest case). Writes bench/results/eval_speed.json.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from reference import generate  # noqa: E402

from nativevlm.data.collate import encode_sample, left_pad  # noqa: E402
from nativevlm.data.image import ImageProcessor  # noqa: E402
from nativevlm.data.sample import Sample, user_turn  # noqa: E402
from nativevlm.data.tokenizer import Tokenizer  # noqa: E402
from nativevlm.data.world import generate_world  # noqa: E402
from nativevlm.data.world.corpus import tokenizer_texts  # noqa: E402
from nativevlm.eval.benchmarks import Benchmark, llava_qa  # noqa: E402
from nativevlm.eval.harness import evaluate  # noqa: E402
from nativevlm.eval.local import LocalAnswerer  # noqa: E402
from nativevlm.model.hub import save_language_model  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe  # noqa: E402
from nativevlm.train.export import build_model  # noqa: E402

BATCH, NEW_TOKENS = 64, 8


def reference_answers(model, tok, proc, bench: Benchmark) -> list[str]:
    """The old path: one left-padded batch of 64 prompts at a time through the naive cached loop."""
    answers = []
    for start in range(0, len(bench.items), BATCH):
        encoded = [encode_sample(Sample(item.id, [{"role": "user", "content": user_turn(item.prompt(), 1)}],
                                        list(item.images)), tok, proc, add_generation_prompt=True)
                   for item in bench.items[start:start + BATCH]]
        ids, mask = left_pad([e.input_ids for e in encoded], tok.pad_id)
        out = generate(model, ids, mask, [p for e in encoded for p in e.pixel_values], NEW_TOKENS, tok.eos_id,
                       use_cache=True)
        answers += [tok.decode([t for t in row if t != tok.eos_id]).strip() for row in out.tolist()]
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/eval_speed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "eval_speed.json"))
    args = ap.parse_args()
    work = Path(args.work)
    world = work / "data" / "world"  # where the shipped recipes' paths point, relocated into --work
    for split, n in (("train", 200), ("val", 60), ("test", 300)):  # 4 questions a scene: 240 val and 1,200 test
        if not (world / f"{split}.json").is_file():
            generate_world(str(world), n, seed=0, split=split, preset="basic", progress=False)
    tok = Tokenizer.train(tokenizer_texts(world), vocab_size=1024)
    tok.save(work / "data" / "tokenizer")
    torch.manual_seed(0)
    text_lm = load_shipped_recipe("text-lm", work)
    # the quickstart's text LM, untrained, where its native recipe grows it from
    save_language_model(build_model(text_lm, tok), work / "runs" / "text-lm" / "final")
    model = build_model(load_shipped_recipe("native", work), tok).eval()  # grown into its native VLM
    proc = ImageProcessor.from_config(model.config.vision, model.config.connector)
    benches = {"curve point (240 val)": llava_qa.read(world / "val.json"),
               "final table (1,200 test)": llava_qa.read(world / "test.json")}
    seconds = {name: {"naive loop (before)": 0.0, "engine (after)": 0.0} for name in benches}
    for _ in range(args.rounds):
        for name, bench in benches.items():
            t0 = time.perf_counter()
            before = reference_answers(model, tok, proc, bench)
            seconds[name]["naive loop (before)"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            after = [r["prediction"] for r in evaluate(bench, LocalAnswerer(model, tok, BATCH, NEW_TOKENS)).records]
            seconds[name]["engine (after)"] += time.perf_counter() - t0
            assert after == before, "the engine and the naive loop answered differently"
    result = {
        "command": "python bench/eval_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32",
        "rounds": args.rounds, "answers_identical": True,
        "seconds_per_evaluation": {n: {k: v / args.rounds for k, v in s.items()} for n, s in seconds.items()},
        "engine_speedup": {n: s["naive loop (before)"] / s["engine (after)"] for n, s in seconds.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
