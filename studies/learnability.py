"""Learnability study: why the quickstart's native VLM did not learn what objects are, and which
interventions make it learn. One command:

    python studies/learnability.py --out docs/learnability [--arms baseline,identity_first] [--jobs 2]

It prepares the quickstart's world, tokenizer and text LM once (`--prep`, reused when present), then trains
one native VLM per arm: the quickstart's `recipes/native.yaml` at quickstart scale, changed only as the arm
says, each with learning curves (accuracy per family on 240 held-out val questions every 100 steps) and the
diagnostics on (attention from the answer position, image-token sensitivity, gradient norm per module).
Arms run `--jobs` at a time, one thread each. Each arm's run folder keeps metrics.jsonl, curves.png and its
final model; `--out` gets study.json (every arm's curve points and its test-split table) and study.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nativevlm.config import to_dict  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe  # noqa: E402

IDENTITY = ("color", "shape")


def filter_families(src: Path, dst: Path, families) -> str:
    records = [r for r in json.loads(src.read_text()) if r["meta"]["family"] in families]
    dst.write_text(json.dumps(records))
    return str(dst)


def grid_caption(scene: dict) -> str:
    """Each object as `row R, column C: a SIZE COLOUR SHAPE`, row-major: the model writes where before what,
    so the colour and shape are read off a token it has already located."""
    objs = sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))
    rows, cols = scene["height"] // 32, scene["width"] // 32
    parts = [f"row {o['row'] + 1}, column {o['col'] + 1}: a {o['size']} {o['color']} {o['shape']}" for o in objs]
    return f"{rows} rows and {cols} columns. " + "; ".join(parts) + "."


def grid_captions(scenes: Path, captions: Path, dst: Path) -> str:
    by_id = {json.loads(line)["id"]: json.loads(line) for line in scenes.read_text().splitlines() if line.strip()}
    records = json.loads(captions.read_text())
    for r in records:
        r["conversations"][1]["value"] = grid_caption(by_id[r["meta"]["scene_id"]])
    dst.write_text(json.dumps(records))
    return str(dst)


CELLS_HEAD = [{"name": "sft"}, {"name": "cells", "weight": 1.0, "target": "head"}]
CELLS_WORDS = [{"name": "sft"}, {"name": "cells", "weight": 1.0, "target": "words"}]


def stage(name, data, trainable=("*",), steps=100, lr=1.5e-3, schedule="constant", warmup=20, **kw):
    return {"name": name, "data": [{"path": p, "weight": w} for p, w in data], "trainable": list(trainable),
            "steps": steps, "batch_size": 16, "lr": lr, "schedule": schedule, "warmup_steps": warmup,
            "eval_every": 0, **kw}


# Arms whose text LM differs from the quickstart's: their own prep folder, made with these text-lm overrides.
TEXT_LM_VARIANTS = {"kv_heads": ["model.language.num_kv_heads=3"]}


def prep_for(arm: str, prep: Path) -> Path:
    return prep.with_name(f"{prep.name}-{arm}") if arm in TEXT_LM_VARIANTS else prep


def arm_recipe(arm: str, prep: Path) -> dict:
    """The native recipe as the quickstart runs it, changed as `arm` says (a dict ready for YAML)."""
    prep = prep_for(arm, prep)
    w = prep / "data" / "world"
    cfg = to_dict(load_shipped_recipe("native", prep))
    chat, caps, text = str(w / "train_chat.json"), str(w / "train_captions.json"), str(w / "train_text.txt")
    ident = filter_families(w / "train.json", w / "train_identity.json", IDENTITY)
    s2_all = [(chat, 3.0), (caps, 1.0), (text, 0.5)]
    if arm in ("baseline", "kv_heads"):
        pass  # kv_heads: the text LM has 3 key/value heads (one per query head) instead of 1
    elif arm == "identity_first":
        # 400 steps of colour/shape questions, then all families with the visual side frozen.
        s = cfg["stages"]
        s[2:] = [stage("s2a-identity", [(ident, 1.0)], steps=400, lr=1.5e-3),
                 stage("s2b-all-frozen-vision", s2_all, trainable=["language.*"], steps=600, lr=1.5e-3,
                       schedule="cosine", weight_decay=0.05)]
    elif arm == "combined":
        # cell_loss + identity_first: the per-token target through S1 and the identity stage, then all
        # families with the visual side frozen.
        s = cfg["stages"]
        s[2:] = [stage("s2a-identity", [(ident, 1.0)], steps=400, lr=1.5e-3),
                 stage("s2b-all-frozen-vision", s2_all, trainable=["language.*"], steps=600, lr=1.5e-3,
                       schedule="cosine", weight_decay=0.05)]
        for st in s[:3]:
            st["objectives"] = CELLS_HEAD
    elif arm == "word_align":
        # The cell loss toward the LM's own colour and shape word embeddings (cosine), in every stage.
        for st in cfg["stages"]:
            st["objectives"] = CELLS_WORDS
    elif arm == "frozen_vision_s2":
        # The usual S1 stages, then S2 with the visual side (encoder + connector) frozen.
        cfg["stages"][2]["trainable"] = ["language.*"]
    elif arm == "grid_captions":
        # Dense, position-first captions (every object, where first, then what) replace the captions.
        grid = grid_captions(w / "train_scenes.jsonl", w / "train_captions.json", w / "train_grid_captions.json")
        for s in cfg["stages"]:
            for src in s["data"]:
                if src["path"] == caps:
                    src["path"] = grid
    elif arm == "cell_loss":
        for s in cfg["stages"]:
            s["objectives"] = CELLS_HEAD
    elif arm == "cell_loss_prealign":
        for s in cfg["stages"][:2]:
            s["objectives"] = CELLS_HEAD
    else:
        raise SystemExit(f"unknown arm {arm!r}")
    cfg["curves"] = {"data": str(w / "val.json"), "every": 100, "samples": 240, "max_new_tokens": 8,
                     "batch_size": 80}
    cfg["diagnostics"] = {"grad_norms": True, "attention": True, "sensitivity": True}
    cfg["checkpoint_every"] = 10000
    return cfg


def prepare(prep: Path, text_lm_overrides=()) -> None:
    """World, tokenizer and text LM exactly as the quickstart makes them (skipped when already there)."""
    if (prep / "runs" / "text-lm" / "final").is_dir():
        return
    code = ("from nativevlm.quickstart import prepare; from pathlib import Path; "
            f"prepare(Path({str(prep)!r}), text_lm_overrides={list(text_lm_overrides)!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/learnability")
    ap.add_argument("--prep", default="runs/learnability-prep", help="world + tokenizer + text LM (made once)")
    ap.add_argument("--runs", default="runs/learnability", help="one run folder per arm")
    ap.add_argument("--arms", default="baseline,identity_first,cell_loss,cell_loss_prealign")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    prep, runs, out = Path(args.prep), Path(args.runs), Path(args.out)
    prepare(prep)
    for arm in args.arms.split(","):
        if arm in TEXT_LM_VARIANTS:
            prepare(prep_for(arm, prep), TEXT_LM_VARIANTS[arm])
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pending = [a for a in args.arms.split(",") if not (runs / a / "final").is_dir()]
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < args.jobs:
            arm = pending.pop(0)
            recipe = runs / f"{arm}.yaml"
            recipe.write_text(yaml.safe_dump(arm_recipe(arm, prep), sort_keys=False))
            log = (runs / f"{arm}.log").open("w")
            resume = ["--resume"] if (runs / arm / "checkpoints").is_dir() else []
            cmd = [sys.executable, "-m", "nativevlm", "train", str(recipe), "--out", str(runs / arm), *resume,
                   "--set", "progress=false"]
            running[arm] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time())
            print(f"started {arm}", flush=True)
        time.sleep(5)
        for arm, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                print(f"{arm}: exit {proc.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
                (runs / f"{arm}.time").write_text(f"{time.time() - t0:.0f}\n")
                del running[arm]
    summarize(args.arms.split(","), runs, out)


def summarize(arms, runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nativevlm.eval.curves import read_curve_points

    out.mkdir(parents=True, exist_ok=True)
    study = {}
    for arm in arms:
        metrics = runs / arm / "metrics.jsonl"
        if not metrics.exists():
            continue
        t = runs / f"{arm}.time"
        study[arm] = {"points": read_curve_points(metrics),
                      "seconds": float(t.read_text()) if t.exists() else None,
                      "priors": json.loads((runs / arm / "curves.json").read_text())["priors"]
                      if (runs / arm / "curves.json").exists() else {}}
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    cols = [("acc/all", "all"), ("acc/perception", "perception"), ("acc/reasoning", "reasoning"),
            ("acc/color", "colour"), ("acc/shape", "shape"), ("acc/position", "position"), ("acc/count", "count"),
            ("attn/image_mass", "image attention"), ("attn/target_share", "on named object"),
            ("sens/color_rel", "colour move / norm")]
    lines = ["| arm | steps | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, res in study.items():
        last = res["points"][-1]
        lines.append(f"| {arm} | {last['step']} | " + " | ".join(
            f"{last[k]:.0%}" if k.startswith("acc/") else f"{last.get(k, float('nan')):.2f}" for k, _ in cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "times.json").write_text(json.dumps({a: r["seconds"] for a, r in study.items()}, indent=1) + "\n")
    from nativevlm.eval.curves import plot_curves

    ref = next((json.loads((runs / a / "curves.json").read_text()) for a in study
                if (runs / a / "curves.json").exists()), None)
    for arm in study:  # what each arm's result rests on, small enough to commit (not the weights)
        (out / arm).mkdir(exist_ok=True)
        if not (runs / arm / "curves.png").exists() and ref:  # an unfinished arm: its curve so far
            plot_curves(runs / arm / "metrics.jsonl", out / arm / "curves.png", ref["priors"], ref["kinds"],
                        title=f"{arm} (unfinished)")
        for name in ("metrics.jsonl", "curves.png", "curves.json", "config.yaml"):
            if (runs / arm / name).exists():
                shutil.copy(runs / arm / name, out / arm / name)
    panels = [("acc/perception", "perception accuracy"), ("acc/reasoning", "reasoning accuracy"),
              ("acc/color", "colour accuracy"), ("acc/shape", "shape accuracy"),
              ("attn/image_mass", "answer position: attention mass on the image"),
              ("attn/target_share", "answer position: share of image attention on the named object"),
              ("sens/color_rel", "image token: move when recoloured / token norm"),
              ("sens/shape_rel", "image token: move when reshaped / token norm")]
    fig, axes = plt.subplots(2, 4, figsize=(22, 9))
    for ax, (key, title) in zip(axes.flat, panels):
        for arm, res in study.items():
            pts = [p for p in res["points"] if key in p]
            ax.plot([p["samples"] for p in pts], [p[key] for p in pts], "-o", ms=3, label=arm)
        fam = key.split("/")[1]
        any_priors = next((r["priors"] for r in study.values() if r["priors"]), {})
        if fam in any_priors:
            ax.axhline(any_priors[fam], color="grey", ls="--", lw=1, label="answer prior")
        if key == "attn/target_share":
            chance = [p["attn/target_chance"] for r in study.values() for p in r["points"] if "attn/target_chance" in p]
            if chance:
                ax.axhline(chance[0], color="grey", ls="--", lw=1, label="chance (1 / image tokens)")
                ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training samples seen")
        ax.grid(alpha=0.3)
        if key.startswith("acc/"):
            ax.set_ylim(0, 1.02)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=100)
    print(f"wrote {out / 'study.json'} and {out / 'study.png'}")


if __name__ == "__main__":
    main()
