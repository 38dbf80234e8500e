"""Learning curves: what a model can answer, per task family, as it trains.

`LearningCurves` is the training hook behind a recipe's `curves:` block. At each evaluation point it answers
a fixed held-out subset of questions (a benchmark of `harness`, answered by the serving engine through
`local.LocalAnswerer`: the path of every other evaluation), logs accuracy per family (the benchmark's
category) and per kind against samples seen, keeps the per-question records under `<run>/curves/`, and at
the end draws `<run>/curves.png` with each family's answer prior (`harness.answer_priors`: what a model that
ignores the image and guesses the favourite answer scores) as a dashed line. A curve that sits on its prior
line is a model that has not learnt that family yet, whatever the loss says.

With `diagnostics.attention` / `diagnostics.sensitivity` it also logs the two measurements that explain a
curve stuck at its prior (see `eval/diagnostics.py`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from ..data.image import ImageProcessor
from .benchmarks import Benchmark, Item, llava_qa
from .harness import BenchResult, answer_priors, evaluate
from .local import LocalAnswerer

KIND_ORDER = ("perception", "reasoning")


def fixed_subset(items: Sequence[Item], n: int) -> list[Item]:
    """`n` questions taken round-robin over families (categories) in file order: every family is represented
    (up to its size) and the subset is the same on every call and every rank."""
    by_family: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_family[item.category].append(item)
    queues = [list(v) for _, v in sorted(by_family.items())]
    out: list[Item] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def accuracy_row(result: BenchResult) -> dict[str, float]:
    s = result.summary()
    row = {"acc/all": s["accuracy"]}
    row.update({f"acc/{k}": v["accuracy"] for k, v in s["by_kind"].items() if k})
    row.update({f"acc/{k}": v["accuracy"] for k, v in s["by_category"].items()})
    return row


class LearningCurves:
    """The `curves` hook of the trainer (`nativevlm.train.trainer.TrainHook`), configured by `cfg.curves` and
    `cfg.diagnostics` of a TrainConfig."""

    def __init__(self, cfg, log=print):
        self.cfg, self.diag = cfg.curves, cfg.diagnostics
        data = llava_qa.read(Path(self.cfg.data), log)
        self.subset = fixed_subset(data.items, self.cfg.samples)
        self.bench = Benchmark(data.name, data.source, self.subset)
        self.priors = answer_priors(self.subset)
        self.kinds = {item.category: item.kind or "unknown" for item in self.subset}
        self.scenes = _scenes_beside(self.cfg.data)
        self.sensitivity_probe = None

    def evaluate(self, model, tokenizer, progress: bool = False) -> BenchResult:
        answerer = LocalAnswerer(model, tokenizer, self.cfg.batch_size, self.cfg.max_new_tokens)
        return evaluate(self.bench, answerer, progress)

    def on_eval(self, model, *, tokenizer, step: int, stage: str, samples: int, out_dir: Path,
                is_main: bool) -> dict:
        result = self.evaluate(model, tokenizer)
        row = accuracy_row(result)
        if self.diag.attention:
            from .diagnostics import answer_attention

            processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
            row.update(answer_attention(model, tokenizer, processor, self.subset, self.scenes))
        if self.diag.sensitivity and self.scenes:
            from .diagnostics import SensitivityProbe

            self.sensitivity_probe = self.sensitivity_probe or SensitivityProbe(list(self.scenes.values()))
            row.update(self.sensitivity_probe(model))
        if is_main:
            folder = Path(out_dir) / "curves"
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / f"step_{step:07d}.jsonl").open("w") as f:
                for r in result.records:
                    f.write(json.dumps({**r, "step": step, "stage": stage, "samples": samples}) + "\n")
        return row

    def on_end(self, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        (out_dir / "curves.json").write_text(json.dumps(
            {"data": self.cfg.data, "n": len(self.subset), "priors": self.priors, "kinds": self.kinds}, indent=1) + "\n")
        plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png", self.priors, self.kinds)


def hooks_for(cfg, log=print) -> list:
    """The training hooks a recipe asks for: learning curves (and their diagnostics) when `curves.data` is
    set. `nativevlm train`, the quickstart and the study runner attach these."""
    return [LearningCurves(cfg, log)] if cfg.curves.data else []


def _scenes_beside(qa_path: str) -> dict[str, dict]:
    """The world's ground truth for a `<split>.json` QA file (`<split>_scenes.jsonl` beside it), by scene id;
    empty for other datasets."""
    path = Path(qa_path)
    scenes = path.with_name(f"{path.stem}_scenes.jsonl")
    if not scenes.is_file():
        return {}
    rows = (json.loads(line) for line in scenes.read_text().splitlines() if line.strip())
    return {r["id"]: r for r in rows}


def read_metrics(metrics_path: Path) -> list[dict]:
    """The rows a run logged to its `metrics.jsonl` (`train.metrics.MetricsLog`); none when there is no file."""
    path = Path(metrics_path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_series(metrics_path: Path, prefix: str, names: tuple[str, ...]) -> dict[str, list[list]]:
    """Each of a run's `<prefix>/<name>` metrics as [step, value] pairs, on the steps that logged it (a GSPO
    rollout's reward only on rollout steps)."""
    rows = read_metrics(metrics_path)
    return {n: [[r["step"], r[f"{prefix}/{n}"]] for r in rows if f"{prefix}/{n}" in r] for n in names}


def read_curve_points(metrics_path: Path) -> list[dict]:
    return [r for r in read_metrics(metrics_path) if "samples" in r and "acc/all" in r]


def plot_curves(metrics_path: Path, png: Path, priors: dict[str, float], kinds: dict[str, str],
                title: Optional[str] = None) -> None:
    """Accuracy per family against samples seen (one panel per kind), priors dashed, stage starts dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = read_curve_points(metrics_path)
    if not points:
        return
    panels = [k for k in KIND_ORDER if k in kinds.values()] or sorted(set(kinds.values()))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), squeeze=False)
    xs = [p["samples"] for p in points]
    colours = plt.get_cmap("tab10")
    for ax, kind in zip(axes[0], panels):
        fams = [f for f in sorted(kinds) if kinds[f] == kind]
        for i, fam in enumerate(fams):
            c = colours(i % 10)
            ax.plot(xs, [p.get(f"acc/{fam}", float("nan")) for p in points], "-o", ms=3, color=c, label=fam)
            ax.axhline(priors.get(fam, float("nan")), color=c, ls="--", lw=0.9, alpha=0.8)
        ax.plot(xs, [p.get(f"acc/{kind}", float("nan")) for p in points], "-", color="black", lw=2.2,
                label=f"all {kind}")
        for prev, p in zip(points, points[1:]):  # a stage starts where the previous one's last point is
            if p["stage"] != prev["stage"]:
                ax.axvline(prev["samples"], color="grey", ls=":", lw=1)
                ax.text(prev["samples"], 1.06, f" {p['stage']}", fontsize=7, color="grey", rotation=90,
                        ha="left", va="top")
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("training samples seen")
        ax.set_ylabel("held-out accuracy (dashed: answer prior)")
        ax.set_title(f"{kind}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
