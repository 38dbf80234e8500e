"""`nativevlm study run STUDY.yaml --out DIR` (train a grid of cells, one CSV row per evaluation point) and
`nativevlm study fit CSV --out DIR` (learning-curve fits, sample ratios, optimal encoder size, plots)."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError
from ..studies.fit import fit_study
from ..studies.plots import plot_accuracy, plot_curves, plot_encoder_grid, plot_final_accuracy, plot_optimal_encoder
from ..studies.runner import benchmark_priors, run_study
from ..studies.spec import load_fit_spec


def register(sub) -> None:
    p = sub.add_parser("study", help="scaling studies: run a grid of training cells, fit the results")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="{run,fit}")
    r = ssub.add_parser("run", help="train every cell of a study not yet in OUT/study.csv (resumes)")
    r.add_argument("study", help="study YAML (see docs/studies/)")
    r.add_argument("--out", required=True, help="study folder: data/, runs/<cell>/, study.csv")
    r.add_argument("--launcher", default="local", choices=("local", "submitit"),
                   help="local: cells one after another here; submitit: each cell a job (Slurm if available)")
    r.add_argument("--cluster", choices=("slurm", "local", "debug"),
                   help="submitit's executor (default: Slurm when sbatch is on PATH, else local)")
    r.set_defaults(func=run)
    f = ssub.add_parser("fit", help="fit a study CSV: per-cell curves, sample ratios, optimal encoder; plots")
    f.add_argument("csv", help="study.csv written by `study run`")
    f.add_argument("--out", required=True, help="folder for fit.json and the PNG plots")
    f.add_argument("--compare", action="append", default=[], metavar="ARM:BASELINE",
                   help="samples the baseline needs / samples the arm needs to reach the baseline's final loss "
                        "(repeatable; default: the study.yaml's fit.compare beside the CSV)")
    f.add_argument("--lambda", dest="lam", type=float,
                   help="NaViL's optimal-encoder threshold (default: the study's fit.encoder_lambda, or 0.01)")
    f.set_defaults(func=fit)


def run(args) -> int:
    csv_path = run_study(args.study, args.out, args.launcher, args.cluster)
    print(f"study CSV: {csv_path}\nfit it with: nativevlm study fit {csv_path} --out {csv_path.parent / 'fit'}")
    return 0


def fit(args) -> int:
    csv_path, out = Path(args.csv), Path(args.out)
    beside = csv_path.parent / "study.yaml"
    spec = load_fit_spec(beside) if beside.is_file() else None
    compare = []
    for pair in args.compare:
        arm, sep, baseline = pair.partition(":")
        if not sep or not arm or not baseline:
            raise ConfigError(f"--compare {pair!r}: write ARM:BASELINE (two cell names)")
        compare.append((arm, baseline))
    if not compare and spec is not None:
        compare = [tuple(p) for p in spec.compare]
    lam = args.lam if args.lam is not None else (spec.encoder_lambda if spec is not None else 0.01)

    result = fit_study(csv_path, compare, lam)
    result["priors"] = benchmark_priors(beside)  # each kind's answer prior, drawn on the accuracy plots
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(result, indent=1) + "\n")
    plots = [out / "curves.png"]
    plot_curves(csv_path, result, plots[0])
    if any(e["optimal"] for e in result["optimal_encoder"]["per_llm"]):  # a grid of LLM x encoder sizes
        plots.append(out / "optimal_encoder.png")
        plot_optimal_encoder(result, plots[1])
    if plot_encoder_grid(result, out / "encoder_grid.png"):
        plots.append(out / "encoder_grid.png")
    for name, draw in (("accuracy.png", plot_accuracy), ("final_accuracy.png", plot_final_accuracy)):
        if draw(csv_path, out / name, result["priors"]):  # what the cells learnt: held-out accuracy per kind
            plots.append(out / name)
    for c in result["cells"]:
        if c["alpha"] is not None:
            print(f"{c['cell']:24s} E={c['E']:.4f} A={c['A']:.4g} alpha={c['alpha']:.4f}")
        else:
            print(f"{c['cell']:24s} {c['note']}")
    for r in result["ratios"]:
        if r.get("ratio") is not None:
            print(f"{r['baseline']} needs {r['ratio']:.2f}x the samples of {r['arm']} to reach its final loss "
                  f"{r['target_loss']:.4f}" + (" (extrapolated)" if r["extrapolated"] else "") + " (fitted curves)")
            if r.get("measured_ratio") is not None:
                print(f"  measured points: {r['arm']} first reaches {r['measured_target_loss']:.4f} at "
                      f"{r['measured_arm_samples']:.0f} samples, {r['measured_ratio']:.2f}x fewer")
            elif "measured_ratio" in r:
                print(f"  measured points: {r['arm']} never reaches {r['baseline']}'s last loss "
                      f"{r['measured_target_loss']:.4f}")
    opt = result["optimal_encoder"]
    for e in opt["per_llm"]:
        if e["grid_optimal"] or e["optimal"] or e.get("note"):
            print(f"LLM {e['llm_params']}: optimal encoder on the grid {e['grid_optimal']}, from the fitted curve "
                  + (f"{e['optimal']:.4g}" if e["optimal"] else f"none ({e.get('note', 'not fitted')})"))
    if opt["slope"] is None and opt["per_llm"]:
        print("no slope: fewer than two LLM sizes have an optimal encoder read off a fitted curve")
    if opt["slope"] is not None:
        print(f"optimal encoder size ~ LLM size^{opt['slope']:.3f}" +
              (f" (95% CI {opt['slope_ci95'][0]:.3f} .. {opt['slope_ci95'][1]:.3f})" if opt["slope_ci95"] else ""))
    print(f"fit: {out / 'fit.json'}  plots: {', '.join(map(str, plots))}")
    return 0
