"""`sparseehr scaling fit RUNS.jsonl --out FIT_DIR`: IsoFLOP parabolas, power laws, the Chinchilla fit, plots.

Works on any runs table in the documented format (docs/scaling.md), also one written by hand; it imports
neither torch nor DeepSpeed itself. Writes FIT_DIR/fit.json (a documented contract), FIT_DIR/report.md and PNGs.

Per family and budget C: val_loss = c2 x^2 + c1 x + c0 with x = log10(params_active) (the IsoFLOP curve);
curvature = c2; N_opt = 10^(-c1 / 2 c2); D_opt = C / f(N_opt), f the runs' own FLOPs per token (flops / tokens,
interpolated linearly in log-log). A budget is rejected when c2 <= 0 or N_opt lies outside its sampled sizes.
Then N_opt = k_N C^a and D_opt = k_D C^b (log-log least squares over accepted budgets), the loss frontier
L_min(C) = k_L C^-g, bootstrap 95% intervals (runs resampled within each budget), and per family the parametric
L(N, D) = E + A / N^alpha + B / D^beta (sparseehr.scaling.parametric).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sparseehr.scaling.table import REQUIRED, UTILITY

MIN_SIZES = 3  # a parabola needs three distinct sizes


class FitError(ValueError):
    """Bad runs table (the message names the file, line and field) or a fit that cannot be made."""


def load_runs(path: Path) -> list[dict[str, Any]]:
    """Rows of a runs.jsonl, each checked: required fields present with the right type, positive, finite."""
    if not path.is_file():
        raise FitError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FitError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise FitError(f"{where}: expected a JSON object")
        for name, kind in REQUIRED.items():
            value = row.get(name)
            if value is None:
                raise FitError(f"{where}: field {name!r} is missing")
            if kind is str:
                if not isinstance(value, str) or not value:
                    raise FitError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise FitError(f"{where}: field {name!r} must be {'an integer' if kind is int else 'a number'}, "
                               f"got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise FitError(f"{where}: field {name!r} must be positive and finite, got {value!r}")
        for name in UTILITY:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise FitError(f"{where}: field {name!r} must be a number in [0, 1] or null, got {value!r}")
        rows.append(row)
    if not rows:
        raise FitError(f"{path}: no rows")
    return rows


# ---- IsoFLOP -------------------------------------------------------------------------------------------------
def fit_budget(budget: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The IsoFLOP parabola of one budget's runs and its minimum (or why it is rejected)."""
    x = np.log10([r["params_active"] for r in runs])
    y = np.array([r["val_loss"] for r in runs], dtype=float)
    result: dict[str, Any] = {"budget_flops": budget, "n_runs": len(runs), "curvature": None, "coefficients": None,
                              "n_opt": None, "d_opt": None, "loss_min": None, "accepted": False,
                              "log10_n_range": [float(x.min()), float(x.max())]}
    if len(np.unique(x)) < MIN_SIZES:
        return {**result, "reason": f"{len(np.unique(x))} distinct sizes; a parabola needs {MIN_SIZES}"}
    c2, c1, c0 = np.polyfit(x, y, 2)
    result.update(curvature=float(c2), coefficients=[float(c2), float(c1), float(c0)])
    if c2 <= 0:
        return {**result, "reason": f"curvature {c2:.4g} is not positive (no minimum)"}
    x_opt = -c1 / (2 * c2)
    if not x.min() <= x_opt <= x.max():
        return {**result, "reason": f"minimum at N = {10 ** x_opt:.4g} lies outside the sampled sizes "
                                    f"[{10 ** x.min():.4g}, {10 ** x.max():.4g}]"}
    # FLOPs per token at N_opt from the runs themselves (flops / tokens), so a hand-written table works.
    per_token = np.log10([r["flops"] / r["tokens"] for r in runs])
    slope, intercept = np.polyfit(x, per_token, 1)
    flops_per_token = 10 ** (intercept + slope * x_opt)
    return {**result, "n_opt": float(10 ** x_opt), "d_opt": float(budget / flops_per_token),
            "loss_min": float(np.polyval([c2, c1, c0], x_opt)), "flops_per_token_at_n_opt": float(flops_per_token),
            "accepted": True, "reason": "accepted"}


