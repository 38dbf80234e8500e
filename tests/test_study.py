"""Scaling-study toolkit: the fitter recovers known laws; `study run` trains a grid of tiny cells, writes
one CSV row per evaluation point and resumes an interrupted study without redoing finished cells, in this
process and through submitit's local executor; `study fit` writes fit.json and plots."""
import csv
import json
import math
import shutil

import numpy as np
import pytest
import yaml

from nativevlm.cli import main
from nativevlm.studies.fit import first_reaching, fit_power_law, optimal_encoders, sample_ratio, samples_to_reach
from trainkit import vlm_recipe, write_recipe

SAMPLES = np.logspace(3, 6, 20)


@pytest.mark.parametrize("e,a,alpha", [(2.0, 50.0, 0.35), (0.8, 8.0, 0.2), (3.5, 400.0, 0.6)])
def test_fit_recovers_a_noisy_power_law(e, a, alpha):
    rng = np.random.default_rng(0)
    loss = (e + a * SAMPLES ** -alpha) * (1 + 0.002 * rng.standard_normal(len(SAMPLES)))
    fit = fit_power_law(SAMPLES, loss)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.02)
    assert fit["E"] == pytest.approx(e, rel=0.05)


def test_sample_ratio_of_two_arms():
    """An arm whose curve is the baseline's shifted by 10x in samples needs 10x fewer to reach its loss."""
    rng = np.random.default_rng(1)
    base = lambda x: 2.0 + 30 * x ** -0.4  # noqa: E731
    arm = {"cell": "init", **fit_power_law(SAMPLES, base(10 * SAMPLES) * (1 + 0.001 * rng.standard_normal(20))),
           "first_samples": SAMPLES[0], "final_samples": SAMPLES[-1]}
    baseline = {"cell": "scratch", **fit_power_law(SAMPLES, base(SAMPLES) * (1 + 0.001 * rng.standard_normal(20))),
                "first_samples": SAMPLES[0], "final_samples": SAMPLES[-1]}
    r = sample_ratio(arm, baseline)
    assert r["ratio"] == pytest.approx(10, rel=0.1) and not r["extrapolated"]
    assert samples_to_reach(arm, arm["E"] - 0.1) == math.inf
    # read off the measured points alone: the same 10x (20 points over 3 decades: interpolation error only)
    arm["points"] = [[x, base(10 * x)] for x in SAMPLES]
    baseline.update(points=[[x, base(x)] for x in SAMPLES], final_loss=base(SAMPLES[-1]))
    r = sample_ratio(arm, baseline)
    assert r["measured_ratio"] == pytest.approx(10, rel=0.02)
    assert first_reaching(arm["points"], 0.0) is None and first_reaching(arm["points"], 99.0) == SAMPLES[0]


def synthetic_grid(slope, lam=0.01, beta=0.5, noise=0.0003, seed=0):
    """Final losses L(N, E) = L0(N) + B(N) E^-beta with B(N) chosen so that NaViL's criterion puts the
    optimal encoder at 2e6 * (N / 1e7)^slope; encoders double from 1e6."""
    rng = np.random.default_rng(seed)
    fits, e_min = {}, 1e6
    for n in (1e7, 4e7, 1.6e8, 6.4e8):
        l0, e_star = 1.5 + 20 * n ** -0.3, 2e6 * (n / 1e7) ** slope
        b = lam * e_star ** beta * l0 / ((1 - 2 ** -beta) - lam * (e_star / e_min) ** beta)
        for k in range(10):
            enc = e_min * 2 ** k
            loss = (l0 + b * enc ** -beta) * (1 + noise * rng.standard_normal())
            fits[f"{n:.0e}-{k}"] = {"llm_params": int(n), "encoder_params": int(enc), "final_loss": loss}
    return fits


@pytest.mark.parametrize("slope", [0.46, 0.8])
def test_optimal_encoder_slope(slope):
    opt = optimal_encoders(synthetic_grid(slope))
    assert opt["slope"] == pytest.approx(slope, rel=0.05)
    assert opt["slope_ci95"][0] < opt["slope"] < opt["slope_ci95"][1]
    grid = [e["grid_optimal"] for e in opt["per_llm"]]
    assert grid == sorted(grid) and all(g is not None for g in grid)  # the grid answer grows with the LLM too


