"""Learning curves: what a model can answer, per task family, as it trains.

`LearningCurves` is the training hook behind a recipe's `curves:` block. At each evaluation point it answers
a fixed held-out subset of questions by greedy generation (the same path as `evaluate_qa`), logs accuracy
per family and per kind against samples seen, keeps the per-question records under `<run>/curves/`, and at
the end draws `<run>/curves.png` with each family's answer prior (the share of its most common reference
answer in the subset: what a model that ignores the image and guesses the favourite answer scores) as a
dashed line. A curve that sits on its prior line is a model that has not learnt that family yet, whatever
the loss says.

With `diagnostics.attention` / `diagnostics.sensitivity` it also logs the two measurements that explain a
curve stuck at its prior (see `eval/diagnostics.py`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from ..data.formats import read_samples
from ..data.image import ImageProcessor
from ..data.sample import Sample
from .diagnostics import SensitivityProbe, answer_attention
from .matching import majority_counts
from .world import EvalResult, evaluate_qa, reference_answer

KIND_ORDER = ("perception", "reasoning")


def fixed_subset(samples: Sequence[Sample], n: int) -> list[Sample]:
    """`n` samples taken round-robin over families in file order: every family is represented (up to its
    size) and the subset is the same on every call and every rank."""
    by_family: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_family[s.meta.get("family", "unknown")].append(s)
    queues = [list(v) for _, v in sorted(by_family.items())]
    out: list[Sample] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def answer_priors(samples: Sequence[Sample]) -> dict[str, float]:
    """Per family: the accuracy of always giving that family's most common (normalised) reference answer."""
    counts = majority_counts((s.meta.get("family", "unknown"), reference_answer(s)) for s in samples)
    return {fam: best / total for fam, (best, total) in counts.items()}


def accuracy_row(result: EvalResult) -> dict[str, float]:
    row = {"acc/all": result.accuracy}
    row.update({f"acc/{k}": v for k, (v, _) in result.by("kind").items()})
    row.update({f"acc/{k}": v for k, (v, _) in result.by("family").items()})
    return row


class LearningCurves:
    """The `curves` hook of the trainer (`nativevlm.train.trainer.TrainHook`), configured by `cfg.curves` and
    `cfg.diagnostics` of a TrainConfig."""

    def __init__(self, cfg, log=print):
        self.cfg, self.diag = cfg.curves, cfg.diagnostics
        samples, report = read_samples(self.cfg.data)
        if report.n_skipped:
            log(report.summary())
        self.subset = fixed_subset(samples, self.cfg.samples)
        self.priors = answer_priors(self.subset)
        self.kinds = {s.meta.get("family", "unknown"): s.meta.get("kind", "unknown") for s in self.subset}
        self.scenes = _scenes_beside(self.cfg.data)
        self.sensitivity_probe = None

    def evaluate(self, model, tokenizer, progress: bool = False, processor=None) -> EvalResult:
        processor = processor or ImageProcessor.from_config(model.config.vision, model.config.connector)
        return evaluate_qa(model, tokenizer, processor, self.subset, batch_size=self.cfg.batch_size,
                           max_new_tokens=self.cfg.max_new_tokens, progress=progress)

    def on_eval(self, model, *, tokenizer, step: int, stage: str, samples: int, out_dir: Path,
                is_main: bool) -> dict:
        processor = ImageProcessor.from_config(model.config.vision, model.config.connector)
        result = self.evaluate(model, tokenizer, processor=processor)
        row = accuracy_row(result)
        if self.diag.attention:
            row.update(answer_attention(model, tokenizer, processor, self.subset, self.scenes))
        if self.diag.sensitivity and self.scenes:
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


def read_curve_points(metrics_path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "samples" in r and "acc/all" in r]


def plot_curves(metrics_path: Path, png: Path, priors: dict[str, float], kinds: dict[str, str],
                title: Optional[str] = None) -> None:
    """Accuracy per family against samples seen (one panel per kind), priors dashed, stage starts dotted."""
    import matplotlib  # deferred: heavy to import, and the backend must be chosen before pyplot loads

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
