"""Learnability benchmark: does the shipped bring-your-own-data path learn to see as fast as a plain
from-scratch model trained on the same data in the same run?

    python bench/learnability.py --out bench/results/learnability [--sets solo glyphs multi world] \
        [--arms byod] [--vlm-steps 1000] [--seed 1]

For each image-QA set (`bench/qa_sets.py`: three generated sets that share nothing with the built-in world,
and the world's own QA), each arm runs the README's "Bring your own data" commands as a user would
(`nativevlm data text`, `tokenizer train`, `train recipes/native-custom.yaml`, `eval --bench llava:test.json`),
with learning curves on the set's val split. Then the plain peer (`bench/peer.py`) trains on the same train
split for as many training seconds as the arm's native VLM took (optimizer steps only, evaluation excluded,
both measured in this run), so "within the same CPU minutes" is read off one machine at one time. Writes
`<out>/learnability.json` (every curve point, test accuracy per family, answer priors, seconds) and
`<out>/<set>.png` (accuracy per family against training minutes and against samples seen, the peer beside
each arm; dashed, the answer prior of the whole val split, which the peer's curve reads; dotted, each arm's
prior over the recipe's `curves.samples` val questions that its curve reads, taken round-robin over families).
`--replot` redraws an `--out`'s plots from its JSON, adding those dotted priors to results made before they
were recorded. On a set whose records list
each image's objects (`multi`), the JSON also says, per model, how often a colour or object answer names one
of the image's objects at all (`presence`): reading which colours an image holds is not yet binding a colour
to the object a question names.

Arms are the shipped recipe changed by `--set` overrides (ARMS below): `byod` is the recipe as shipped (its
first stage trains the encoder alone on the answers, `answer_classes`; its training seconds, which the peer
is given too, include that stage's; its second stage predicts the question's words after the image too,
`question_loss: 1.0`); `no-encoder-stage` is the recipe before that stage (cut to one step) and
its convolutional stem; `sft-only` drops the recipe's answer_words objective (next-token loss alone, the
ladder's previous rung); `four-tokens` gives a 64-px image 4 tokens and image tokens the MLP's default scale,
as the recipe did before (the ladder's geometry rung); `max-pool` reads the answer words token by token
against the embeddings as they were at the start (`answer_words` `pool: max`, `table: initial`; tried on val,
not adopted: docs/learnability.md); `no-question-loss` is the recipe before its question loss (answers
alone). Results made by arms since removed (`encoder-first`, `before-qk`; `question-loss`, the recipe then
with `question_loss: 1.0` added, which is `byod` now) name the commit whose benchmark made them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from nativevlm.config import read_yaml  # noqa: E402
from peer import train_peer  # noqa: E402
from qa_sets import SETS, write_set  # noqa: E402

RECIPES = ROOT / "nativevlm" / "recipes"
BYOD_RECIPE = RECIPES / "native-custom.yaml"  # the bring-your-own-data recipe every arm trains (with overrides)


def answer_words_changed(**fields) -> str:
    """The override `stages.1.objectives=[...]`: the shipped recipe's second-stage objectives with
    answer_words' `fields` changed (None drops one). `--set` cannot add a key to a list element, so an arm
    restates the list; read from the recipe, it keeps the recipe's weight and every other field."""
    objectives = read_yaml(BYOD_RECIPE, "recipe")["stages"][1]["objectives"]
    changed = [{k: v for k, v in {**o, **fields}.items() if v is not None} if o["name"] == "answer_words" else o
               for o in objectives]
    return "stages.1.objectives=" + json.dumps(changed)


# Each arm: native-custom overrides; the README's own (the data paths) are added by run_arm. The recipe's
# stage 0 trains the encoder alone (answer_classes); stage 1 is everything.
ARMS: dict[str, list[str]] = {
    "byod": [],
    # The recipe before its encoder stage (cut to one step) and convolutional stem.
    "no-encoder-stage": ["stages.0.steps=1", "model.vision.stem=linear"],
    # The recipe before yes/no questions' words labelled the image (answer_words.question_words).
    "no-question-words": [answer_words_changed(question_words=None)],
    "sft-only": ["stages.1.objectives=[{name: sft}]"],
    # Answer words read token by token (multiple-instance: each word, or a yes question's words together,
    # from the one token that gives it most) against the embeddings as they were at the start.
    "max-pool": [answer_words_changed(pool="max", table="initial")],
    # Answer words (mean token, as shipped) against the embeddings as they were at the start: a fixed code
    # book of near-orthogonal words instead of the LM's table, whose answer words drift together as it trains.
    "table-initial": [answer_words_changed(table="initial")],
    "four-tokens": ["model.vision.min_patches=16", "model.connector.match_text_scale=false"],
    # The recipe before its question loss: next-token loss on the answers alone, not on the question's words
    # after the image.
    "no-question-loss": ["question_loss=0"],
}