def test_no_optimal_encoder_without_an_encoder_gain():
    """Final losses that do not fall with encoder size (noise only), or a curve whose optimum lies outside
    the encoders trained: no optimum is reported (with a note why), and no slope is fitted through them."""
    fits = {}
    for n, losses in ((1e6, [0.170, 0.176, 0.165, 0.171]), (4e6, [0.157, 0.148, 0.170, 0.162])):
        for k, loss in enumerate(losses):
            fits[f"{n}-{k}"] = {"llm_params": int(n), "encoder_params": int(1e5 * 2 ** k), "final_loss": loss}
    opt = optimal_encoders(fits)
    assert all(e["optimal"] is None and "no encoder gain" in e["note"] for e in opt["per_llm"])
    assert opt["slope"] is None
    far = {f"x-{k}": {"llm_params": 10**6, "encoder_params": int(1e5 * 2 ** k), "final_loss": 1.0 + 0.3 * 2.0 ** -k}
           for k in range(4)}  # still falling steeply at the largest encoder: the optimum is beyond the grid
    (entry,) = optimal_encoders(far)["per_llm"]
    assert entry["optimal"] is None and "outside the encoders trained" in entry["note"]


def test_study_fit_command(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = []
    for cell, (e, a, alpha) in {"scratch": (2.0, 30, 0.3), "init": (2.0, 30, 0.3)}.items():
        shift = 10 if cell == "init" else 1
        for x in SAMPLES:
            loss = (e + a * (shift * x) ** -alpha) * (1 + 0.001 * rng.standard_normal())
            rows.append({"cell": cell, "llm_params": 1000, "encoder_params": 10, "samples": x, "val_loss": loss})
    for cell, f in synthetic_grid(0.46).items():  # one final point per cell: enough for the encoder criterion
        rows.append({"cell": cell, "llm_params": f["llm_params"], "encoder_params": f["encoder_params"],
                     "samples": 1e5, "val_loss": f["final_loss"]})
    with (tmp_path / "study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["study", "fit", str(tmp_path / "study.csv"), "--out", str(tmp_path / "fit"),
                 "--compare", "init:scratch"]) == 0
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert {"init", "scratch"} <= {c["cell"] for c in fit["cells"] if c["alpha"] is not None}
    assert fit["optimal_encoder"]["slope"] == pytest.approx(0.46, rel=0.05)
    assert fit["ratios"][0]["ratio"] == pytest.approx(10, rel=0.15)
    assert (tmp_path / "fit" / "curves.png").stat().st_size > 1000
    assert (tmp_path / "fit" / "optimal_encoder.png").is_file()
    assert "scratch needs" in capsys.readouterr().out
    assert main(["study", "fit", str(tmp_path / "study.csv"), "--out", str(tmp_path / "f2"), "--compare", "x:y"]) == 2
    assert "no cell 'x'" in capsys.readouterr().err


