"""Fits over a study's CSV (NaViL's scaling analysis):

- per cell, the learning curve `val_loss(samples) = E + A * samples^(-alpha)`;
- between two arms (pretrained-LM init vs scratch, experts vs dense), how many more samples the baseline
  needs: the baseline's final loss, and the samples the arm's fitted curve needs to reach it;
- per LLM size, the optimal encoder size by NaViL's criterion: the smallest encoder E with
  |L(E) - L(2E)| < lambda * L(E_min) (lambda = 1%), and the log-log slope of that size against LLM size.

The criterion is applied to a curve fitted through each LLM size's final losses over encoder size,
`L(E) = L_inf + B * E^(-beta)`, so it has a continuous answer: B (1 - 2^-beta) E^-beta = lambda L(E_min),
E* = (B (1 - 2^-beta) / (lambda L(E_min)))^(1/beta). On the grid itself the answer can only be a grid
point, which quantises the slope to the grid's spacing; the grid answer is reported beside it.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.formats import DataError

MIN_POINTS = 4  # a 3-parameter curve through fewer points is not a fit


def power_law(x, e, log_a, alpha):
    return e + np.exp(log_a - alpha * np.log(x))


def fit_power_law(x, y) -> Optional[dict]:
    """Least-squares `y = E + A x^-alpha` (A fitted in log space, which keeps it positive and the problem
    well scaled); the best of a few starting exponents, since the problem is not convex. None if it fails."""
    from scipy.optimize import curve_fit  # deferred: scipy is optional (the `study` extra)

    x, y = np.asarray(x, float), np.asarray(y, float)
    best = None
    for alpha0 in (0.1, 0.3, 0.6, 1.0):
        e0 = max(0.0, y.min() - 0.1 * (y.max() - y.min()))
        log_a0 = math.log(max(y[0] - e0, 1e-9)) + alpha0 * math.log(x[0])
        try:
            p, _ = curve_fit(power_law, x, y, p0=(e0, log_a0, alpha0), bounds=([0, -50, 1e-4], [np.inf, 100, 5]),
                             maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(((power_law(x, *p) - y) ** 2).sum())
        if best is None or sse < best[1]:
            best = (p, sse)
    if best is None:
        return None
    (e, log_a, alpha), sse = best
    return {"E": float(e), "A": float(math.exp(log_a)), "alpha": float(alpha), "rmse": math.sqrt(sse / len(x))}


def loss_at(fit: dict, samples: float) -> float:
    return fit["E"] + fit["A"] * samples ** (-fit["alpha"])


def samples_to_reach(fit: dict, loss: float) -> float:
    """The samples at which a fitted curve reaches `loss` (inf if it never does: loss <= E)."""
    if loss <= fit["E"]:
        return math.inf
    return ((loss - fit["E"]) / fit["A"]) ** (-1 / fit["alpha"])


def read_study_csv(path) -> dict[str, dict]:
    """cell -> {"samples": [...], "val_loss": [...], "llm_params", "encoder_params", "rows"} from study.csv."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study CSV {path} does not exist")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("cell", "samples", "val_loss") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no {', '.join(missing)} column (write it with `nativevlm study run`)")
        cells: dict[str, dict] = {}
        for line, row in enumerate(reader, start=2):
            if not row["samples"]:
                continue  # an Extract+Think pair's row: accuracies, no learning curve
            try:
                samples, loss = float(row["samples"]), float(row["val_loss"]) if row["val_loss"] else math.nan
            except ValueError:
                raise DataError(f"{path} line {line}: samples / val_loss are not numbers") from None
            cell = cells.setdefault(row["cell"], {"samples": [], "val_loss": [], "rows": []})
            cell["rows"].append(row)
            for key in ("llm_params", "encoder_params"):
                if row.get(key):
                    cell[key] = int(float(row[key]))
            if not math.isnan(loss) and samples > 0:
                cell["samples"].append(samples)
                cell["val_loss"].append(loss)
    return cells