def sh(args: list[str], log: Path) -> float:
    """Run a command (this package's CLI), output to `log`; returns its wall seconds; a failure stops all."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        done = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nativevlm", *args]


def curve_points(metrics: Path) -> list[dict]:
    return [r for r in map(json.loads, metrics.read_text().splitlines()) if "samples" in r]


def curve_priors(val: Path) -> dict[str, float]:
    """The answer priors of the val questions our learning curves read: the recipe's `curves.samples` of them,
    taken round-robin over families (`nativevlm.eval.curves.fixed_subset`), so not the whole split's mixture
    that the peer's val curve reads (on `multi`: yes/no 56% of the 63 such questions read, 61% of the split's)."""
    from nativevlm.eval.benchmarks import llava_qa
    from nativevlm.eval.curves import fixed_subset
    from nativevlm.eval.harness import answer_priors

    samples = read_yaml(BYOD_RECIPE, "recipe")["curves"]["samples"]
    return answer_priors(fixed_subset(llava_qa.read(val, lambda *a, **k: None).items, samples))


def run_arm(arm: str, data: dict[str, Path], work: Path, vlm_steps: int, seed: int = 0) -> dict:
    """The README's bring-your-own-data commands on this set, as written there, plus the arm's overrides."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    text, tok, vlm = work / "text.jsonl", work / "tok", work / "vlm"
    wall = {}
    sets = [f"tokenizer={tok}", f"stages.0.data.0.path={data['train']}", f"stages.1.data.0.path={data['train']}",
            f"stages.1.val_data={data['val']}", f"curves.data={data['val']}", "progress=false", *ARMS[arm]]
    if vlm_steps:
        sets.append(f"stages.1.steps={vlm_steps}")
    if seed:
        sets.append(f"seed={seed}")
    # A finished run is reused only if it was made by this recipe with these overrides (the recipe compared
    # as parsed YAML, so that an edited comment does not void a run).
    made_by = {"recipe": BYOD_RECIPE.read_text(), "sets": sets}
    stamp = work / "made_by.json"
    if stamp.exists() and not same_stamp(json.loads(stamp.read_text()), made_by):
        raise SystemExit(f"{work} holds a run of another recipe or other overrides; delete it to rerun this arm")
    if not (vlm / "final").exists():
        stamp.write_text(json.dumps(made_by))
        wall["data_text"] = sh(cli("data", "text", str(data["train"]), "--out", str(text)), log)
        wall["tokenizer"] = sh(cli("tokenizer", "train", str(text), "--vocab-size", "1024", "--out", str(tok)), log)
        wall["native_vlm"] = sh(cli("train", str(BYOD_RECIPE), "--out", str(vlm),
                                    *(f"--set={s}" for s in sets)), log)
    if not (work / "eval" / "results.json").exists():
        wall["eval"] = sh(cli("eval", str(vlm / "final"), "--bench", f"llava:{data['test']}", "--out",
                              str(work / "eval")), log)
    results = json.loads((work / "eval" / "results.json").read_text())
    out = {"arm": arm, "curve": curve_points(vlm / "metrics.jsonl"), "curve_priors": curve_priors(data["val"]),
           "wall": wall, "test": test_accuracy(results)}
    found = presence(data["test"], arm_answers(work / "eval"))
    return out | ({"presence": found} if found else {})


def same_stamp(stamped: dict, made_by: dict) -> bool:
    """Whether a run stamped `stamped` is the run `made_by` describes: every entry equal, the recipe's text
    compared once parsed (an edited comment does not void a run; a stamp without the recipe does)."""
    rest = lambda d: {k: v for k, v in d.items() if k != "recipe"}  # noqa: E731
    return ("recipe" in stamped and rest(stamped) == rest(made_by)
            and yaml.safe_load(stamped["recipe"]) == yaml.safe_load(made_by["recipe"]))


