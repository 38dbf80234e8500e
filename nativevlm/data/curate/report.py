"""Curation report: `report.json` (counts, timings, stage facts, every drop), `report.md` (a table and a few
examples per drop reason) and one PNG of score histograms per stage, kept vs dropped."""
from __future__ import annotations

import json
from pathlib import Path

from .base import CurationResult


def summary_dict(result: CurationResult) -> dict:
    return {
        "input": str(result.source),
        "n_in": result.n_in,
        "n_kept": len(result.kept),
        "n_dropped": result.n_in - len(result.kept),
        "dropped_by_reason": result.drops,
        "stage_seconds": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        "stages": result.stage_summaries,
    }


def plot_scores(result: CurationResult, out_dir: Path) -> list[Path]:
    import matplotlib  # deferred: heavy to import, and the backend must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_stage: dict[str, list[str]] = {}
    for o in result.outcomes:
        for key in o.scores:
            stage = key.split(".")[0]
            if key not in by_stage.setdefault(stage, []):
                by_stage[stage].append(key)
    paths = []
    for stage, keys in by_stage.items():
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            kept = [o.scores[key] for o in result.outcomes if key in o.scores and not o.reason]
            dropped = [o.scores[key] for o in result.outcomes if key in o.scores and o.reason]
            data = kept + dropped
            bins = 40 if len(set(data)) > 1 else 1
            rng = (min(data), max(data)) if len(set(data)) > 1 else None
            ax.hist(kept, bins=bins, range=rng, alpha=0.7, label=f"kept ({len(kept)})", color="tab:blue")
            ax.hist(dropped, bins=bins, range=rng, alpha=0.7, label=f"dropped ({len(dropped)})", color="tab:red")
            thr = result.stage_summaries.get(stage, {}).get("threshold")
            if key.endswith("alignment") and isinstance(thr, (int, float)):
                ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.2f}")
            ax.set_title(key)
            ax.set_ylabel("records")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"scores_{stage}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(result: CurationResult, out_dir: Path, examples: int = 3) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_dict(result)
    drops = [{"index": o.index, "id": o.id, "reason": o.reason, "detail": o.detail}
             for o in result.outcomes if o.reason]
    (out_dir / "report.json").write_text(json.dumps({**summary, "drops": drops}, indent=2) + "\n")
    pngs = plot_scores(result, out_dir)
    lines = [f"# Curation report: `{result.source}`", "",
             f"{result.n_in} records in, {len(result.kept)} kept, {result.n_in - len(result.kept)} dropped.", "",
             "| reason | dropped | share of input |", "|---|---:|---:|"]
    for reason, n in result.drops.items():
        lines.append(f"| `{reason}` | {n} | {100 * n / max(result.n_in, 1):.1f}% |")
    lines += ["", "| stage | seconds | notes |", "|---|---:|---|"]
    for stage, sec in result.stage_seconds.items():
        notes = ", ".join(f"{k}: {v}" for k, v in result.stage_summaries.get(stage, {}).items()
                          if not isinstance(v, list))
        lines.append(f"| {stage} | {sec:.2f} | {notes} |")
    lines += ["", "## Examples per drop reason", ""]
    for reason in result.drops:
        lines.append(f"**`{reason}`**")
        lines += [f"- record #{d['index']} (`{d['id']}`): {d['detail']}"
                  for d in drops if d["reason"] == reason][:examples]
        lines.append("")
    lines += ["## Score histograms", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
