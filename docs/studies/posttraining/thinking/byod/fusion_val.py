"""How the think-fusion settings of this study were chosen: one think-fusion run from the SFT model (trained
as `bench/thinking.py --sft` trains `fused`), then scored on the world's VAL split (800 questions), answering
directly and thinking (budget 48). Writes OUT/NAME/ (the run) and OUT/NAME.json.

    python docs/studies/posttraining/thinking/byod/fusion_val.py WORK OUT NAME STEPS LR [KEY=VALUE ...]

WORK is a `bench/thinking.py --sft ... --work WORK` folder (its data/ and runs/native links); KEY=VALUE are
more overrides of recipes/think-fusion.yaml (the `--fusion-set` values)."""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[5]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import thinking  # noqa: E402
from nativevlm.data.tokenizer import Tokenizer  # noqa: E402
from nativevlm.eval.benchmarks import load_benchmark  # noqa: E402
from nativevlm.eval.harness import evaluate  # noqa: E402
from nativevlm.eval.local import LocalAnswerer  # noqa: E402
from nativevlm.model.loading import load_pretrained  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe  # noqa: E402
from nativevlm.train.trainer import train  # noqa: E402

if len(sys.argv) < 6:
    sys.exit(__doc__)
work, out_root, name, steps, lr, extra = (Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                          sys.argv[5], sys.argv[6:])
world = work / "data" / "world"
out = out_root / name
overrides = thinking.fusion_overrides(float(lr), world, extra) + [f"stages.0.steps={steps}", "stages.0.warmup_steps=10"]
t0 = time.time()
if not (out / "final").is_dir():
    train(load_shipped_recipe("think-fusion", work, overrides), out)
result = {"overrides": overrides, "train_seconds": round(time.time() - t0)}
tok = Tokenizer.load(work / "data" / "tokenizer")
bench = load_benchmark(f"llava:{world / 'val.json'}")
model = load_pretrained(out / "final")
for mode, answerer in (("direct", LocalAnswerer(model, tok, 64, 8, think=False)),
                       ("think", LocalAnswerer(model, tok, 64, 64, True, 48))):
    s = evaluate(bench, answerer).summary()
    result[mode] = {"acc": s["accuracy"], "pf": s["parse_failure_rate"],
                    "by_kind": {k: g["accuracy"] for k, g in s["by_kind"].items()},
                    "by_family": {k: round(g["accuracy"], 3) for k, g in s["by_category"].items()}}
    print(name, mode, f"{s['accuracy']:.1%} parse failures {s['parse_failure_rate']:.1%}", flush=True)
(out_root / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