def test_accuracy(results: dict) -> dict:
    """acc/<family> of the one benchmark in an eval results.json."""
    (bench,) = results["benchmarks"].values()
    return {f"acc/{k}": v["accuracy"] for k, v in bench["by_category"].items()} | {"acc/all": bench["accuracy"]}


PRESENCE = {"colour": 0, "shape": 1}  # family -> which part of a meta.objects [colour, object] pair it names


def presence(test_path: Path, answers: list[tuple[str, str]]) -> dict:
    """Where a set's records list what each image holds (`meta.objects`, as `multi`'s do): per family that
    names one object's colour or kind, the share of answers that name one of the image's objects at all
    (`present`), the accuracy, and what picking uniformly among the image's distinct values scores
    (`uniform_present`). A model that reads which colours are in an image but not which object has which
    scores about `uniform_present`; one that binds them scores above it."""
    from nativevlm.eval.matching import normalize_answer

    records = {r["id"]: r for r in json.loads(test_path.read_text())}
    tally: dict[str, dict] = {}
    for rid, answer in answers:
        meta = records.get(rid, {}).get("meta", {})
        fam = meta.get("family")
        if fam not in PRESENCE or "objects" not in meta:
            continue
        values = {normalize_answer(o[PRESENCE[fam]]) for o in meta["objects"]}
        got, truth = normalize_answer(answer), normalize_answer(meta["answer"])
        t = tally.setdefault(fam, {"n": 0, "present": 0, "right": 0, "uniform_present": 0.0})
        t["n"] += 1
        t["present"] += got in values
        t["right"] += got == truth
        t["uniform_present"] += (truth in values) / len(values)
    return {f: {"n": t["n"], **{k: round(t[k] / t["n"], 4) for k in ("present", "right", "uniform_present")}}
            for f, t in sorted(tally.items())}


def arm_answers(eval_dir: Path) -> list[tuple[str, str]]:
    """(record id, raw answer) of every question of an eval run's one benchmark."""
    (records,) = [p for p in eval_dir.glob("*/records.jsonl") if not p.parent.name.endswith("-blank")]
    return [(r["id"], r["prediction"] or "") for r in map(json.loads, records.read_text().splitlines())]


