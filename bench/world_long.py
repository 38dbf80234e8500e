"""How many samples would the world's targets take? The bring-your-own-data path and the plain peer on the
built-in world's QA with far more data and time than the learnability benchmark gives them.

    python bench/world_long.py --out bench/results/world_long --work runs/world_long \
        [--scenes 40000] [--steps 10000] [--minutes 50] [--tokenizer DIR]

The learnability benchmark's world set has 2,000 training scenes (8,000 questions) and 3,000 steps; there
both models level off within a few points of their priors but colour, so its curves say nothing about how
many samples the quickstart's targets (perception >= 90% with every perception family >= 80%, reasoning
>= 70%) would take. Here the world's train split has `--scenes` scenes (4 questions each; val and test are
the benchmark's own 200 and 300 scenes, the same questions), our native VLM trains `recipes/native-custom.yaml`
(its encoder stage as written, then `--steps` steps of 16 for the whole model, one cosine schedule over them;
learning curves on all 800 val questions every 1,000 steps) and the peer (`bench/peer.py`) for `--minutes` of
training time. To fit a 2-core machine in one sitting the two run side by side, one thread each, so
per-minute numbers are each model's on one core of a shared machine; read the samples axis to compare them.
`--tokenizer` reuses a tokenizer made by the README's commands (`nativevlm data text`, `tokenizer train
--vocab-size 1024`); without it they run on this train split. A finished run in `--work` is reused (each
keeps the command that made it).
Writes `<out>/world_long.json` (every curve point, test accuracy per family of both, priors) and
`<out>/world.png` (accuracy per family against minutes and samples seen).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from learnability import BYOD_RECIPE, cli, curve_points, plot, same_stamp, test_accuracy, world_set  # noqa: E402

ONE_THREAD = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/world_long")
    ap.add_argument("--work", default="runs/world_long")
    ap.add_argument("--scenes", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=50.0)
    ap.add_argument("--tokenizer", default="")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    data = world_set(work, a.scenes)
    tok = Path(a.tokenizer) if a.tokenizer else work / "tok"
    if not tok.exists():
        subprocess.run(cli("data", "text", str(data["train"]), "--out", str(work / "text.jsonl")), check=True,
                       env=ONE_THREAD)
        subprocess.run(cli("tokenizer", "train", str(work / "text.jsonl"), "--vocab-size", "1024", "--out", str(tok)),
                       check=True, env=ONE_THREAD)
    ours = work / "ours"
    train = cli("train", str(BYOD_RECIPE), "--out", str(ours),
                f"--set=tokenizer={tok}", f"--set=stages.0.data.0.path={data['train']}",
                f"--set=stages.1.data.0.path={data['train']}",
                f"--set=stages.1.val_data={data['val']}", f"--set=curves.data={data['val']}",
                "--set=curves.samples=800", "--set=curves.every=1000", f"--set=stages.1.steps={a.steps}",
                "--set=progress=false", "--set=stages.1.eval_every=0", "--set=checkpoint_every=2000")
    peer_json = work / "peer.json"
    peer = [sys.executable, str(ROOT / "bench" / "peer.py"), "--train", str(data["train"]), "--eval", str(data["val"]),
            "--test", str(data["test"]), "--minutes", str(a.minutes), "--image-size", "96", "--eval-every", "8192",
            "--out", str(peer_json)]
    # The recipe's text goes into the stamp too: the command names the recipe's path, not what it says.
    made_by = {"ours": train, "peer_minutes": a.minutes, "scenes": a.scenes, "recipe": BYOD_RECIPE.read_text()}
    stamp = work / "made_by.json"
    if stamp.exists() and not same_stamp(json.loads(stamp.read_text()), made_by):
        raise SystemExit(f"{work} holds runs made otherwise ({stamp}); choose another --work to rerun")
    stamp.write_text(json.dumps(made_by, indent=1))
    procs = []
    if not (ours / "final").exists():
        procs.append(subprocess.Popen(train + (["--resume"] if (ours / "checkpoints").exists() else []),
                                      env=ONE_THREAD, stdout=open(work / "ours.log", "a"), stderr=subprocess.STDOUT))
    if not peer_json.exists():
        procs.append(subprocess.Popen(peer, env=ONE_THREAD, stdout=open(work / "peer.log", "a"),
                                      stderr=subprocess.STDOUT))
    for p in procs:
        if p.wait():
            raise SystemExit(f"{' '.join(p.args)} failed (exit {p.returncode}); see the logs in {work}")
    if not (work / "ours_eval" / "results.json").exists():
        subprocess.run(cli("eval", str(ours / "final"), "--bench", f"llava:{data['test']}", "--out",
                           str(work / "ours_eval")), check=True, env=ONE_THREAD)
    peer_result = json.loads(peer_json.read_text())
    peer_result.pop("test_answers", None)  # every test answer: in peer.json, not in the committed summary
    entry = {"arms": {"byod": {"arm": "byod", "curve": curve_points(ours / "metrics.jsonl"),
                               "test": test_accuracy(json.loads((work / "ours_eval" / "results.json").read_text()))}},
             "peer": peer_result, "priors": peer_result["priors"], "test_questions": peer_result["test_questions"],
             "settings": {"scenes": a.scenes, "steps": a.steps, "batch": 16, "peer_minutes": a.minutes,
                          "tokenizer": str(tok), "threads_each": 1, "side_by_side": True}}
    (out / "world_long.json").write_text(json.dumps({"world": entry}, indent=1) + "\n")
    plot("world (long)", entry, out / "world.png")
    line = lambda acc: ", ".join(f"{k[4:]} {v:.1%}" for k, v in sorted(acc.items()))  # noqa: E731
    print(f"test  peer: {line(peer_result['test'])}")
    print(f"test  byod: {line(entry['arms']['byod']['test'])}")


if __name__ == "__main__":
    main()
