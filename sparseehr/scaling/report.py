"""FIT_DIR/report.md: the fitted exponents per family, each budget's parabola, and the family comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f" [{interval[0]:.3f}, {interval[1]:.3f}]"


def family_section(name: str, fam: dict[str, Any]) -> list[str]:
    iso, par = fam["isoflop"], fam["parametric"]
    lines = [f"## {name} ({fam['n_runs']} runs)", "",
             "| budget C | runs | curvature | N_opt | D_opt | L_min | accepted |", "|---|---|---|---|---|---|---|"]
    for b in iso["budgets"]:
        verdict = "yes" if b["accepted"] else f"no: {b['reason']}"
        lines.append(f"| {b['budget_flops']:.3g} | {b['n_runs']} | {_num(b['curvature'], '.4g')} | "
                     f"{_num(b['n_opt'], ',.0f')} | {_num(b['d_opt'], ',.0f')} | {_num(b['loss_min'], '.4f')} | "
                     f"{verdict} |")
    lines.append("")
    if iso["a"] is not None:
        lines += [f"- IsoFLOP: N_opt = {iso['k_n']:.4g} C^a with **a = {iso['a']:.3f}**{_ci(iso['a_ci'])}; "
                  f"D_opt = {iso['k_d']:.4g} C^b with **b = {iso['b']:.3f}**{_ci(iso['b_ci'])} "
                  f"(95% bootstrap, {iso.get('n_bootstrap_used', 0)} resamples used); a + b = "
                  f"{iso['a'] + iso['b']:.3f}."]
    else:
        lines.append(f"- IsoFLOP power laws: not fitted ({iso.get('reason', 'too few accepted budgets')}).")
    if fam["frontier"]:
        f = fam["frontier"]
        lines.append(f"- Loss frontier: L_min(C) = {f['k']:.4g} C^{f['exponent']:.4f}.")
    if par is not None:
        lines.append(f"- Parametric (Huber on log-loss, L-BFGS-B from {par['lbfgs_starts']} of {par['grid_starts']} "
                     f"grid starts): L = {par['E']:.4f} + {par['A']:.4g}/N^{par['alpha']:.3f} + "
                     f"{par['B']:.4g}/D^{par['beta']:.3f}; alpha{_ci(par.get('alpha_ci'))}, "
                     f"beta{_ci(par.get('beta_ci'))}; implied a = {_num(par['a'])}{_ci(par.get('a_ci'))}, "
                     f"b = {_num(par['b'])}{_ci(par.get('b_ci'))}.")
    else:
        lines.append("- Parametric fit: needs at least 6 runs.")
    for metric, entry in fam["utility"].items():
        text = ", ".join(f"C={p['budget_flops']:.2g}: {p['value']:.3f}" for p in entry["best_per_budget"])
        trend = entry.get("per_decade_of_compute")
        lines.append(f"- {metric} (best-loss run per budget): {text}"
                     + (f"; {trend:+.3f} per decade of compute" if trend is not None else ""))
    return lines + [""]


def comparison_lines(comparison: dict[str, Any] | None) -> list[str]:
    if comparison is None:
        return []
    lines = ["## Families compared", ""]
    if "flops_needed" not in comparison:
        return lines + [f"No comparison: {comparison['reason']}.", ""]
    best = comparison["fewest_flops"]
    target = comparison["target_val_loss"]
    where = ("extrapolated beyond some family's measured budgets" if comparison["extrapolated"]
             else "inside every family's measured budgets")
    lines.append(f"To reach validation loss {target:.4f} ({where}), on each family's fitted frontier:")
    lines.append("")
    for name, flops in sorted(comparison["flops_needed"].items(), key=lambda item: item[1]):
        ratio = comparison["ratio_to_fewest"][name]
        lines.append(f"- {name}: {flops:.3g} FLOPs" + (" (fewest)" if name == best else f", x{ratio:.2f} {best}'s"))
    return lines + [""]


def write_report(out: Path, result: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Scaling-law fit", "", f"Runs table: `{result.get('runs_file', '?')}` ({result['n_runs']} runs). "
             "N = non-embedding active parameters per token, D = training tokens, C = planned training FLOPs.", ""]
    for name, fam in result["families"].items():
        lines += family_section(name, fam)
    lines += comparison_lines(result["comparison"])
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
