"""A run's objectives against optimizer steps: `<run>/objectives.png`, drawn by the trainer when the run ends.

What an objective shows is its own choice (`Objective.panels`: a title and the metrics drawn in it), so a
post-training run gets MPO's loss terms and implicit rewards, GSPO's rollout reward and accuracy, clip fraction
and reply length, the visual resolution router its accuracy, each read from `metrics.jsonl` (the rows the trainer
logged as `<objective>/<metric>`). Objectives without panels (SFT's loss, which `val_loss` and the learning
curves say more about) are not drawn; a run with none of them gets no plot. A metric logged on some steps only
(GSPO's reward on a rollout's first step) is drawn on those steps; a long series is drawn faint with its running
mean over 20 points over it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

SMOOTH = 20  # running mean over this many points once a series is longer than 50


def objective_panels(rows: list[dict]) -> list[tuple[str, list[tuple[str, list[int], list[float]]]]]:
    """The panels to draw: for each objective in the log (by its `<name>/` prefix, in the order it first
    appears) that declares panels, each panel's title and its series (metric key, steps, values), skipping
    metrics never logged."""
    from .objectives import REGISTRY

    names: list[str] = []
    for row in rows:
        for key in row:
            name = key.split("/", 1)[0]
            if "/" in key and name in REGISTRY and name not in names:
                names.append(name)
    out = []
    for name in names:
        for title, metrics in REGISTRY[name].panels:
            series = []
            for metric in metrics:
                key = f"{name}/{metric}"
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if points:
                    steps, values = zip(*points)
                    series.append((key, list(steps), list(values)))
            if series:
                out.append((title, series))
    return out


def plot_objectives(metrics_path: Path, png: Path, title: Optional[str] = None) -> list[str]:
    """Draw the run's objective panels into `png`; returns the panel titles drawn (none: no file written)."""
    from ..eval.curves import read_metrics  # here, not at the top: the trainer imports this module

    panels = objective_panels(read_metrics(metrics_path))
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.8 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (panel_title, series) in zip(axes.ravel(), panels):
        for i, (key, steps, values) in enumerate(series):
            c = colours(i % 10)
            if len(values) > 50:
                ax.plot(steps, values, color=c, lw=0.6, alpha=0.3)
                mean = np.convolve(values, np.ones(SMOOTH) / SMOOTH, mode="valid")
                ax.plot(steps[SMOOTH - 1:], mean, color=c, lw=1.8, label=f"{key} (mean of {SMOOTH})")
            else:
                ax.plot(steps, values, "-o", ms=2.5, color=c, lw=1.2, label=key)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [t for t, _ in panels]
