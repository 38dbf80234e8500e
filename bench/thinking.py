"""Thinking vs direct answering with the same weights, and VET vs caption-trained perceivers inside
Extract+Think, on the built-in world's held-out test split, starting from a quickstart run:

    nativevlm quickstart --out runs/quickstart          # once (about 10 CPU minutes)
    python bench/thinking.py --quickstart runs/quickstart --out docs/studies/posttraining/thinking

or, parts `thinking` and `gspo`, from any VLM trained on a world (its model folder holds its tokenizer):

    python bench/thinking.py --sft runs/world_long_q1/ours/final --world runs/world_long_q1/world \
        --work runs/world_long_q1/thinking --out OUT --parts thinking gspo --fusion-lr 1e-4

What it trains, each from the quickstart's models with the shipped recipe scaled down (`--steps`):
- `fused`: recipes/think-fusion.yaml on the quickstart VLM (half the reasoning questions with their rationale
  as `<think>`, everything else direct); with `--sft`, on that model and on the world's QA file alone (a model
  trained on QA alone, as the bring-your-own-data recipe's is, is not handed the world's chat and captions);
- `vet`: recipes/vet-perceiver.yaml (data from `nativevlm data vet`), and `caption`, the same recipe with the
  captions in place of the VET data, so the two perceivers differ in their data only (`--caption-steps 0`:
  the quickstart VLM itself, trained on captions in all three of its stages, is the caption perceiver);
- `reasoner`: recipes/reasoner.yaml from the quickstart text LM, think-fusion on (`thinking: 0.5`).
- part `gspo`: the SFT model `fused+K` (`fused` trained `--gspo-sft-steps` K more think-fusion steps), then
  thinking-mode GSPO from it per seed (the gspo stage of recipes/cascade-rl.yaml with `think: true`, the
  budget, `strict_answer` unless `--gspo-reward lenient`), and the control `fused+K+N` (as many more
  think-fusion steps as GSPO's N); runs named by these settings (a learning rate other than the default
  too), so each is trained once and reused.
  With `--mpo M` the thinking-mode cascade: per seed, pairs of the SFT model's thinking replies to the first
  `--mpo-questions` training questions (`nativevlm data preferences --think`), M steps of the mpo stage of
  recipes/cascade-rl.yaml on them (`+mpo`), GSPO from that model too (`+mpo+gspo`), and the control
  `fused+K+M`; `--mpo-lr` with several rates trains each (`mpo_lr.png`: accuracy against the rate), and
  `--gspo-steps 0` stops at MPO.

What it measures (greedy, `--limit` test questions, accuracy per family):
- the quickstart VLM (or `--sft`) as it is (the direct baseline before think-fusion), and `fused` asked with
  think=False, think=True (budget `--budget`) and left to choose;
- part `gspo`: the SFT model, each MPO and GSPO model and the controls asked with think=True and think=False, and
  each GSPO run's reward, accuracy, reply length, kept share and clip fraction per step (`gspo_thinking.png`);
- Extract+Think with perceivers {caption (asked "Describe the image."), vet (asked the VET prompt with the
  question), truth (the ground-truth captions)} x reasoner {direct, thinking}.
Writes `<out>/thinking.json` (accuracies as evaluation reads answers and strict, parse failures, mean
thinking tokens, which questions each got right, part gspo's arms against the SFT model question by question
(`paired_vs_sft`: difference, paired 95% interval, McNemar's p), seconds, what trained each model with paths in
the work folder as `WORK/...`, the command)
and `<out>/thinking.png`. Each model's evaluations are cached in the work folder (`eval/`, keyed by the model
file, the answerer's settings, the questions and the package's git tree), so a rerun that reuses the trained
runs evaluates only what changed; with uncommitted changes to the package nothing is cached.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nativevlm.config import to_dict  # noqa: E402
from nativevlm.data.extract_think import EXTRACT_PROMPT  # noqa: E402
from nativevlm.data.tokenizer import Tokenizer  # noqa: E402
from nativevlm.data.vet import VET_PROMPT  # noqa: E402
from nativevlm.eval.benchmarks import load_benchmark  # noqa: E402
from nativevlm.eval.cache import cached, source_version  # noqa: E402
from nativevlm.eval.curves import metric_series  # noqa: E402
from nativevlm.eval.harness import evaluate  # noqa: E402
from nativevlm.eval.local import LocalAnswerer  # noqa: E402
from nativevlm.infer.pipelines import ExtractThink, KnownDescriptions  # noqa: E402
from nativevlm.model.loading import load_pretrained  # noqa: E402
from nativevlm.quickstart import load_shipped_recipe  # noqa: E402
from nativevlm.train.trainer import train  # noqa: E402

# The quickstart's sizes fix the models; these scale the shipped recipes' stages to a few CPU minutes.
VLM = ["max_length=384", "stages.0.batch_size=16", "stages.0.lr=1e-3", "stages.0.eval_every=0",
       "stages.0.eval_samples=32", "progress=false", "checkpoint_every=100000"]
# The learning rates runs are trained at unless told: a run at another rate carries it in its name (`-lr3e-05`).
MPO_LR, GSPO_LR = 1e-4, 3e-5
MPO_WEIGHTS = (0.8, 0.2, 1.0)  # the mpo objective's DPO, BCO-pair and SFT weights (recipes/cascade-rl.yaml)
LM = ["max_length=256", "stages.0.batch_size=32", "stages.0.lr=2e-3", "stages.0.eval_every=0",
      "stages.0.eval_samples=32", "progress=false", "checkpoint_every=100000"]


def fusion_overrides(lr: float, qa_world: Optional[Path], extra: list[str]) -> list[str]:
    """recipes/think-fusion.yaml at the CPU scale of VLM and learning rate `lr`; with `qa_world` (an `--sft`
    run's world), on its QA file alone; then `extra` (`--fusion-set`)."""
    qa_only = [f"stages.0.data=[{{path: {qa_world / 'train.json'}, weight: 1.0, thinking: 0.5}}]",
               f"stages.0.val_data={qa_world / 'val.json'}"] if qa_world is not None else []  # full paths: overrides
    return [o for o in VLM if not o.startswith("stages.0.lr=")] + [f"stages.0.lr={lr:g}"] + qa_only + list(extra)


def sh(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nativevlm", *args], check=True, cwd=ROOT)


def trained(name: str, recipe: str, work: Path, overrides: list[str], log: dict) -> Path:
    out = work / "runs" / name
    record(out, log, name)
    made_with = log.get(name, {}).get("overrides")

    def parsed(o: list[str]) -> dict:  # as trained: 1e-3 and 0.001 are the same override
        return to_dict(load_shipped_recipe(recipe, work, o))

    if (out / "final").is_dir() and made_with is not None and made_with != overrides and (
            parsed(made_with) != parsed(overrides)):
        raise SystemExit(f"{out} was trained with other settings ({out / 'bench_record.json'}); delete it, or "
                         "give these another --work")
    if not (out / "final").is_dir():
        t0 = time.time()
        train(load_shipped_recipe(recipe, work, overrides), out)
        record(out, log, name, {"recipe": recipe, "overrides": overrides, "seconds": round(time.time() - t0, 1)})
    return out / "final"


def record(out: Path, log: dict, name: str, entry: Optional[dict] = None) -> None:
    """What trained the run in `out` (kept beside it, so a rerun that reuses the run still reports it)."""
    path = out / "bench_record.json"
    if entry is not None:
        path.write_text(json.dumps(entry, indent=1) + "\n")
    if path.exists():
        log[name] = json.loads(path.read_text())


def summary(result, thinking_tokens=None) -> dict:
    """Accuracy as evaluation reads answers, and strict: right and the answer alone, which a hedge such as
    "yes. 1 is greater than" is not (the harness's `strict_accuracy`)."""
    s = result.summary()
    out = {"accuracy": s["accuracy"], "strict_accuracy": s["strict_accuracy"],
           "right": "".join("1" if r["status"] == "correct" else "0" for r in result.records),  # per question
           "parse_failure_rate": s["parse_failure_rate"],
           "by_kind": {k: g["accuracy"] for k, g in s["by_kind"].items()},
           "by_family": {k: g["accuracy"] for k, g in s["by_category"].items()}}
    if thinking_tokens is not None:
        out["mean_thinking_tokens"] = thinking_tokens
    return out


def against_sft(arms: dict, ids: list[str]) -> dict:
    """Each arm against the SFT model asked the same way, question by question (`nativevlm.eval.compare.paired`:
    the difference, its paired 95% interval, the questions only one gets right, McNemar's p)."""
    from nativevlm.eval.compare import paired

    out = {}
    for mode in ("think=True", "think=False"):
        base = next((v for k, v in arms.items() if k.startswith("SFT") and k.endswith(f", {mode}")), None)
        if base is None or "right" not in base:  # an SFT arm evaluated before right answers were kept
            continue
        for name, arm in arms.items():
            if arm is base or not name.endswith(f", {mode}") or "right" not in arm:
                continue
            r = paired(dict(zip(ids, map("1".__eq__, base["right"]))), dict(zip(ids, map("1".__eq__, arm["right"]))))
            out[name] = r.to_dict()
            print(f"{name:60s} vs SFT {r.line()}", flush=True)
    return out


def thinking_tokens(result, tokenizer) -> float:
    """Mean tokens of thinking per answer (0 for an answer without a think block)."""
    n = [len(tokenizer.encode(r["trace"]["thinking"])) if r.get("trace", {}).get("thinking") else 0
         for r in result.records]
    return sum(n) / max(1, len(n))


def eval_key(model: Path, answerer, world: Path, ids: list[str], count_thinking: bool) -> dict:
    """What the evaluation of `model` (a model folder) through `answerer` (a LocalAnswerer) on the questions `ids`
    of `world` depends on, beside the package's source (`nativevlm.eval.cache`): the model file and its time, the
    answerer's settings, the questions."""
    return {"model": str(model.resolve()), "modified": (model / "model.safetensors").stat().st_mtime_ns,
            "think": answerer.think, "thinking_budget": answerer.thinking_budget,
            "max_new_tokens": answerer.max_new_tokens, "world": str(world.resolve()),
            "questions": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "thinking_tokens": count_thinking}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    start = ap.add_mutually_exclusive_group(required=True)
    start.add_argument("--quickstart", help="a `nativevlm quickstart --out` folder")
    start.add_argument("--sft", help="or a VLM model folder (with its tokenizer) trained on --world's questions "
                                     "(parts thinking and gspo)")
    ap.add_argument("--world", help="with --sft: the world folder (train.json with rationales, test.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", help="where the trained models go (default: <quickstart>/thinking-bench; "
                                   "needed with --sft)")
    ap.add_argument("--steps", type=int, default=120, help="optimizer steps of the think-fusion fine-tune")
    ap.add_argument("--fusion-lr", type=float, default=1e-3,
                    help="think-fusion learning rate (1e-3 suits the quickstart's model; a model whose own "
                         "schedule ended lower wants less)")
    ap.add_argument("--fusion-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the think-fusion recipe (repeatable), e.g. question_loss=1.0 or "
                         "'stages.0.objectives=[{name: sft}, {name: answer_words}]' to keep what the SFT model "
                         "trained with")
    ap.add_argument("--vet-steps", type=int, default=120, help="optimizer steps of the VET fine-tune")
    ap.add_argument("--caption-steps", type=int, default=120,
                    help="optimizer steps of the caption fine-tune (0: the quickstart VLM as it is)")
    ap.add_argument("--reasoner-steps", type=int, default=300)
    ap.add_argument("--limit", type=int, default=600, help="test questions (the first N)")
    ap.add_argument("--budget", type=int, default=48, help="thinking budget, tokens")
    ap.add_argument("--parts", nargs="+", choices=("thinking", "gspo", "extract_think"),
                    default=["thinking", "extract_think"], help="what to measure (and train for)")
    ap.add_argument("--gspo-steps", type=int, default=100,
                    help="optimizer steps of thinking-mode GSPO (part gspo); 0: no GSPO (with --mpo: MPO alone)")
    ap.add_argument("--gspo-lr", type=float, default=GSPO_LR)
    ap.add_argument("--gspo-direct-share", type=float, nargs="+", default=[0.0], metavar="P",
                    help="ask this share of each rollout's questions directly, the rest thinking (gspo's "
                         "direct_share: RL trains both modes); several values train a run for each; default 0, "
                         "thinking only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="GSPO (and MPO) seeds (part gspo)")
    ap.add_argument("--mpo", type=int, default=0, metavar="M",
                    help="part gspo: also thinking-mode MPO, M steps, from the SFT model per seed, and GSPO from it "
                         "(the thinking-mode cascade SFT -> +MPO -> +GSPO); 0: none")
    ap.add_argument("--mpo-lr", type=float, nargs="+", default=[MPO_LR], metavar="LR",
                    help="MPO learning rate (default the recipe's); several values train an MPO run (and GSPO from it) "
                         "for each and plot accuracy against the rate (mpo_lr.png)")
    ap.add_argument("--mpo-weights", type=float, nargs=3, default=list(MPO_WEIGHTS), metavar=("DPO", "BCO", "SFT"),
                    help="the mpo objective's weights (default the recipe's); 0 0 1 is the SFT term alone: "
                         "fine-tuning on the chosen replies, the control for what the preference terms add")
    ap.add_argument("--mpo-questions", type=int, default=320,
                    help="training questions whose thinking replies make MPO's pairs (8 replies each)")
    ap.add_argument("--mpo-direct-share", type=float, default=0.0, metavar="P",
                    help="ask this share of MPO's questions directly (`data preferences --direct-share`), so its "
                         "pairs train both modes; default 0, thinking only")
    ap.add_argument("--gspo-reward", choices=("strict", "lenient"), default="strict",
                    help="strict: a right answer counts only alone (rl.reward); lenient: as evaluation reads it")
    ap.add_argument("--gspo-sft-steps", type=int, default=200,
                    help="think-fusion steps after the fused model before GSPO starts (0: GSPO from `fused`)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the think-fusion control (e.g. in a second process running another seed)")
    ap.add_argument("--gspo-filter", type=float, nargs=2, default=[0.2, 0.8], metavar=("LOW", "HIGH"),
                    help="GSPO's accuracy filter (0 1: keep every question)")
    args = ap.parse_args()
    if args.sft:
        if not (args.world and args.work):
            ap.error("--sft needs --world (the world it was trained on) and --work (where the models go)")
        if "extract_think" in args.parts:
            ap.error("part extract_think trains a reasoner from the quickstart's text LM, so it needs "
                     "--quickstart; with --sft pass --parts thinking gspo (or one of them)")
        for what, path in (("--sft", Path(args.sft) / "config.json"), ("--world", Path(args.world) / "train.json")):
            if not path.is_file():
                ap.error(f"{what} {path.parent}: no {path.name} there")
    elif args.world:
        ap.error("--world goes with --sft (a quickstart folder holds its world)")
    qs, out = Path(args.quickstart or args.sft).resolve(), Path(args.out)
    work = Path(args.work).resolve() if args.work else qs / "thinking-bench"
    world = work / "data" / "world"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.sft:  # the model as the recipes' runs/native/final, its world and tokenizer; a --work made for
        # another model or world is refused, not reused (its runs would be that model's)
        for link, target in ((work / "runs" / "native" / "final", qs), (work / "data" / "tokenizer", qs),
                             (world, Path(args.world).resolve())):
            if link.is_symlink() or link.exists():
                if link.resolve() != target:
                    raise SystemExit(f"{work} was made for {link.resolve()}, not {target}; give this another --work")
            else:
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target)
    if not world.is_dir():  # the quickstart's data and models, seen from the work folder
        (work / "data").mkdir(parents=True, exist_ok=True)
        shutil.copytree(qs / "data" / "world", world, symlinks=True)
        (work / "data" / "tokenizer").symlink_to(qs / "data" / "tokenizer")
        (work / "runs").mkdir(exist_ok=True)
        for name in ("native", "text-lm"):
            (work / "runs" / name).symlink_to(qs / "runs" / name)
    for split in ("train", "val") if "extract_think" in args.parts else ():
        if not (world / f"{split}_vet.json").is_file():
            sh("data", "vet", str(world / f"{split}.json"), "--descriptions", str(world / f"{split}_captions.json"),
               "--out", str(world / f"{split}_vet.json"))

    log: dict = {}

    def steps(n: int) -> list[str]:
        return [f"stages.0.steps={n}", "stages.0.warmup_steps=10"]

    fusion = fusion_overrides(args.fusion_lr, world if args.sft else None, args.fusion_set)

    tok = Tokenizer.load(work / "data" / "tokenizer")
    bench = load_benchmark(f"world:{world}")
    bench.items = bench.items[:args.limit]
    ids = [item.id for item in bench.items]
    results: dict = {"direct_vs_thinking": {}, "gspo_thinking": {}, "extract_think": {}}
    timings: dict = {}

    version = source_version()
    if version is None:
        print("the package has uncommitted changes (or is not in git): every model is evaluated afresh, "
              "nothing cached", flush=True)

    def run(group: str, name: str, answerer, count_thinking: bool = False, model: Optional[Path] = None) -> None:
        """Evaluate one arm; with `model` (the answerer's model folder) through the evaluation cache."""
        def measure() -> dict:
            t0 = time.time()
            result = evaluate(bench, answerer)
            return {"result": summary(result, thinking_tokens(result, tok) if count_thinking else None),
                    "seconds": round(time.time() - t0, 1)}

        made = measure() if model is None or version is None else cached(
            work / "eval", eval_key(model, answerer, world, ids, count_thinking), measure, version)
        results[group][name], timings[f"{group}/{name}"] = made["result"], made["seconds"]
        print(f"{group:18s} {name:40s} {results[group][name]['accuracy']:.1%} (strict "
              f"{results[group][name]['strict_accuracy']:.1%})", flush=True)

    n = 8 + args.budget + 8
    if "thinking" in args.parts:
        fused = trained("fused", "think-fusion", work, fusion + steps(args.steps), log)
        base = work / "runs" / "native" / "final"
        run("direct_vs_thinking", f"{'SFT model' if args.sft else 'quickstart'} (before fusion)",
            LocalAnswerer(load_pretrained(base), tok, 64, 8), model=base)
        model = load_pretrained(fused)
        run("direct_vs_thinking", "fused, think=False", LocalAnswerer(model, tok, 64, 8, think=False), True, fused)
        run("direct_vs_thinking", "fused, think=True", LocalAnswerer(model, tok, 64, n, True, args.budget), True,
            fused)
        run("direct_vs_thinking", "fused, model chooses", LocalAnswerer(model, tok, 64, n), True, fused)
    if "gspo" in args.parts:
        fused = trained("fused", "think-fusion", work, fusion + steps(args.steps), log)
        results["gspo_curves"], results["mpo_arms"] = gspo_thinking(args, work, fused, fusion, tok, log, run, n)
    if "extract_think" in args.parts:
        extract_think(args, qs, work, world, tok, log, steps, run, n)

    if results["gspo_thinking"]:
        results["paired_vs_sft"] = against_sft(results["gspo_thinking"], ids)
    record = {"questions": len(bench.items), "budget": args.budget, "trained": log, "eval_seconds": timings,
              "total_seconds": round(time.time() - t_start, 1),
              "command": f"python bench/thinking.py "
                         + (f"--sft {args.sft} --world {args.world} --work {args.work} " if args.sft
                            else "--quickstart QUICKSTART ")
                         + f"--out {args.out} --steps {args.steps} --fusion-lr {args.fusion_lr:g} "
                         + "".join(f"--fusion-set '{o}' " for o in args.fusion_set)
                         + f"--vet-steps {args.vet_steps} --caption-steps {args.caption_steps} "
                         f"--reasoner-steps {args.reasoner_steps} --limit {args.limit} --budget {args.budget} "
                         f"--parts {' '.join(args.parts)}"
                         + (f" --gspo-steps {args.gspo_steps} --gspo-lr {args.gspo_lr} --seeds "
                            f"{' '.join(map(str, args.seeds))} --gspo-reward {args.gspo_reward} --gspo-sft-steps "
                            f"{args.gspo_sft_steps} --gspo-filter {args.gspo_filter[0]:g} {args.gspo_filter[1]:g}"
                            + (" --gspo-direct-share " + " ".join(f"{p:g}" for p in args.gspo_direct_share)
                               if any(args.gspo_direct_share) else "")
                            + (f" --mpo {args.mpo} --mpo-lr {' '.join(f'{lr:g}' for lr in args.mpo_lr)} "
                               f"--mpo-questions {args.mpo_questions}"
                               + (f" --mpo-weights {' '.join(f'{w:g}' for w in args.mpo_weights)}"
                                  if tuple(args.mpo_weights) != MPO_WEIGHTS else "")
                               + (f" --mpo-direct-share {args.mpo_direct_share:g}" if args.mpo_direct_share else "")
                               if args.mpo else "")
                            if "gspo" in args.parts else ""),
              **{k: v for k, v in results.items() if v}}
    # paths inside the work folder as WORK/..., so the record reads the same on any machine
    (out / "thinking.json").write_text(json.dumps(record, indent=1).replace(f"{work}/", "WORK/") + "\n")
    plot(record, out / "thinking.png")
    if "gspo_curves" in record:
        plot_gspo(record["gspo_curves"], out / "gspo_thinking.png")
    if len({arm["lr"] for arm in record.get("mpo_arms", {}).values()}) > 1:
        plot_mpo_lr(record, out / "mpo_lr.png")
    print(f"-> {out / 'thinking.json'}, {out / 'thinking.png'} in {record['total_seconds'] / 60:.1f} min")


def gspo_thinking(args, work: Path, fused: Path, fusion: list[str], tok, log: dict, run, n: int) -> dict:
    """Thinking-mode GSPO, per seed, from the think-fused model trained `--gspo-sft-steps` more think-fusion
    steps (the SFT model of this cascade), with the gspo stage of recipes/cascade-rl.yaml and `think: true`
    (replies of up to `n` tokens, `--budget` of them thinking), once per `--gspo-direct-share` (the share of
    questions asked directly instead, 0: thinking only). With `--mpo M`, per seed also thinking-mode MPO from
    the SFT model (`mpo_thinking`) and each GSPO run once more from that seed's MPO model. The SFT model and
    each MPO and GSPO model are asked both ways, and so are the controls: the SFT model trained as many more
    think-fusion steps as GSPO (and MPO) took. Returns each GSPO run's curves and each MPO arm's rate and seed
    (by its label)."""
    def more_fusion(name: str, init: Path, k: int) -> Path:
        return trained(name, "think-fusion", work, fusion + [f"stages.0.steps={k}", "stages.0.warmup_steps=10",
                                                             f"init.path={init}"], log)

    def both_ways(label: str, path: Path) -> None:
        model = load_pretrained(path)
        run("gspo_thinking", f"{label}, think=True", LocalAnswerer(model, tok, 64, n, True, args.budget), True, path)
        run("gspo_thinking", f"{label}, think=False", LocalAnswerer(model, tok, 64, 8, think=False), True, path)

    sft_name = f"fused+{args.gspo_sft_steps}" if args.gspo_sft_steps else "fused"
    sft = more_fusion(sft_name, fused, args.gspo_sft_steps) if args.gspo_sft_steps else fused
    both_ways(f"SFT ({sft_name})", sft)
    starts = {seed: [(sft_name, sft, None)] for seed in args.seeds}  # where each seed's GSPO runs start (MPO lr)
    mpo_share, mpo_arms = args.mpo_direct_share, {}

    def rate(lr: Optional[float]) -> str:  # in the labels of models trained at a rate other than the default
        return f"lr {lr:g}" if lr is not None and lr != MPO_LR else ""

    for lr, seed in itertools.product(args.mpo_lr, args.seeds) if args.mpo else ():
        mpo = mpo_thinking(args, work, sft, sft_name, seed, lr, n, log)
        weights = "/".join(f"{w:g}" for w in mpo_weights(args).values())
        settings = [f"{args.gspo_reward} pairs", f"{mpo_share:g} direct" if mpo_share else "", rate(lr),
                    f"weights {weights}" if weights else ""]
        label = f"MPO ({', '.join(filter(None, settings))}) seed {seed}"
        both_ways(label, mpo)
        mpo_arms[label] = {"lr": lr, "seed": seed}
        starts[seed].append((mpo.parent.name.removesuffix(f"-s{seed}"), mpo, lr))
    # PPO-sized clip: the paper's [1 - 3e-4, 1 + 4e-4] is sized for replies of thousands of tokens.
    low, high = args.gspo_filter
    base = {"steps_per_rollout": 2, "eps_low": 0.2, "eps_high": 0.28, "think": True, "accuracy_low": low,
            "accuracy_high": high, "strict_answer": args.gspo_reward == "strict",
            "thinking_budget": args.budget, "max_new_tokens": n}
    overrides = ["stages.0.batch_size=16", f"stages.0.steps={args.gspo_steps}", f"stages.0.lr={args.gspo_lr}",
                 f"checkpoint_every={args.gspo_steps}"]
    curves = {}
    # each arm's seeds side by side (GSPO from SFT, then from MPO), as the plots and tables read them
    gspo = itertools.product(args.gspo_direct_share, range(len(starts[args.seeds[0]])), args.seeds)
    for share, start, seed in gspo if args.gspo_steps else ():
        init_name, init, mpo_lr = starts[seed][start]
        options = {**base, "direct_share": share} if share else base
        mode = f"think-direct{share:g}" if share else "think"
        lr_tag = f"-lr{args.gspo_lr:g}" if args.gspo_lr != GSPO_LR else ""
        name = f"gspo{args.gspo_steps}-{mode}{lr_tag}-{args.gspo_reward}-from-{init_name}-s{seed}"
        out = work / "runs" / name
        if not reuse(out, log, name, {"gspo": options, "overrides": overrides}):
            t0 = time.time()
            train(cascade_stage("gspo", work, options, init, seed, overrides), out)
            record(out, log, name, {"recipe": "cascade-rl (gspo stage)", "init": init_name, "seed": seed,
                                    "gspo": options, "overrides": overrides, "seconds": round(time.time() - t0, 1)})
        curves[name] = metric_series(out / "metrics.jsonl", "gspo",
                                     ("reward", "accuracy", "response_length", "kept", "clip_fraction",
                                      "think_accuracy", "direct_accuracy"))
        arm = "GSPO" if start == 0 else "MPO + GSPO"
        gspo_lr = f", lr {args.gspo_lr:g}" if lr_tag else ""
        both_ways(f"{arm} ({args.gspo_reward} reward{f', {share:g} direct' if share else ''}{gspo_lr}"
                  f"{', MPO ' + rate(mpo_lr) if rate(mpo_lr) else ''}) seed {seed}", out / "final")
    # Controls: the think-fusion SFT loss for as many more optimizer steps, from the same SFT model.
    for k in () if args.no_control else dict.fromkeys(k for k in (args.mpo, args.gspo_steps) if k):
        control = f"{sft_name}+{k}"
        both_ways(f"think-fusion continued ({control})", more_fusion(control, sft, k))
    return curves, mpo_arms


def reuse(out: Path, log: dict, name: str, settings: dict) -> bool:
    """Whether the run in `out` is trained (its record then goes into `log`); a run trained with other
    `settings` (keys of its bench_record.json) stops the bench."""
    made = out / "bench_record.json"
    made_by = json.loads(made.read_text()) if made.exists() else None
    if made_by is not None and {k: made_by.get(k) for k in settings} != settings:
        raise SystemExit(f"{out} was trained with other settings ({made}); delete it to rerun with these")
    if (out / "final").is_dir() and made_by is not None:
        log[name] = made_by
    return (out / "final").is_dir()


def cascade_stage(stage: str, work: Path, options: dict, init: Path, seed: int, overrides: list[str]):
    """The `stage` stage of recipes/cascade-rl.yaml alone, its objective's `options` updated, from `init`."""
    from nativevlm.config import read_yaml
    from nativevlm.quickstart import RECIPES
    from nativevlm.train.recipe import recipe_from_dict, relocate_paths

    data = relocate_paths(read_yaml(RECIPES / "cascade-rl.yaml", "recipe"), work)
    data.pop("curves", None)  # the recipe's learning curves on val: this script evaluates on test itself
    data["stages"] = [s for s in data["stages"] if s["name"] == stage]
    data["stages"][0]["objectives"][0].update(options)
    data.update(init={"path": str(init)}, seed=seed, device="cpu")
    return recipe_from_dict(data, overrides)


def mpo_weights(args) -> dict:
    """`--mpo-weights` as the mpo objective's options where they differ from the recipe's; {} at the recipe's."""
    return {} if tuple(args.mpo_weights) == MPO_WEIGHTS else dict(zip(("dpo", "bco_pair", "sft"), args.mpo_weights))


def mpo_thinking(args, work: Path, sft: Path, sft_name: str, seed: int, lr: float, n: int, log: dict) -> Path:
    """Thinking-mode MPO from the SFT model: 8 thinking replies (seed `seed`, up to `n` tokens, `--budget` of them
    thinking) to each of the first `--mpo-questions` training questions, a pair per question with a right and
    a wrong reply (`nativevlm data preferences --think`, strict as the GSPO reward), then `--mpo` steps of the mpo
    stage of recipes/cascade-rl.yaml on those pairs at learning rate `lr`; with `--mpo-direct-share P` a share P
    of the questions is asked directly instead, so the pairs train both modes."""
    strict, share = args.gspo_reward == "strict", args.mpo_direct_share
    mode = f"-direct{share:g}" if share else ""
    pairs = work / "data" / "preferences" / (f"think{mode}-{sft_name}-q{args.mpo_questions}-b{args.budget}"
                                             f"-{args.gspo_reward}-s{seed}.jsonl")
    weights = mpo_weights(args)
    tag = f"-lr{lr:g}" * (lr != MPO_LR) + ("-w" + ",".join(f"{w:g}" for w in weights.values())) * bool(weights)
    name = f"{sft_name}+mpo{args.mpo}{mode}{tag}-s{seed}"
    out = work / "runs" / name
    overrides = [f"stages.0.steps={args.mpo}", f"stages.0.lr={lr:g}", f"checkpoint_every={args.mpo}",
                 "max_length=384"]  # room for a thinking turn (the recipe's 320 is sized for direct answers)
    settings = {"overrides": overrides, "pairs_file": pairs.name, **({"mpo": weights} if weights else {})}
    if not reuse(out, log, name, settings):  # the pairs only to train
        sh("data", "preferences", str(work / "data" / "world" / "train.json"), "--model", str(sft), "--out",
           str(pairs), "--seed", str(seed), "--limit", str(args.mpo_questions), "--max-new-tokens", str(n), "--think",
           "--thinking-budget", str(args.budget), *(["--strict"] if strict else []),
           *(["--direct-share", f"{share:g}"] if share else []), "--device", "cpu")
        made = json.loads(Path(f"{pairs}.summary.json").read_text())
        t0 = time.time()
        stage = cascade_stage("mpo", work, weights, sft, seed, overrides + [f"stages.0.data=[{{path: {pairs}}}]"])
        train(stage, out)
        record(out, log, name, {"recipe": "cascade-rl (mpo stage)", "init": sft_name, "seed": seed, **settings,
                                "pairs": {k: made[k] for k in ("questions", "pairs", "skipped")},
                                "seconds": round(time.time() - t0, 1)})
    return out / "final"


def plot_gspo(curves: dict, path: Path) -> None:
    """Per optimizer step of each thinking-mode GSPO run: reward, accuracy, reply length, clip fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = {"reward": "mean reward per rollout (correct 1 + format 0.5)", "accuracy": "rollout accuracy",
            "response_length": "reply tokens (thinking + answer)", "clip_fraction": "clip fraction (off-policy steps)"}
    if any(c.get("direct_accuracy") for c in curves.values()):  # runs in both modes: each mode's accuracy
        keys.update(think_accuracy="rollout accuracy, questions asked to think",
                    direct_accuracy="rollout accuracy, questions asked directly")
    cols = len(keys) if len(keys) <= 4 else 3  # one row of four, or two rows of three with both modes
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows + 0.25 * len(curves)), squeeze=False)
    for ax, (key, title) in zip(axes.flat, keys.items()):
        for k, (name, c) in enumerate(curves.items()):
            if c.get(key):
                x, y = map(np.array, zip(*c[key]))
                ax.plot(x, y, lw=0.7, alpha=0.35, color=f"C{k}")
                w = min(10, len(y))  # rollouts are 16 questions each: a running mean shows the trend
                ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, "valid"), lw=2, color=f"C{k}",
                        label=f"{name} (mean of {w})")
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
    # one legend below the panels: run names are long, and a legend in each panel hides its curves
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 * len(curves) / rows / 2 + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def extract_think(args, qs: Path, work: Path, world: Path, tok, log: dict, steps, run, n: int) -> None:
    """VET vs caption perceivers, each with a direct and a thinking reasoner, and perfect perception."""
    vet = trained("vet", "vet-perceiver", work, VLM + steps(args.vet_steps), log)
    caption = qs / "runs" / "native" / "final"
    if args.caption_steps:
        caption = trained("caption", "vet-perceiver", work, VLM + steps(args.caption_steps) + [  # full paths: overrides
            f"stages.0.data.0.path={world / 'train_captions.json'}",  # are not relocated
            f"stages.0.val_data={world / 'val_captions.json'}"], log)
    reasoner = trained("reasoner", "reasoner", work, LM + [f"stages.0.steps={args.reasoner_steps}",
                                                           "stages.0.data.0.thinking=0.5"], log)
    lm = load_pretrained(reasoner)
    reasoners = {"direct": LocalAnswerer(lm, tok, 64, 8, think=False),
                 "thinking": LocalAnswerer(lm, tok, 64, n, True, args.budget)}
    perceivers = {"caption": (LocalAnswerer(load_pretrained(caption), tok, 64, 128), EXTRACT_PROMPT),
                  "vet": (LocalAnswerer(load_pretrained(vet), tok, 64, 160), VET_PROMPT),
                  "truth": (KnownDescriptions(world / "test_captions.json"), EXTRACT_PROMPT)}
    for p_name, (perceiver, prompt) in perceivers.items():
        pipeline = ExtractThink(perceiver, reasoners["direct"], prompt)
        for r_name, r in reasoners.items():
            pipeline.reasoner = r  # the descriptions are cached: each perceiver describes once
            run("extract_think", f"{p_name} + {r_name} reasoner", pipeline, r_name == "thinking")


def plot_mpo_lr(record: dict, path: Path) -> None:
    """Overall held-out accuracy of each MPO model against its learning rate, asked thinking and directly, beside
    the SFT model it started from and the control (as many more think-fusion steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, results = record["mpo_arms"], record["gspo_thinking"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (mode, what) in zip(axes, (("think=True", "thinking"), ("think=False", "answering directly"))):
        for seed, marker in zip(sorted({a["seed"] for a in arms.values()}), "os^v"):
            points = sorted((a["lr"], results[f"{label}, {mode}"]["accuracy"]) for label, a in arms.items()
                            if a["seed"] == seed)
            ax.plot(*zip(*points), marker=marker, label=f"+MPO, seed {seed}")
        for name, v in results.items():
            if name.endswith(f", {mode}") and (name.startswith("SFT") or name.startswith("think-fusion continued")):
                style = "--" if name.startswith("SFT") else ":"
                ax.axhline(v["accuracy"], ls=style, color="grey", label=name.removesuffix(f", {mode}"))
        ax.set(xscale="log", xlabel="MPO learning rate", title=what)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (held-out test, overall)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    """Accuracy per family of each direct/thinking arm (grouped bars), and of each Extract+Think pair; the GSPO
    arms in two panels, thinking and direct, each model once per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (title, {arm: summary})
    if results.get("direct_vs_thinking"):
        panels.append(("the same weights, direct or thinking", results["direct_vs_thinking"]))
    if results.get("gspo_thinking"):
        arms = results["gspo_thinking"]
        control = " (and its SFT control)" if any(a.startswith("think-fusion continued") for a in arms) else ""
        rl = "MPO and GSPO" if any(a.startswith("MPO") for a in arms) else "GSPO"
        for mode, what in (("think=True", "thinking"), ("think=False", "answering directly")):
            chosen = {a.removesuffix(f", {mode}"): v for a, v in arms.items() if a.endswith(f", {mode}")}
            if chosen:
                panels.append((f"after thinking-mode {rl}{control}: {what}", chosen))
    if results.get("extract_think"):
        panels.append(("Extract+Think: perceiver + reasoner", results["extract_think"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.6), squeeze=False)
    for ax, (title, arms) in zip(axes[0], panels):
        families = list(next(iter(arms.values()))["by_family"]) + ["overall"]
        width = 0.8 / len(arms)
        colours = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
        for k, (name, s) in enumerate(arms.items()):
            values = [s["by_family"].get(f, 0) for f in families[:-1]] + [s["accuracy"]]
            ax.bar([i + k * width for i in range(len(families))], values, width, label=name, color=colours(k))
        ax.set_xticks([i + width * (len(arms) - 1) / 2 for i in range(len(families))], families, rotation=30)
        ax.set_ylabel("accuracy (held-out test)")
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
