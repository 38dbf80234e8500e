"""The study's figures: learning curves with their fits, and the optimal-encoder line."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from .fit import loss_at, read_study_csv


def _pyplot():
    import matplotlib  # deferred: heavy to import, and the backend must be chosen before pyplot loads

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _colours(ax, n: int) -> None:
    """Distinct colours for up to 20 lines (the default cycle repeats after 10)."""
    if n > 10:
        ax.set_prop_cycle(color=_pyplot().cm.tab20.colors)


def plot_curves(csv_path, fit: dict, path: Path) -> None:
    plt = _pyplot()
    cells = read_study_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _colours(ax, len(fit["cells"]))
    for entry in fit["cells"]:
        data = cells[entry["cell"]]
        if not data["samples"]:
            continue
        (points,) = ax.plot(data["samples"], data["val_loss"], "o", ms=3, label=entry["cell"])
        if entry["alpha"] is not None:
            x = np.logspace(np.log10(min(data["samples"])), np.log10(max(data["samples"])), 100)
            ax.plot(x, [loss_at(entry, v) for v in x], "-", color=points.get_color(), lw=1,
                    label=f"  fit: E={entry['E']:.3g}, alpha={entry['alpha']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("training samples")
    ax.set_ylabel("validation loss")
    if len(fit["cells"]) > 4:  # beside the axes, not over the points
        fig.set_size_inches(10, 4.5)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_optimal_encoder(fit: dict, path: Path) -> None:
    plt = _pyplot()
    opt = fit["optimal_encoder"]
    rows = [e for e in opt["per_llm"] if e["optimal"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.loglog([e["llm_params"] for e in rows], [e["optimal"] for e in rows], "o", label="optimal (fitted L(E))")
    grid = [e for e in opt["per_llm"] if e["grid_optimal"]]
    ax.loglog([e["llm_params"] for e in grid], [e["grid_optimal"] for e in grid], "x", label="optimal on the grid")
    if opt["slope"] is not None:
        x = np.array([min(e["llm_params"] for e in rows), max(e["llm_params"] for e in rows)])
        ci = opt["slope_ci95"]
        ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        ax.loglog(x, np.exp(opt["intercept"]) * x ** opt["slope"], "-", label=f"slope {opt['slope']:.2f}{ci_text}")
    ax.set_xlabel("LLM parameters")
    ax.set_ylabel(f"optimal encoder parameters (lambda={opt['lambda']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _accuracy_rows(csv_path, prefix: str = "acc/") -> list[dict]:
    with open(csv_path, newline="") as f:
        return [r for r in csv.DictReader(f) if any(k.startswith(prefix) and r[k] for k in r)]


def plot_accuracy(csv_path, path: Path, priors: Optional[dict] = None) -> bool:
    """Held-out accuracy per kind against samples seen, one line per cell (the learning-curve points the
    cells logged while training, `val_acc/...`). False, and no file, when the CSV has no such points."""
    rows = _accuracy_rows(csv_path, "val_acc/")
    if not rows:
        return False
    kinds = tuple(k for k in ("perception", "reasoning") if any(r.get(f"val_acc/{k}") for r in rows)) or ("all",)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), sharey=True, squeeze=False)
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    for ax, kind in zip(axes[0], kinds):
        _colours(ax, len(cells))
        for cell in cells:
            pts = sorted((float(r["samples"]), float(r[f"val_acc/{kind}"])) for r in rows
                         if r["cell"] == cell and r.get(f"val_acc/{kind}"))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1, label=cell)
        if priors and kind in priors:
            ax.axhline(priors[kind], color="k", ls="--", lw=1, label="answer prior (test split)")
        ax.set_title(f"{kind} questions (val subset, while training)")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_final_accuracy(csv_path, path: Path, priors: Optional[dict] = None) -> bool:
    """Each cell's final accuracy per kind (its last row), and each Extract+Think pair's, as grouped bars."""
    final: dict[str, dict] = {}
    for r in _accuracy_rows(csv_path):
        final[r["cell"]] = r  # the last row of a cell carries its final evaluation
    kinds = tuple(k for k in ("perception", "reasoning") if all(r.get(f"acc/{k}") for r in final.values()))
    kinds = kinds or ("all",)
    final = {c: r for c, r in final.items() if all(r.get(f"acc/{k}") for k in kinds)}
    if not final:
        return False
    plt = _pyplot()
    names = list(final)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        x = np.arange(len(names)) + (i - (len(kinds) - 1) / 2) * width
        bars = ax.bar(x, [float(final[n][f"acc/{kind}"]) for n in names], width, label=kind)
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
        if priors and kind in priors:
            ax.hlines([priors[kind]] * len(x), x - width / 2, x + width / 2, colors="k", linestyles="--", lw=1,
                      label="answer prior" if i == 0 else None)
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (test)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_encoder_grid(fit: dict, path: Path) -> bool:
    """Each LLM size's final loss against encoder size (NaViL's Obs 4-5 picture), the grid's optimum
    circled; False, and no file, without an LLM x encoder grid."""
    rows = [e for e in fit["optimal_encoder"]["per_llm"] if len(e["encoders"]) >= 2]
    if not rows:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in rows:
        (line,) = ax.plot(e["encoders"], e["final_losses"], "o-", ms=4, lw=1, label=f"LLM {e['llm_params'] / 1e6:.2f}M")
        if e["grid_optimal"]:
            y = e["final_losses"][e["encoders"].index(e["grid_optimal"])]
            ax.plot([e["grid_optimal"]], [y], "o", ms=11, mfc="none", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"circled: NaViL's optimum on the grid (lambda={fit['optimal_encoder']['lambda']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