def write_study(tmp_path, world) -> str:
    recipe = write_recipe(tmp_path / "tiny.yaml", vlm_recipe(world))
    study = {
        "name": "tiny", "set": [f"stages.1.val_data={world['val']}"],
        "grid": {"recipe": str(recipe), "axes": {"experts": {"experts": [], "dense": [
            "model.moe.modality_experts=false", "stages.0.trainable=[vision.*, connector.*]"]}}},
        "eval": {"bench": [f"llava:{world['val']}"], "limit": 2, "max_new_tokens": 2},
        "fit": {"compare": [["experts", "dense"]]},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return str(tmp_path / "study.yaml")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def interrupt(out, cell):
    """Leave `cell` as a killed run leaves it: checkpoints up to step 4 of 6, no final model, no rows (and
    the driver never appended them). An accuracy added to an early metrics row survives a resume (rows up
    to the checkpoint are kept), not a restart, and must reach the CSV."""
    from nativevlm.studies.runner import ROWS

    run = out / "runs" / cell
    shutil.rmtree(run / "final")
    (run / ROWS).unlink()
    for ckpt in (run / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 4:
            shutil.rmtree(ckpt)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if "val_loss" in json.loads(line))  # step 2
    row = json.loads(lines[first])
    lines[first] = json.dumps({**row, "acc/perception": 0.5})  # as a training-time eval would log it
    lines.insert(first + 1, json.dumps({k: row[k] for k in ("step", "stage", "stage_step")} | {"acc/count": 0.25}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rows = read_csv(out / "study.csv")
    kept = [r for r in rows if r["cell"] != cell]
    with (out / "study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)
    return [r for r in rows if r["cell"] == cell]


@pytest.mark.parametrize("launcher", ["local", "submitit"])
def test_study_run_resumes_without_redoing_finished_cells(tmp_path, train_world, launcher, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # submitit's local jobs are processes of their own
    study, out = write_study(tmp_path, train_world), tmp_path / "out"
    args = ["study", "run", study, "--out", str(out), "--launcher", launcher] + (
        ["--cluster", "local"] if launcher == "submitit" else [])
    assert main(args) == 0
    rows = read_csv(out / "study.csv")
    assert [r["cell"] for r in rows] == ["experts"] * 3 + ["dense"] * 3  # evaluations at steps 2, 3 and 6
    assert [int(r["samples"]) for r in rows[:3]] == [8, 12, 24]
    assert int(rows[0]["encoder_params"]) > 0 and int(rows[0]["llm_params"]) > 0 and float(rows[0]["cell_seconds"]) > 0
    assert rows[2]["acc/all"] != "" and rows[0]["acc/all"] == ""  # the final model is evaluated

    if launcher == "submitit":  # each cell ran as a job of its own
        assert len(list((out / "submitit").rglob("*_log.out"))) == 2
    finished = (out / "runs" / "experts" / "final" / "model.safetensors").stat().st_mtime_ns
    before = interrupt(out, "dense")
    assert main(args) == 0
    after = read_csv(out / "study.csv")
    assert [r["cell"] for r in after] == ["experts"] * 3 + ["dense"] * 4  # + the accuracy-only row
    assert (out / "runs" / "experts" / "final" / "model.safetensors").stat().st_mtime_ns == finished
    assert after[3]["val_acc/perception"] == "0.5"  # resumed, not restarted; training-time accuracy copied
    assert after[4]["val_acc/count"] == "0.25" and after[4]["val_loss"] == ""
    assert [float(r["val_loss"]) for r in after[3:] if r["val_loss"]] == pytest.approx(
        [float(r["val_loss"]) for r in before], abs=1e-6)
    assert main(args) == 0  # nothing left to do
    assert len(read_csv(out / "study.csv")) == 7
    assert "2 cells done, 0 to run" in capsys.readouterr().out
    assert main(["study", "fit", str(out / "study.csv"), "--out", str(out / "fit")]) == 0
    ratios = json.loads((out / "fit" / "fit.json").read_text())["ratios"]
    assert (out / "fit" / "accuracy.png").is_file() and (out / "fit" / "final_accuracy.png").is_file()
    assert [(r["arm"], r["baseline"]) for r in ratios] == [("experts", "dense")]  # the study's fit.compare


def test_study_errors_name_the_input(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("cells: [{name: a, recipe: nope.yaml}]\n")
    assert main(["study", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "recipe nope.yaml does not exist" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("cels: []\n")
    assert main(["study", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown config key cels" in capsys.readouterr().err


def test_committed_studies_resolve(tmp_path_factory, monkeypatch):
    """Every committed study file parses, and every cell's recipe (with the study's overrides) validates
    against a (tiny) prepared world, tokenizer and prepared LMs."""
    from pathlib import Path

    from nativevlm.studies.runner import cell_recipe, prepare_data
    from nativevlm.studies.spec import WorldSpec, load_study

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # recipe paths are relative to the working directory
    out = tmp_path_factory.mktemp("studies")
    studies = sorted((repo / "docs" / "studies").glob("*/study.yaml"))
    assert len(studies) == 5
    for path in studies:
        spec = load_study(path)
        spec.world = WorldSpec(spec.world.preset, train=3, val=2, test=2)
        prepare_data(spec, out, log=lambda *a: None)
        for cell in spec.prepare:
            cell_recipe(spec, cell, out)
            (out / "runs" / cell.name / "final").mkdir(parents=True, exist_ok=True)
        cfgs = [cell_recipe(spec, cell, out) for cell in spec.all_cells()]
        assert all(str(out) in c.stages[-1].val_data for c in cfgs), path


def test_a_failed_job_is_named(tmp_path, train_world, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe = write_recipe(tmp_path / "tiny.yaml", vlm_recipe(train_world))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"cells": [
        {"name": "bad", "recipe": str(recipe), "set": ["stages.0.trainable=[nothing.*]"]}]}))
    args = ["study", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--launcher", "submitit",
            "--cluster", "local"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cells bad failed" in err and "run the same command again" in err


def test_a_text_lm_cell_has_rows_but_no_image_evaluation(tmp_path, train_world):
    from trainkit import lm_recipe

    recipe = write_recipe(tmp_path / "lm.yaml", lm_recipe(train_world))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "cells": [{"name": "lm", "recipe": str(recipe), "set": [f"stages.0.val_data={train_world['text']}",
                                                                 "stages.0.eval_every=2"]}],
        "eval": {"bench": [f"llava:{train_world['val']}"]}}))
    assert main(["study", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 0
    rows = read_csv(tmp_path / "o" / "study.csv")
    assert [int(r["step"]) for r in rows] == [2, 4] and rows[0]["encoder_params"] == "0"
    assert int(rows[0]["llm_params"]) > 0 and "acc/all" not in rows[0]
