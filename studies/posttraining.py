"""Cascade RL at toy scale: does MPO, then GSPO, lift the quickstart's SFT model on held-out world questions?
One command:

    python studies/posttraining.py --quickstart runs/quickstart --out docs/studies/posttraining

`--quickstart` is the folder of a finished `nativevlm quickstart` (its world, tokenizer and SFT model
`runs/native/final`); when it holds no model the quickstart is run there first (about 10 minutes). For each
seed the study then runs the shipped `recipes/cascade-rl.yaml`, stage by stage so each step is measured:

1. preference pairs sampled from the SFT model on the first `--questions` training questions (`nativevlm
   data preferences`, the seed's replies);
2. SFT -> +MPO (the recipe's mpo stage), 3. +MPO -> +GSPO (its gspo stage), 4. SFT -> GSPO alone;

and evaluates every model on the held-out test split (greedy, through the engine, as the quickstart does).
`--out` gets study.json (accuracy per family of each model and seed, each model against the SFT model question by
question (`paired_vs_sft`: the difference, its paired 95% interval, McNemar's p), which questions each got right,
each GSPO run's reward, accuracy, kept fraction and clip fraction per step, and each MPO run's loss terms and
implicit reward per step) and study.png. The step counts are the recipe's unless overridden (`--mpo-steps`,
`--gspo-steps`) or cut by `SCALE` below to fit a shared 2-core CPU. `--gspo-only` runs SFT -> GSPO alone (no
pairs, no MPO), `--mpo-only` SFT -> +MPO alone, `--sft-control` adds the control (model `sft+`: the SFT run's own
last stage continued for as many steps as GSPO takes, at GSPO's learning rate), and
`--mpo-set` / `--gspo-set KEY=VALUE` change the MPO / GSPO stage after those cuts, e.g. a longer run:

    python studies/posttraining.py --quickstart runs/quickstart --out docs/studies/posttraining/gspo-long \
        --work runs/quickstart/posttraining-long --gspo-only --gspo-set stages.0.batch_size=16 \
        --gspo-set stages.0.steps=200 --gspo-set stages.0.lr=1e-5 \
        --gspo-set stages.0.objectives.0.eps_low=0.2 --gspo-set stages.0.objectives.0.eps_high=0.28

`--sampled N` also scores every model on N replies per test question sampled at temperature 1 (what GSPO's
reward averages; avg@N and pass@N per family) and groups the test questions by how many of the SFT model's N
replies are right, each model's greedy accuracy per group (`by_sft_sampled`, a fifth panel).

`--sft MODEL --world DIR` starts from any SFT model of the world instead (e.g. the bring-your-own-data recipe
trained on the world's QA, `bench/world_long.py`): DIR is a world folder (train.json, test.json), the cascade's
training data; the tokenizer is the model folder's own (`--tokenizer` to name another), and `--work` is needed.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nativevlm.config import read_yaml  # noqa: E402
from nativevlm.quickstart import RECIPES  # noqa: E402
from nativevlm.train.recipe import recipe_from_dict, relocate_paths  # noqa: E402

MODELS = ("sft", "mpo", "mpo+gspo", "gspo")
CONTROL = "sft+"  # --sft-control: the SFT model's last stage continued for as many steps as GSPO takes
# The recipe's stages cut to fit a shared 2-core CPU (the only place the study departs from the recipe):
# GSPO on 8 questions x 8 replies per rollout, 2 optimizer steps per rollout, 16 steps (8 rollouts).
SCALE = {"mpo": [], "gspo": ["stages.0.batch_size=8", "stages.0.steps=16", "stages.0.objectives.0.steps_per_rollout=2"]}
RIGHT = "right"  # an evaluation's question id -> right or not, kept apart from the accuracies in study.json
LABELS = {"sft": "SFT", "mpo": "+MPO", "mpo+gspo": "+MPO +GSPO", "gspo": "GSPO alone", CONTROL: "continued SFT"}


def evaluate_model(path: Path, world: Path, cache_dir: Path) -> dict:
    """Accuracy overall, per family and per kind on the world's test split, cached in `cache_dir`/eval (the
    study's work folder, never the model's; `nativevlm.eval.cache`) under the model file and its time, the world
    and the package's source, so a rerun, or a run of other seeds, evaluates each model once, and a retrained
    model or a changed engine is evaluated again."""
    from nativevlm.eval.cache import cached

    def measure() -> dict:
        from nativevlm.eval.benchmarks import load_benchmark
        from nativevlm.eval.harness import evaluate
        from nativevlm.eval.local import LocalAnswerer
        from nativevlm.infer.chat import load_model_and_tokenizer

        model, tok = load_model_and_tokenizer(path)
        result = evaluate(load_benchmark(f"world:{world}"), LocalAnswerer(model, tok, 64, max_new_tokens=8))
        s = result.summary()
        return {"overall": s["accuracy"], "n": s["n"], **{k: v["accuracy"] for k, v in s["by_category"].items()},
                **{f"all {k}": v["accuracy"] for k, v in s["by_kind"].items()},
                RIGHT: {r["id"]: r["status"] == "correct" for r in result.records}}

    key = {"model": str(path.resolve()), "world": str(world.resolve()),
           "modified": (path / "model.safetensors").stat().st_mtime_ns, "keeps": RIGHT}
    return cached(cache_dir / "eval", key, measure)


def against_sft(right: dict[str, dict[str, dict[str, bool]]]) -> dict:
    """Each model of each seed against the SFT model, question by question on the same test questions
    (`nativevlm.eval.compare.paired`: the difference, its paired 95% interval, the questions only one gets right,
    McNemar's exact p). Two models asked the same questions mostly agree, so this says whether a difference of a
    point or two is a change or noise, which one accuracy's standard error cannot."""
    from nativevlm.eval.compare import paired

    out: dict[str, dict[str, dict]] = {}
    for name, seeds in right.items():
        if name == "sft":
            continue
        for seed, answers in seeds.items():
            r = paired(right["sft"][seed], answers)
            out.setdefault(name, {})[seed] = r.to_dict()
            print(f"{LABELS[name]:>16s}, seed {seed} vs SFT: {r.line()}", flush=True)
    return out


@dataclass(frozen=True)
class Base:
    """Where the cascade starts and what it trains on: the folder the shipped recipe's `data/...` paths are moved
    under (the quickstart's; with `--sft` the work folder, as every such path is then given), the SFT model, the
    world folder and the tokenizer (None: the recipe's)."""
    root: Path
    sft: Path
    world: Path
    tokenizer: Path | None = None


def cascade_stage(base: Base, stage: str, init: Path, seed: int, overrides: list[str]):
    """One stage of the shipped cascade recipe, relocated into the base folder, from `init`; GSPO trains on the
    base's world."""
    data = relocate_paths(read_yaml(RECIPES / "cascade-rl.yaml", "recipe"), base.root)
    data.pop("curves", None)  # the recipe's learning curves on val: this script evaluates on test itself
    data["stages"] = [s for s in data["stages"] if s["name"] == stage]
    data.update(init={"path": str(init)}, seed=seed, device="cpu", progress=False)
    if base.tokenizer is not None:
        data["tokenizer"] = str(base.tokenizer)
    if stage == "gspo":
        data["stages"][0]["data"] = [{"path": str(base.world / "train.json")}]
    return recipe_from_dict(data, overrides)


def train_once(make_cfg, out: Path) -> Path:
    """Train the recipe `make_cfg()` gives into `out`, resuming a stopped run; a finished one is reused as it
    is, without reading its recipe again."""
    from nativevlm.train.trainer import train

    if (out / "final" / "model.safetensors").exists():
        return out / "final"
    return train(make_cfg(), out, resume=(out / "checkpoints").exists(), log=lambda *a, **k: None).final


def stage_run(base: Base, stage: str, init: Path, out: Path, seed: int, overrides: list[str]) -> Path:
    """One stage of the shipped cascade recipe from `init` into `out` (reused when already finished)."""
    return train_once(lambda: cascade_stage(base, stage, init, seed, overrides), out)


def sft_control(base: Base, out: Path, seed: int, gspo_overrides: list[str]) -> Path:
    """The control for GSPO: the SFT run's own last stage (its data mixture and objectives, from the run's
    config.yaml) continued from the SFT model for as many optimizer steps as the GSPO stage takes, with its
    batch size (here in conversations), learning rate (constant) and trainable parameters. What GSPO gains
    beyond this, the reward gave."""
    def make_cfg():
        g = cascade_stage(base, "gspo", base.sft, seed, gspo_overrides).stages[0]
        run = read_yaml(base.sft.parent / "config.yaml", "config")
        stage = run["stages"][-1]
        stage.update(steps=g.steps, batch_size=g.batch_size, lr=g.lr, schedule="constant", warmup_steps=0,
                     trainable=list(g.trainable))  # what GSPO trains (all of it unless --gspo-set says otherwise)
        as_run = {k: run[k] for k in ("question_loss", "square_average", "pack") if k in run}  # as the run had them
        return recipe_from_dict({"kind": "vlm", "tokenizer": run["tokenizer"], "init": {"path": str(base.sft)},
                                 "max_length": run["max_length"], "seed": seed, "device": "cpu", "progress": False,
                                 "checkpoint_every": 100, "stages": [stage], **as_run}, [])

    return train_once(make_cfg, out)


def sample_replies(qa: Path, model: Path, out: Path, seed: int, *extra: str) -> None:
    """`nativevlm data preferences` on `qa`: replies of `model` sampled at temperature 1 and checked against the
    answers, kept in `out` (its pairs), `out`.skipped.jsonl and `out`.summary.json; a rerun samples only what is
    missing."""
    subprocess.run([sys.executable, "-m", "nativevlm", "data", "preferences", str(qa), "--model", str(model), "--out",
                    str(out), "--seed", str(seed), "--max-new-tokens", "8", "--device", "cpu", *extra], check=True,
                   stdout=subprocess.DEVNULL)


def sampled_counts(qa: Path, model: Path, out: Path, n: int, seed: int) -> dict[str, int]:
    """How many of `n` replies of `model` to each question of `qa`, sampled at temperature 1 (`nativevlm data
    preferences`, whose pair and skipped files keep each question's count of right replies, so a rerun samples
    nothing), are right as the reward reads them: question id -> count."""
    from nativevlm.rl.preferences import read_jsonl

    sample_replies(qa, model, out, seed, "--n", str(n))
    right = {r["id"]: r["meta"]["n_right"] for r in read_jsonl(out)}
    return right | {r["id"]: r["n_right"] for r in read_jsonl(Path(f"{out}.skipped.jsonl"))}


def sampled_accuracy(counts: dict[str, int], family: dict[str, str], n: int) -> dict:
    """What GSPO's reward averages, from `sampled_counts` of `n` replies per test question (`family`: question
    id -> its family): mean accuracy over replies (avg@n) overall and per family, and pass@n (the share of
    questions with at least one right reply)."""
    by: dict[str, list[int]] = {}
    for qid, k in counts.items():
        by.setdefault("overall", []).append(k)
        by.setdefault(family[qid], []).append(k)
    result = {f: sum(ks) / (n * len(ks)) for f, ks in sorted(by.items(), key=lambda kv: (kv[0] != "overall", kv[0]))}
    return result | {"n": len(counts), f"pass@{n}": sum(k > 0 for k in counts.values()) / len(counts)}


def sampled_groups(n: int, low: float = 0.2, high: float = 0.8) -> list[tuple[str, range]]:
    """Groups of questions by how many of `n` sampled replies are right: none, too few for GSPO's accuracy
    filter [`low`, `high`] (its default), within it, too many, all."""
    lo, hi = math.ceil(low * n - 1e-9), math.floor(high * n + 1e-9)  # the counts the filter keeps: lo..hi
    groups = [range(0, 1), range(1, lo), range(lo, hi + 1), range(hi + 1, n), range(n, n + 1)]
    return [(f"{ks[0]}/{n}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}/{n}", ks) for ks in groups if len(ks)]


def by_sft_sampled(counts: dict[str, int], right: dict[str, dict[str, bool]], n: int) -> dict:
    """Each model's greedy accuracy on the test questions grouped by how many of the SFT model's `n` sampled
    replies to them are right (`sampled_groups`; its sampled replies of that seed). Read the groups with churn
    in mind: where SFT's samples are never right its greedy answer is nearly always wrong, so any model that
    answers those questions differently gains there, and where they are always right any change loses; the
    middle group, the questions GSPO's accuracy filter would keep (most of them), is where a model that learns
    and one that only changes its answers differ."""
    out = {}
    for name, counts_in in sampled_groups(n):
        ids = [q for q, k in counts.items() if k in counts_in]
        out[name] = {"n": len(ids), **{m: (sum(answers[q] for q in ids) / len(ids) if ids else None)
                                       for m, answers in right.items()}}
    return out


def curves(run: Path, objective: str = "gspo") -> dict:
    """A run's per-step metrics of `objective` (GSPO: rollout reward, accuracy, kept, clip fraction, reply length;
    MPO: its loss terms and implicit reward), as [step, value] lists."""
    from nativevlm.eval.curves import metric_series

    keys = (("reward", "accuracy", "kept", "clip_fraction", "response_length") if objective == "gspo" else
            ("dpo", "bco_pair", "sft", "reward_accuracy", "reward_margin"))
    return metric_series(run.parent / "metrics.jsonl", objective, keys)


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    wide = "sampled" in study  # a fourth panel: the same bars for replies sampled at temperature 1
    grouped = "by_sft_sampled" in study  # a fifth: greedy accuracy by how often SFT's samples were right
    fig, axes = (plt.subplots(2, 3, figsize=(22, 9.2)) if grouped else plt.subplots(2, 2, figsize=(17, 9.2)) if wide
                 else plt.subplots(1, 3, figsize=(17, 4.6)))
    axes = list(np.ravel(axes))
    if grouped:
        axes[-1].remove()
    colours = {"sft": "tab:gray", "mpo": "tab:orange", "mpo+gspo": "tab:red", "gspo": "tab:blue",
               CONTROL: "tab:green"}
    for seed, runs in study["curves"].items():
        for name, c in runs.items():
            style = "-" if seed == str(study["seeds"][0]) else "--"
            x, y = zip(*c["reward"])
            if len(y) <= 50:
                axes[0].plot(x, y, style, color=colours[name], marker="o", ms=3, label=f"{LABELS[name]}, seed {seed}")
            else:  # hundreds of rollouts: each faint, and the mean of the last 20 drawn over them
                axes[0].plot(x, y, style, color=colours[name], lw=0.6, alpha=0.25)
                mean = np.convolve(y, np.ones(20) / 20, mode="valid")
                axes[0].plot(x[19:], mean, style, color=colours[name], lw=2,
                              label=f"{LABELS[name]}, seed {seed} (mean of 20 rollouts)")
            x, y = zip(*c["clip_fraction"])
            axes[1].plot(x, y, style, color=colours[name], lw=1, label=f"{LABELS[name]}, seed {seed}")
    axes[0].set(title="GSPO: mean reward of each rollout (correct 1 + format 0.5)", xlabel="optimizer step",
                ylabel="reward")
    axes[1].set(title="GSPO: clip fraction per step (rollout steps are on-policy: 0)", xlabel="optimizer step",
                ylabel="share of sequences clipped")
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # --mpo-only
            ax.text(0.5, 0.5, "no GSPO run in this study", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    panels = [("accuracy", "held-out test accuracy (%), greedy, mean and range over seeds")]
    if "sampled" in study:
        panels.append(("sampled", "test accuracy (%) of replies sampled at temperature 1, mean and range over seeds"))
    for ax, (key, title) in zip(axes[2:], panels):
        first = study[key]["sft"][str(study["seeds"][0])]
        families = [k for k in first if k != "n" and not k.startswith("pass@")]
        models = list(study[key])
        width = 0.8 / len(models)
        for j, m in enumerate(models):
            runs = study[key][m]
            vals = np.array([[runs[s][f] for f in families] for s in runs]) * 100
            mean = vals.mean(0)
            err = np.stack([mean - vals.min(0), vals.max(0) - mean])
            ax.bar(np.arange(len(families)) + (j - (len(models) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
                   color=colours[m], label=LABELS[m])
        ax.set_xticks(np.arange(len(families)), families, rotation=45, ha="right", fontsize=8)
        ax.set(title=title, ylim=(0, 100))
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    if grouped:  # per group of questions: each model's greedy accuracy, mean and range over seeds
        ax, seeds = axes[4], list(study["by_sft_sampled"])
        groups = [g for g, row in study["by_sft_sampled"][seeds[0]].items() if row["n"]]
        models = list(study["accuracy"])
        width = 0.8 / len(models)
        for j, m in enumerate(models):
            vals = np.array([[study["by_sft_sampled"][s][g][m] for g in groups] for s in seeds]) * 100
            mean = vals.mean(0)
            ax.bar(np.arange(len(groups)) + (j - (len(models) - 1) / 2) * width, mean, width, capsize=2,
                   yerr=np.stack([mean - vals.min(0), vals.max(0) - mean]), color=colours[m], label=LABELS[m])
        names = [f"{g}\n({study['by_sft_sampled'][seeds[0]][g]['n']} q.)" for g in groups]  # seed 0's samples
        ax.set_xticks(np.arange(len(groups)), names, fontsize=8)
        ax.set(title="greedy test accuracy (%) by how many of SFT's sampled replies were right\n(the middle "
                     "group: what GSPO's accuracy filter keeps), mean and range over seeds", ylim=(0, 100),
               xlabel=f"SFT's right replies of those sampled, per question (questions: seed {seeds[0]}'s samples)")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quickstart", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "studies" / "posttraining")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--questions", type=int, default=320, help="training questions sampled for MPO's pairs")
    ap.add_argument("--mpo-steps", type=int, default=0, help="0: the recipe's")
    ap.add_argument("--gspo-steps", type=int, default=0, help="0: the recipe's")
    ap.add_argument("--gspo-only", action="store_true", help="SFT -> GSPO alone: no pairs, no MPO")
    ap.add_argument("--mpo-only", action="store_true", help="SFT -> +MPO alone: no GSPO")
    ap.add_argument("--mpo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the MPO stage, e.g. stages.0.lr=3e-5")
    ap.add_argument("--gspo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the GSPO stage after the cuts above, e.g. stages.0.lr=1e-5")
    ap.add_argument("--work", type=Path, default=None, help="run folder (default: QUICKSTART/posttraining)")
    ap.add_argument("--sft-control", action="store_true",
                    help="also continue the SFT run's last stage for as many steps as GSPO (model 'sft+')")
    ap.add_argument("--sampled", type=int, default=0, metavar="N",
                    help="also score N replies per test question sampled at temperature 1 for every model")
    ap.add_argument("--sft", type=Path, default=None, help="start from this SFT model folder, not the quickstart's")
    ap.add_argument("--world", type=Path, default=None, help="with --sft: the world folder it was trained on")
    ap.add_argument("--tokenizer", type=Path, default=None, help="with --sft: default the model folder's own")
    args = ap.parse_args(argv)
    if args.gspo_only and args.mpo_only:
        ap.error("--gspo-only and --mpo-only exclude each other")
    t0 = time.time()
    if args.sft is not None:
        if args.world is None or args.work is None:
            ap.error("--sft needs --world (the world folder: train.json, test.json) and --work (a run folder)")
        for need in (args.sft / "model.safetensors", args.world / "train.json", args.world / "test.json"):
            if not need.exists():
                ap.error(f"{need} does not exist")
        work = args.work.resolve()
        base = Base(work, args.sft.resolve(), args.world.resolve(), (args.tokenizer or args.sft).resolve())
    else:
        qs = args.quickstart.resolve()
        base = Base(qs, qs / "runs" / "native" / "final", qs / "data" / "world")
        if not (base.sft / "model.safetensors").exists():
            subprocess.run([sys.executable, "-m", "nativevlm", "quickstart", "--out", str(qs)], check=True)
        work = (args.work or qs / "posttraining").resolve()
    sft, world = base.sft, base.world
    overrides = {"mpo": SCALE["mpo"] + ([f"stages.0.steps={args.mpo_steps}"] if args.mpo_steps else []) + args.mpo_set,
                 "gspo": SCALE["gspo"] + ([f"stages.0.steps={args.gspo_steps}"] if args.gspo_steps else [])
                 + args.gspo_set}
    models = (("sft", "gspo") if args.gspo_only else ("sft", "mpo") if args.mpo_only else MODELS) \
        + ((CONTROL,) if args.sft_control else ())
    timings = {}
    study = {"seeds": args.seeds, "questions": args.questions, "accuracy": {m: {} for m in models}, "curves": {},
             "pairs": {}, "overrides": overrides, "timings_s": timings}
    if args.sampled:
        study["sampled"] = {m: {} for m in models}
        test = json.loads((world / "test.json").read_text())
        family = {r["id"]: r.get("meta", {}).get("family", "all") for r in test}
        sft_counts: dict[str, dict[str, int]] = {}
    for seed in args.seeds:
        s, w = str(seed), work / f"seed{seed}"
        runs, pair_override = {}, []
        if not args.gspo_only:
            t = time.time()
            pairs_seed = w / "world_pairs.jsonl"
            sample_replies(world / "train.json", sft, pairs_seed, seed, "--limit", str(args.questions))
            study["pairs"][s] = json.loads(Path(f"{pairs_seed}.summary.json").read_text())
            pair_override = [f"stages.0.data.0.path={pairs_seed}"]
            timings[f"pairs {s}"] = round(time.time() - t)
        for name, stage, init in (("mpo", "mpo", sft), ("mpo+gspo", "gspo", None), ("gspo", "gspo", sft)):
            if name not in models:
                continue
            t = time.time()
            init = init or runs["mpo"]
            extra = overrides[stage] + (pair_override if stage == "mpo" else [])
            runs[name] = stage_run(base, stage, init, w / name.replace("+", "_"), seed, extra)
            study["accuracy"][name][s] = evaluate_model(runs[name], world, work)
            timings[f"{name} {s} (train + evaluate)"] = round(time.time() - t)
        if args.sft_control:
            t = time.time()
            runs[CONTROL] = sft_control(base, w / "sft_more", seed, overrides["gspo"])
            study["accuracy"][CONTROL][s] = evaluate_model(runs[CONTROL], world, work)
            timings[f"{CONTROL} {s} (train + evaluate)"] = round(time.time() - t)
        study["curves"][s] = {name: curves(runs[name]) for name in ("mpo+gspo", "gspo") if name in runs}
        if "mpo" in runs:
            study.setdefault("mpo_curves", {})[s] = curves(runs["mpo"], "mpo")
        if args.sampled:
            t = time.time()
            for name, path in {"sft": sft, **runs}.items():
                counts = sampled_counts(world / "test.json", path, w / "sampled" / f"{name}.jsonl", args.sampled, seed)
                study["sampled"][name][s] = sampled_accuracy(counts, family, args.sampled)
                if name == "sft":
                    sft_counts[s] = counts  # kept for by_sft_sampled once every model is evaluated
            timings[f"sampled {s}"] = round(time.time() - t)
        print(f"seed {seed}: " + ", ".join(f"{LABELS[m]} {study['accuracy'][m][s]['overall']:.1%}" for m in models[1:]),
              flush=True)
    t = time.time()
    sft_acc = evaluate_model(sft, world, work)  # greedy evaluation of one model: the same for every seed
    study["accuracy"]["sft"] = {str(seed): dict(sft_acc) for seed in args.seeds}
    timings["evaluate sft"] = round(time.time() - t)
    right = {m: {s: acc.pop(RIGHT) for s, acc in seeds.items()} for m, seeds in study["accuracy"].items()}
    study["paired_vs_sft"] = against_sft(right)
    if args.sampled:  # by how often the SFT model's samples were right (its sampled replies of each seed)
        study["by_sft_sampled"] = {}
        for s, counts in sft_counts.items():
            study["by_sft_sampled"][s] = by_sft_sampled(counts, {m: r[s] for m, r in right.items()}, args.sampled)
            for group, row in study["by_sft_sampled"][s].items():
                print(f"seed {s}, SFT right on {group:>6s} of its samples ({row['n']:4d} questions): " + ", ".join(
                    f"{LABELS[m]} {row[m]:.1%}" for m in right if row[m] is not None), flush=True)
    study[RIGHT] = {m: {s: "".join("1" if r else "0" for r in answers.values()) for s, answers in seeds.items()}
                    for m, seeds in right.items()}  # per question, in the test split's order
    timings["total"] = round(time.time() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    plot(study, args.out / "study.png")
    print(f"{timings['total']} s; wrote {args.out / 'study.json'} and {args.out / 'study.png'}")


if __name__ == "__main__":
    main()
