"""The run's objectives plot (`train.plots`): each objective draws the panels it declares, from the rows the
trainer logged, on the steps each metric was logged."""
import json

from nativevlm.train.objectives.gspo import GSPO
from nativevlm.train.objectives.mpo import MPO
from nativevlm.train.plots import objective_panels, plot_objectives


def cascade_rows() -> list[dict]:
    """SFT for 2 steps, MPO for 2, GSPO for 4 with 2 steps per rollout: its reward on the rollout steps only."""
    rows = [{"step": s, "stage": "sft", "loss": 2.0, "sft/loss": 2.0} for s in (1, 2)]
    rows += [{"step": s, "stage": "mpo", "loss": 1.0, "mpo/loss": 1.0, "mpo/dpo": 1 / s, "mpo/bco_pair": 1.38,
              "mpo/sft": 0.4, "mpo/delta": 0.0, "mpo/reward_accuracy": 0.5, "mpo/reward_margin": 0.01 * s}
             for s in (3, 4)]
    for s in (5, 6, 7, 8):
        row = {"step": s, "stage": "gspo", "loss": 0.0, "gspo/loss": 0.0, "gspo/clip_fraction": 0.0 if s % 2 else 0.5,
               "gspo/ratio": 1.0}
        if s % 2:  # a rollout's first, on-policy step
            row.update({"gspo/reward": s / 8, "gspo/accuracy": 0.4, "gspo/response_length": 2.0,
                        "gspo/kept": 0.75})
        rows.append(row)
    return rows


def test_each_objective_draws_its_own_panels_on_the_steps_it_logged():
    panels = dict(objective_panels(cascade_rows()))
    assert list(panels) == [t for t, _ in MPO.panels] + [t for t, _ in GSPO.panels]  # nothing for sft
    rollout = {key: (steps, values) for key, steps, values in panels[GSPO.panels[0][0]]}
    assert list(rollout) == ["gspo/reward", "gspo/accuracy", "gspo/kept"]  # think/direct accuracy: never logged
    assert rollout["gspo/reward"] == ([5, 7], [5 / 8, 7 / 8])
    clip = panels[GSPO.panels[1][0]]
    assert clip == [("gspo/clip_fraction", [5, 6, 7, 8], [0.0, 0.5, 0.0, 0.5])]
    terms = {key: values for key, _, values in panels[MPO.panels[0][0]]}
    assert terms["mpo/dpo"] == [1 / 3, 1 / 4]


def test_plot_written_only_for_objectives_that_draw(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in cascade_rows()))
    titles = plot_objectives(metrics, tmp_path / "objectives.png")
    assert len(titles) == len(MPO.panels) + len(GSPO.panels)
    assert (tmp_path / "objectives.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in cascade_rows()[:2]))  # SFT alone
    assert plot_objectives(metrics, tmp_path / "sft.png") == [] and not (tmp_path / "sft.png").exists()
    assert plot_objectives(tmp_path / "missing.jsonl", tmp_path / "none.png") == []


def test_metric_series_reads_each_metric_on_the_steps_it_was_logged(tmp_path):
    """`eval.curves.metric_series`, the per-step series the post-training studies store: [step, value] pairs of
    `<prefix>/<name>`, a metric never logged an empty list, a missing file nothing."""
    from nativevlm.eval.curves import metric_series
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in cascade_rows()) + "\n")
    got = metric_series(metrics, "gspo", ("reward", "clip_fraction", "think_accuracy"))
    assert got == {"reward": [[5, 5 / 8], [7, 7 / 8]], "clip_fraction": [[5, 0.0], [6, 0.5], [7, 0.0], [8, 0.5]],
                   "think_accuracy": []}
    assert metric_series(metrics, "mpo", ("dpo",)) == {"dpo": [[3, 1 / 3], [4, 1 / 4]]}
    assert metric_series(tmp_path / "missing.jsonl", "gspo", ("reward",)) == {"reward": []}