def world_set(out: Path, train_scenes: int = 2000) -> dict[str, Path]:
    """The built-in world's QA (its train / val / test splits), as a user's LLaVA JSON would be."""
    root = out / "world"
    if not (root / "test.json").exists():
        for split, n in (("train", train_scenes), ("val", 200), ("test", 300)):
            subprocess.run(cli("data", "world", "--out", str(root), "--split", split, "--n", str(n)), check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    return {s: root / f"{s}.json" for s in ("train", "val", "test")}


def plot(set_name: str, entry: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted(k[4:] for k in entry["peer"]["final"] if k.startswith("acc/") and k != "acc/all")
    fig, axes = plt.subplots(2, len(fams), figsize=(3.2 * len(fams), 6), squeeze=False)
    runs = {"peer": entry["peer"]["curve"], **{a: r["curve"] for a, r in entry["arms"].items()}}
    for j, fam in enumerate(fams):
        for row, (xkey, xlabel) in enumerate((("train_seconds", "training minutes"), ("samples", "samples seen"))):
            ax = axes[row][j]
            for name, pts in runs.items():
                pts = [p for p in pts if f"acc/{fam}" in p]
                xs = [p[xkey] / 60 if xkey == "train_seconds" else p["samples"] for p in pts]
                (line,) = ax.plot(xs, [p[f"acc/{fam}"] for p in pts], marker=".", label=name)
                if name in entry["arms"] and "curve_priors" in entry["arms"][name]:  # the questions it reads
                    ax.axhline(entry["arms"][name]["curve_priors"].get(fam, float("nan")), color=line.get_color(),
                               ls=":", lw=1.1)
            ax.axhline(entry["priors"].get(fam, float("nan")), color="gray", ls="--", lw=0.9)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(xlabel)
            if xkey == "samples":  # 100,000 in full under each of four panels overlap
                ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:g}k" if x else "0")
            if row == 0:
                ax.set_title(fam)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{set_name}: held-out accuracy per family\nanswer prior of the val split (the peer's curve reads "
                 "it) dashed; of the val questions our curves read, dotted", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def replot(out: Path, work: Path, train: int) -> None:
    """Redraw `out`'s plots from its learnability.json, first adding each arm's `curve_priors` where a result
    made before they were recorded lacks them (every version of the recipe read 240 val questions)."""
    path = out / "learnability.json"
    results = json.loads(path.read_text())
    for name, entry in results.items():
        lacking = [r for r in entry["arms"].values() if "curve_priors" not in r]
        if lacking:  # the set's val split (written again if absent), read once for all of them
            data = world_set(work / "data") if name == "world" else write_set(
                name, work / "data", {"train": train, "val": 400, "test": 1500})
            priors = curve_priors(data["val"])
            for r in lacking:
                r["curve_priors"] = priors
        plot(name, entry, out / f"{name}.png")
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"redrew {', '.join(f'{out / n}.png' for n in results)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/learnability")
    ap.add_argument("--work", default="runs/learnability", help="data and runs (large; not committed)")
    ap.add_argument("--sets", nargs="+", default=[*SETS, "world"], choices=[*SETS, "world"])
    ap.add_argument("--arms", nargs="+", default=["byod"], choices=sorted(ARMS))
    ap.add_argument("--vlm-steps", type=int, default=0, help="native-VLM steps (0: the recipe's own)")
    ap.add_argument("--train", type=int, default=16000, help="training questions per generated set")
    ap.add_argument("--seed", type=int, default=0, help="the native VLM's and the peer's seed (data stay the same)")
    ap.add_argument("--no-peer", action="store_true",
                    help="train and evaluate the arms only (a model to start from elsewhere); nothing goes to --out")
    ap.add_argument("--replot", action="store_true",
                    help="train nothing: add what older results lack (curve_priors) to --out's JSON, redraw its plots")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    if a.replot:
        return replot(out, work, a.train)
    if not a.no_peer:
        out.mkdir(parents=True, exist_ok=True)
    result_path = out / "learnability.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    line = lambda acc: ", ".join(f"{k[4:]} {v:.1%}" for k, v in sorted(acc.items()))  # noqa: E731
    for name in a.sets:
        data = world_set(work / "data") if name == "world" else write_set(
            name, work / "data", {"train": a.train, "val": 400, "test": 1500})
        entry = results.setdefault(name, {"arms": {}})
        for arm in a.arms:
            print(f"[{name}] {arm}: the README's commands", flush=True)
            entry["arms"][arm] = run_arm(arm, data, work / name / (f"{arm}-seed{a.seed}" if a.seed else arm),
                                         a.vlm_steps, a.seed)
        if a.no_peer:
            for arm, r in entry["arms"].items():
                print(f"[{name}] test  {arm}: {line(r['test'])}")
            continue
        minutes = max(r["curve"][-1]["train_seconds"] for r in entry["arms"].values()) / 60
        image_size = 96 if name in ("multi", "world") else 64
        print(f"[{name}] peer: {minutes:.1f} training minutes", flush=True)
        peer = train_peer(str(data["train"]), str(data["val"]), minutes, image_size=image_size, eval_every=2048,
                          test_path=str(data["test"]), seed=a.seed)
        found = presence(data["test"], peer.pop("test_answers"))
        entry["peer"] = peer | ({"presence": found} if found else {})
        entry["priors"] = peer["priors"]
        entry["test_questions"] = peer["test_questions"]
        result_path.write_text(json.dumps(results, indent=1) + "\n")
        plot(name, entry, out / f"{name}.png")
        print(f"[{name}] test  peer: {line(peer['test'])}")
        for arm, r in entry["arms"].items():
            print(f"[{name}] test  {arm}: {line(r['test'])}")
        for who, r in {"peer": entry["peer"], **entry["arms"]}.items():
            for fam, t in r.get("presence", {}).items():
                print(f"[{name}] {fam} answers naming an object in the image, {who}: {t['present']:.1%} "
                      f"(right {t['right']:.1%}; picking among the image's objects: {t['uniform_present']:.1%})")


if __name__ == "__main__":
    main()