def power_law(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of y = k c^exponent by least squares in log10-log10."""
    from scipy.stats import linregress

    fit = linregress(np.log10(c), np.log10(y))
    return float(fit.slope), float(10 ** fit.intercept)


def isoflop_exponents(budgets: list[dict[str, Any]]) -> dict[str, Any] | None:
    accepted = [b for b in budgets if b["accepted"]]
    if len(accepted) < 2:
        return None
    c = np.array([b["budget_flops"] for b in accepted])
    a, k_n = power_law(c, np.array([b["n_opt"] for b in accepted]))
    b, k_d = power_law(c, np.array([b["d_opt"] for b in accepted]))
    g, k_l = power_law(c, np.array([b["loss_min"] for b in accepted]))
    return {"a": a, "k_n": k_n, "b": b, "k_d": k_d, "frontier_exponent": g, "frontier_k": k_l,
            "n_budgets": len(accepted)}


def by_budget(runs: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    groups: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[float(run["budget_flops"])].append(run)
    return dict(sorted(groups.items()))


def bootstrap_isoflop(groups: dict[float, list[dict]], n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """95% percentile intervals of a and b, resampling each budget's runs with replacement."""
    samples = []
    for _ in range(n_boot):
        budgets = []
        for budget, runs in groups.items():
            picked = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
            budgets.append(fit_budget(budget, picked))
        fit = isoflop_exponents(budgets)
        if fit is not None:
            samples.append((fit["a"], fit["b"]))
    if len(samples) < max(10, n_boot // 4):
        return {"a_ci": None, "b_ci": None, "n_bootstrap_used": len(samples)}
    values = np.array(samples)
    low, high = np.percentile(values, [2.5, 97.5], axis=0)
    return {"a_ci": [float(low[0]), float(high[0])], "b_ci": [float(low[1]), float(high[1])],
            "n_bootstrap_used": len(samples)}


def fit_family(runs: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    from sparseehr.scaling.parametric import bootstrap_parametric, fit_parametric

    rng = np.random.default_rng(seed)
    groups = by_budget(runs)
    budgets = [fit_budget(budget, group) for budget, group in groups.items()]
    exponents = isoflop_exponents(budgets)
    isoflop: dict[str, Any] = {"a": None, "a_ci": None, "b": None, "b_ci": None, "k_n": None, "k_d": None,
                               "budgets": budgets}
    frontier = None
    if exponents is not None:
        isoflop.update({k: exponents[k] for k in ("a", "b", "k_n", "k_d")})
        isoflop.update(bootstrap_isoflop(groups, n_boot, rng))
        frontier = {"exponent": exponents["frontier_exponent"], "k": exponents["frontier_k"],
                    "loss_range": [min(b["loss_min"] for b in budgets if b["accepted"]),
                                   max(b["loss_min"] for b in budgets if b["accepted"])]}
    else:
        isoflop["reason"] = f"{sum(b['accepted'] for b in budgets)} accepted budget(s); power laws need 2"
    n = np.array([r["params_active"] for r in runs], dtype=float)
    d = np.array([r["tokens"] for r in runs], dtype=float)
    loss = np.array([r["val_loss"] for r in runs], dtype=float)
    parametric = fit_parametric(n, d, loss)
    if parametric is not None and n_boot:
        # Each parametric resample runs L-BFGS from 4 starts: half as many resamples as the IsoFLOP bootstrap.
        parametric.update(bootstrap_parametric(n, d, loss, parametric, max(n_boot // 2, 10), rng))
    return {"n_runs": len(runs), "isoflop": isoflop, "frontier": frontier, "parametric": parametric,
            "utility": utility_summary(runs, budgets)}


def utility_summary(runs: list[dict[str, Any]], budgets: list[dict[str, Any]]) -> dict[str, Any]:
    """Per utility metric present: the best-loss run's value per budget, and its trend against compute and loss."""
    from scipy.stats import linregress

    out: dict[str, Any] = {}
    for metric in UTILITY:
        measured = [r for r in runs if r.get(metric) is not None]
        if not measured:
            continue
        per_budget = []
        for budget, group in by_budget(measured).items():
            best = min(group, key=lambda r: r["val_loss"])
            per_budget.append({"budget_flops": budget, "value": best[metric], "val_loss": best["val_loss"],
                               "params_active": best["params_active"]})
        entry: dict[str, Any] = {"n_runs": len(measured), "best_per_budget": per_budget}
        if len(per_budget) >= 2:
            fit = linregress(np.log10([p["budget_flops"] for p in per_budget]), [p["value"] for p in per_budget])
            entry["per_decade_of_compute"] = float(fit.slope)
        if len(measured) >= 3 and len({r["val_loss"] for r in measured}) > 1:
            fit = linregress([r["val_loss"] for r in measured], [r[metric] for r in measured])
            entry["vs_val_loss"] = {"slope": float(fit.slope), "pearson_r": float(fit.rvalue)}
        out[metric] = entry
    return out


def compare_families(families: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """FLOPs each family needs to reach one validation loss, on the fitted frontiers L_min(C) = k C^-g.

    The target is the lowest frontier loss that every family reached inside its own measured budgets (so no
    frontier is extrapolated); when the ranges do not overlap the best loss of the weakest family is used and
    the comparison is marked as extrapolated.
    """
    fronts = {name: fam["frontier"] for name, fam in families.items() if fam["frontier"]}
    if len(fronts) < 2:
        return None
    target = max(f["loss_range"][0] for f in fronts.values())
    extrapolated = target > min(f["loss_range"][1] for f in fronts.values())
    needed = {}
    for name, f in fronts.items():
        if f["exponent"] >= 0:
            return {"target_val_loss": target, "reason": f"{name}'s frontier does not fall with compute"}
        needed[name] = float((target / f["k"]) ** (1.0 / f["exponent"]))
    best = min(needed, key=needed.get)
    return {"target_val_loss": target, "flops_needed": needed, "fewest_flops": best, "extrapolated": extrapolated,
            "ratio_to_fewest": {name: c / needed[best] for name, c in needed.items()}}


def fit_runs(rows: list[dict[str, Any]], n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        families[row["family"]].append(row)
    fitted = {name: fit_family(runs, n_boot, seed) for name, runs in sorted(families.items())}
    return {"n_runs": len(rows), "n_bootstrap": n_boot, "seed": seed, "families": fitted,
            "comparison": compare_families(fitted)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr scaling fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="RUNS.jsonl (PLAN_DIR/runs.jsonl or any table in the format)")
    parser.add_argument("--out", type=Path, required=True, help="FIT_DIR: fit.json, report.md, PNGs")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="write fit.json and report.md only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.bootstrap < 0:
        print("sparseehr scaling fit: --bootstrap must be >= 0", file=sys.stderr)
        return 2
    try:
        rows = load_runs(args.runs)
        result = fit_runs(rows, args.bootstrap, args.seed)
    except FitError as exc:
        print(f"sparseehr scaling fit: error: {exc}", file=sys.stderr)
        return 1
    result["runs_file"] = str(args.runs)
    from sparseehr.scaling.report import write_report

    # Written to a sibling folder and moved into place: a failed fit leaves no half-written FIT_DIR.
    out: Path = args.out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "fit.json").write_text(json.dumps(result, indent=2) + "\n")
    plots = []
    if not args.no_plots:
        from sparseehr.scaling.plots import write_plots

        plots = write_plots(tmp, rows, result)
    text = write_report(tmp, result, plots)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    print(text)
    print(f"wrote {out / 'fit.json'}, {out / 'report.md'}" + (f" and {len(plots)} plots" if plots else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
