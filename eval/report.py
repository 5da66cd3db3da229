"""Writing an evaluation's OUT_DIR: report.json, report.md, PNG plots (and parquet files), all or nothing.

Everything is written into a temporary sibling folder first and moved into OUT_DIR at the end, so a failed run
never leaves a half-written report behind (an earlier complete report in OUT_DIR stays until replaced).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(out_dir: str | Path, writers: dict[str, Callable[[Path], None]]) -> list[Path]:
    """Call each writer(path) inside a temp folder next to out_dir, then move the files into out_dir.

    writers: relative file name -> function writing that file. Returns the final paths.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name, write in writers.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
        out_dir.mkdir(exist_ok=True)
        final = []
        for name in writers:
            destination = out_dir / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, destination)
            final.append(destination)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_writer(report: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    return write


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def recall_plot_writer(ks: Sequence[int], curves: dict[str, dict], title: str) -> Callable[[Path], None]:
    """curves: system name -> metric block (recall_at_k, recall_at_k_ci)."""
    def write(path: Path) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, block in curves.items():
            means = [block["recall_at_k"][str(k)] for k in ks]
            line, = ax.plot(ks, means, marker="o", label=name)
            ci = block.get("recall_at_k_ci")
            if ci:
                ax.fill_between(ks, [ci[str(k)][0] for k in ks], [ci[str(k)][1] for k in ks],
                                color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (mean over instances)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return write


def sweep_plot_writer(sweeps: dict[str, list[dict]], title: str) -> Callable[[Path], None]:
    """sweeps: system name -> validation sweep rows; plots balanced accuracy (solid) and recall (dashed)."""
    def write(path: Path) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rows in sweeps.items():
            ks = [row["k_cls"] for row in rows]
            nan = float("nan")
            line, = ax.plot(ks, [row["balanced_accuracy"] if row["balanced_accuracy"] is not None else nan
                                 for row in rows], marker="o", label=f"{name} balanced acc.")
            ax.plot(ks, [row["recall"] if row["recall"] is not None else nan for row in rows], linestyle="--",
                    color=line.get_color(), alpha=0.6, label=f"{name} recall")
        grid = sorted({row["k_cls"] for rows in sweeps.values() for row in rows})
        ax.set_xscale("log")
        ax.set_xticks(grid, [str(k) for k in grid])
        ax.set_xlabel("k_cls")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return write
