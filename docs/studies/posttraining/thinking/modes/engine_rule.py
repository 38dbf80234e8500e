"""Thinking-mode accuracy of this study's models with the engine of another commit (the README's "same weights,
before and after the engine's rule"): run with that commit's package first on the path, e.g.

    git worktree add /tmp/before d449d57
    PYTHONPATH=/tmp/before python docs/studies/posttraining/thinking/modes/engine_rule.py \
        --work QUICKSTART/thinking-bench --out docs/studies/posttraining/thinking/modes/engine_rule_d449d57.json

Each model answers the 1,200 test questions as bench/thinking.py asks them in thinking mode (greedy, budget 48,
64 new tokens at most); the JSON holds the bench's summary of each, and which package ran.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import nativevlm
from nativevlm.data.tokenizer import Tokenizer
from nativevlm.eval.benchmarks import load_benchmark
from nativevlm.eval.harness import evaluate
from nativevlm.eval.local import LocalAnswerer
from nativevlm.model.loading import load_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "bench"))
from thinking import summary  # noqa: E402

MODELS = ["fused", "fused+200", "gspo300-think-strict-from-fused+200-s0", "gspo300-think-strict-from-fused+200-s1",
          "gspo300-think-direct0.5-strict-from-fused+200-s0", "gspo300-think-direct0.5-strict-from-fused+200-s1",
          "fused+200+300"]

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--work", required=True, help="bench/thinking.py's work folder (<quickstart>/thinking-bench)")
ap.add_argument("--out", required=True)
ap.add_argument("--budget", type=int, default=48)
args = ap.parse_args()
work = Path(args.work)
package = Path(nativevlm.__file__).resolve().parents[1]
commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
tok = Tokenizer.load(work / "data" / "tokenizer")
bench = load_benchmark(f"world:{work / 'data' / 'world'}")
items = {item.id: item for item in bench.items}
results = {}
for name in MODELS:
    model = load_pretrained(work / "runs" / name / "final")
    results[name] = summary(evaluate(bench, LocalAnswerer(model, tok, 64, 8 + args.budget + 8, True, args.budget)),
                            items)
    print(f"{name:50s} think=True {results[name]['accuracy']:.1%} (parse failures "
          f"{results[name]['parse_failure_rate']:.1%})", flush=True)
Path(args.out).write_text(json.dumps({"commit": commit, "questions": len(bench.items),
                                      "budget": args.budget, "think=True": results}, indent=1) + "\n")
