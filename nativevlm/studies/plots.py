"""The study's figures: learning curves with their fits, and the optimal-encoder line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .fit import loss_at, read_study_csv


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot_curves(csv_path, fit: dict, path: Path) -> None:
    plt = _pyplot()
    cells = read_study_csv(csv_path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
