"""PNG figures of a scaling fit, like the EHR scaling-law study's: per family the IsoFLOP curves with their minima,
N_opt and D_opt against compute with the fitted power laws, the loss frontier and utility against compute; and an
overlay of the families (frontier and N_opt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _isoflop(ax, runs: list[dict], fam: dict[str, Any]) -> None:
    cmap = _plt().get_cmap("viridis")
    budgets = fam["isoflop"]["budgets"]
    for i, budget in enumerate(budgets):
        color = cmap(i / max(1, len(budgets) - 1))
        mine = sorted((r for r in runs if float(r["budget_flops"]) == budget["budget_flops"]),
                      key=lambda r: r["params_active"])
        n = np.array([r["params_active"] for r in mine], dtype=float)
        label = f"C={budget['budget_flops']:.2g}" + ("" if budget["accepted"] else " (rejected)")
        ax.scatter(n, [r["val_loss"] for r in mine], color=color, label=label,
                   marker="o" if budget["accepted"] else "x")
        if budget["coefficients"] is not None:
            x = np.linspace(np.log10(n.min()), np.log10(n.max()), 100)
            ax.plot(10 ** x, np.polyval(budget["coefficients"], x), color=color, alpha=0.8,
                    linestyle="-" if budget["accepted"] else ":")
        if budget["accepted"]:
            ax.scatter([budget["n_opt"]], [budget["loss_min"]], color=color, marker="*", s=160, edgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding active parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("IsoFLOP curves (stars: N_opt)")
    ax.legend(fontsize=7)


def _optimal(ax, fam: dict[str, Any], key: str, exponent: str, coefficient: str, label: str) -> None:
    accepted = [b for b in fam["isoflop"]["budgets"] if b["accepted"]]
    if not accepted:
        ax.set_title(f"{label}: no accepted budget")
        return
    c = np.array([b["budget_flops"] for b in accepted])
    ax.scatter(c, [b[key] for b in accepted], color="C0")
    iso = fam["isoflop"]
    if iso[exponent] is not None:
        grid = np.geomspace(c.min() / 2, c.max() * 2, 50)
        ci = iso.get(f"{exponent}_ci")
        text = f"{exponent} = {iso[exponent]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        ax.plot(grid, iso[coefficient] * grid ** iso[exponent], color="C1", label=text)
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} vs compute")


def _frontier(ax, name: str, fam: dict[str, Any], color: str) -> None:
    accepted = [b for b in fam["isoflop"]["budgets"] if b["accepted"]]
    if not accepted:
        return
    c = np.array([b["budget_flops"] for b in accepted])
    ax.scatter(c, [b["loss_min"] for b in accepted], color=color, label=name)
    if fam["frontier"]:
        grid = np.geomspace(c.min() / 2, c.max() * 2, 50)
        ax.plot(grid, fam["frontier"]["k"] * grid ** fam["frontier"]["exponent"], color=color, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("L_min(C), validation loss")
    ax.set_title("loss frontier")
    ax.legend(fontsize=8)


def _utility(ax, fam: dict[str, Any]) -> bool:
    drawn = False
    for i, (metric, entry) in enumerate(fam["utility"].items()):
        points = entry["best_per_budget"]
        ax.plot([p["budget_flops"] for p in points], [p["value"] for p in points], marker="o", color=f"C{i}",
                label=metric)
        drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("utility (best-loss run per budget)")
        ax.legend(fontsize=8)
    else:
        _no_utility_panel(ax)
    ax.set_title("clinical utility vs compute")
    return drawn


def _no_utility_panel(ax) -> None:
    """What a utility panel shows when the runs table has no utility column (a loss-only sweep)."""
    ax.text(0.5, 0.5, "no utility metric in the runs table", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _utility_vs_loss(ax, runs: list[dict]) -> None:
    from sparseehr.scaling.table import UTILITY

    drawn = False
    for i, metric in enumerate(UTILITY):
        measured = [r for r in runs if r.get(metric) is not None]
        if measured:
            ax.scatter([r["val_loss"] for r in measured], [r[metric] for r in measured], color=f"C{i}", label=metric)
            drawn = True
    if drawn:
        ax.set_xlabel("validation loss")
        ax.set_ylabel("utility")
        ax.legend(fontsize=8)
    else:
        _no_utility_panel(ax)
    ax.set_title("clinical utility vs loss")


def write_plots(out: Path, rows: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    plt = _plt()
    written = []
    for name, fam in result["families"].items():
        runs = [r for r in rows if r["family"] == name]
        fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
        _isoflop(axes[0, 0], runs, fam)
        _optimal(axes[0, 1], fam, "n_opt", "a", "k_n", "N_opt")
        _optimal(axes[0, 2], fam, "d_opt", "b", "k_d", "D_opt (tokens)")
        _frontier(axes[1, 0], name, fam, "C0")
        _utility(axes[1, 1], fam)
        _utility_vs_loss(axes[1, 2], runs)
        fig.suptitle(f"scaling laws: {name}")
        fig.tight_layout()
        path = f"scaling_{name}.png"
        fig.savefig(out / path, dpi=110)
        plt.close(fig)
        written.append(path)
    if len(result["families"]) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for i, (name, fam) in enumerate(result["families"].items()):
            _frontier(axes[0], name, fam, f"C{i}")
            accepted = [b for b in fam["isoflop"]["budgets"] if b["accepted"]]
            axes[1].plot([b["budget_flops"] for b in accepted], [b["n_opt"] for b in accepted], marker="o",
                         color=f"C{i}", label=name)
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("compute C (FLOPs)")
        axes[1].set_ylabel("N_opt")
        axes[1].set_title("compute-optimal size")
        axes[1].legend(fontsize=8)
        fig.suptitle("families overlaid")
        fig.tight_layout()
        fig.savefig(out / "scaling_overlay.png", dpi=110)
        plt.close(fig)
        written.append("scaling_overlay.png")
    return written