def fit_cells(cells: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for name, cell in cells.items():
        order = np.argsort(cell["samples"])
        x, y = np.asarray(cell["samples"])[order], np.asarray(cell["val_loss"])[order]
        entry = {"cell": name, "n_points": len(x), "llm_params": cell.get("llm_params"),
                 "encoder_params": cell.get("encoder_params"),
                 "first_samples": float(x[0]) if len(x) else None, "final_samples": float(x[-1]) if len(x) else None,
                 "final_loss": float(y[-1]) if len(y) else None,
                 "points": [[float(a), float(b)] for a, b in zip(x, y)]}
        fit = fit_power_law(x, y) if len(x) >= MIN_POINTS else None
        entry.update(fit or {"E": None, "A": None, "alpha": None, "rmse": None,
                             "note": f"not fitted: {len(x)} points (at least {MIN_POINTS} needed) or no convergence"})
        out[name] = entry
    return out


def first_reaching(points: list, loss: float) -> Optional[float]:
    """The samples at which measured points first reach `loss`, interpolated linearly in log-samples
    between the last point above it and the first at or below; None if they never do."""
    for i, (x, y) in enumerate(points):
        if y <= loss:
            if i == 0:
                return x
            x0, y0 = points[i - 1]
            t = (y0 - loss) / (y0 - y)
            return math.exp(math.log(x0) + t * (math.log(x) - math.log(x0)))
    return None


def sample_ratio(arm: dict, baseline: dict) -> dict:
    """How many times more samples `baseline` needs than `arm` to reach the baseline's final loss (taken
    from its fitted curve at its last point, which averages out the last evaluation's noise). Beside it,
    the same read off the measured points alone (`measured_ratio`: the baseline's last measured loss, and
    where the arm's points first reach it), which needs no curve to fit the run."""
    target = loss_at(baseline, baseline["final_samples"])
    needed = samples_to_reach(arm, target)
    out = {"arm": arm["cell"], "baseline": baseline["cell"], "target_loss": target,
           "baseline_samples": baseline["final_samples"], "arm_samples": needed,
           "ratio": baseline["final_samples"] / needed if needed > 0 else math.inf,
           "extrapolated": not arm["first_samples"] <= needed <= arm["final_samples"]}  # outside its measured curve
    if arm.get("points") and baseline.get("points"):
        reached = first_reaching(arm["points"], baseline["final_loss"])
        out.update(measured_target_loss=baseline["final_loss"], measured_arm_samples=reached,
                   measured_ratio=baseline["final_samples"] / reached if reached else None)
    return out


def optimal_encoders(fits: dict[str, dict], lam: float = 0.01) -> dict:
    """Per LLM size the optimal encoder size (continuous, from the fitted L(E), and on the grid), then the
    log-log slope of optimal encoder size vs LLM size with its 95% confidence interval."""
    from scipy import stats  # deferred: optional, as in fit_power_law

    by_llm = defaultdict(list)
    for f in fits.values():
        if f["llm_params"] and f["encoder_params"] and f["final_loss"] is not None:
            by_llm[f["llm_params"]].append((f["encoder_params"], f["final_loss"]))
    per_llm = []
    for llm, points in sorted(by_llm.items()):
        points.sort()
        enc, loss = [p[0] for p in points], [p[1] for p in points]
        entry = {"llm_params": llm, "encoders": enc, "final_losses": loss, "grid_optimal": None, "optimal": None}
        threshold = lam * loss[0]
        for i in range(len(enc) - 1):  # the grid doubles: the next encoder stands for 2E
            if abs(loss[i] - loss[i + 1]) < threshold:
                entry["grid_optimal"] = enc[i]
                break
        fit = fit_power_law(enc, loss) if len(enc) >= MIN_POINTS else None
        if loss[-1] >= loss[0]:
            entry["note"] = ("no encoder gain: the largest encoder's final loss is not below the smallest's, so "
                             "there is no curve to read an optimum from")
        elif fit is not None:
            gain = fit["A"] * (1 - 2 ** -fit["alpha"])  # L(E) - L(2E) = gain * E^-beta
            entry["curve"] = {"L_inf": fit["E"], "B": fit["A"], "beta": fit["alpha"]}
            optimal = (gain / threshold) ** (1 / fit["alpha"])
            if enc[0] <= optimal <= enc[-1]:
                entry["optimal"] = optimal
            else:  # an optimum read off the curve outside the sizes trained is an extrapolation, not a finding
                entry["note"] = f"the fitted curve's optimum {optimal:.3g} lies outside the encoders trained"
        per_llm.append(entry)
    out = {"lambda": lam, "per_llm": per_llm, "slope": None, "slope_ci95": None, "intercept": None}
    usable = [(e["llm_params"], e["optimal"]) for e in per_llm if e["optimal"]]
    if len(usable) >= 2:
        x, y = np.log([u[0] for u in usable]), np.log([u[1] for u in usable])
        reg = stats.linregress(x, y)
        out.update(slope=float(reg.slope), intercept=float(reg.intercept))
        if len(usable) > 2:
            t = stats.t.ppf(0.975, len(usable) - 2)
            out["slope_ci95"] = [float(reg.slope - t * reg.stderr), float(reg.slope + t * reg.stderr)]
    return out


def fit_study(csv_path, compare: list[tuple[str, str]] = (), lam: float = 0.01) -> dict:
    """Everything `nativevlm study fit` writes to fit.json."""
    fits = fit_cells(read_study_csv(csv_path))
    ratios = []
    for arm, baseline in compare:
        for name in (arm, baseline):
            if name not in fits:
                raise DataError(f"compare {arm}:{baseline}: no cell {name!r} in {csv_path} "
                                f"(cells: {', '.join(sorted(fits))})")
        if fits[arm]["alpha"] is None or fits[baseline]["alpha"] is None:
            ratios.append({"arm": arm, "baseline": baseline, "ratio": None, "note": "a curve was not fitted"})
            continue
        ratios.append(sample_ratio(fits[arm], fits[baseline]))
    return {"cells": list(fits.values()), "ratios": ratios, "optimal_encoder": optimal_encoders(fits, lam)}
