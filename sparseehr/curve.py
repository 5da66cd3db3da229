"""`sparseehr curve`: next-visit Recall@10/@20 of a training run at each kept checkpoint, beside both baselines.

    sparseehr curve --run RUN_DIR --data TARGET_DATA_DIR --out CURVE_DIR [--max-patients N] [--step-limit 24]

Every checkpoint tag of RUN_DIR (global_step<N>) is exported to CURVE_DIR/step<N>/hf and evaluated with
`sparseehr eval next-visit` on the same instances (all splits pooled, a seeded subset of N patients per split if
given). The training tokens of a step come from RUN_DIR/metrics.jsonl. The baselines do not depend on the
checkpoint, so they appear as flat lines. Writes curve.json, curve.md (a table) and curve.png.
The copy probe logged during training (launch/probe.py) is added to the table where the run logged it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

KS = ("10", "20")
BASELINES = ("baseline:frequency", "baseline:history")


def _tokens_at(run_dir: Path) -> dict[int, dict]:
    from sparseehr.launch.rundir import read_metrics

    return {int(r["step"]): r for r in read_metrics(run_dir) if "step" in r and "tokens" in r}


def curve_points(run_dir: Path, data_dir: Path, out: Path, max_patients: int | None, step_limit: int,
                 seed: int = 0) -> dict:
    from sparseehr.eval.cli import main as eval_main
    from sparseehr.launch.rundir import TAG_PATTERN, list_tags, read_latest_tag
    from sparseehr.launch.export import export_run

    # Only complete checkpoints: a tag newer than `latest` may still be being written by a running job.
    latest = read_latest_tag(run_dir)
    last_step = int(TAG_PATTERN.match(latest).group(1)) if latest else -1
    tags = [t for t in list_tags(run_dir) if int(TAG_PATTERN.match(t).group(1)) <= last_step]
    if not tags:
        raise FileNotFoundError(f"{run_dir}: no checkpoint tags (global_step<N>) to evaluate")
    metrics = _tokens_at(run_dir)
    points, baselines = [], {}
    for tag in tags:
        step = int(TAG_PATTERN.match(tag).group(1))
        step_dir = out / f"step{step}"
        report_file = step_dir / "next-visit" / "report.json"
        if not report_file.is_file():
            hf = export_run(run_dir, step_dir / "hf", tag=tag)
            subset = ["--max-patients", str(max_patients)] if max_patients else []
            code = eval_main(["next-visit", "--model", str(hf), "--data", str(data_dir), "--out",
                              str(step_dir / "next-visit"), "--split", "train", "validation", "test",
                              "--step-limit", str(step_limit), "--seed", str(seed), *subset])
            if code:
                raise RuntimeError(f"eval next-visit failed for {tag} (exit {code})")
            shutil.rmtree(step_dir / "hf", ignore_errors=True)      # weights stay in RUN_DIR's checkpoint
        report = json.loads(report_file.read_text())
        logged = metrics.get(step, {})
        # the probe is logged at eval steps; take the latest one at or before this checkpoint
        probe = next((metrics[s] for s in sorted(metrics, reverse=True) if s <= step and "copy_r10_rare" in metrics[s]),
                     {})
        points.append({"step": step, "tokens": logged.get("tokens"),
                       "recall_at_10": report["recall_at_k"]["10"], "recall_at_20": report["recall_at_k"]["20"],
                       "copy_r10_common": probe.get("copy_r10_common"), "copy_r10_rare": probe.get("copy_r10_rare"),
                       "n_instances": report.get("n_instances")})
        baselines = {name: {k: report["baselines"][name]["recall_at_k"][k] for k in KS} for name in BASELINES}
    return {"run": str(run_dir), "data": str(data_dir), "points": points, "baselines": baselines,
            "crosses_history": _crossing(points, baselines)}


def _crossing(points: list[dict], baselines: dict) -> dict:
    """First evaluated step/tokens at which the model beats history at R@10 and at R@20 (None: not yet)."""
    out = {}
    for k in KS:
        hit = next((p for p in points if p[f"recall_at_{k}"] > baselines["baseline:history"][k]), None)
        out[f"R@{k}"] = None if hit is None else {"step": hit["step"], "tokens": hit["tokens"]}
    return out


def curve_markdown(curve: dict) -> str:
    def cell(v) -> str:
        return "n/a" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:.3f}")

    lines = ["| step | training tokens | model R@10 | model R@20 | copy probe R@10 common | copy probe R@10 rare |",
             "|---|---|---|---|---|---|"]
    for p in curve["points"]:
        lines.append(f"| {p['step']} | {cell(p['tokens'])} | {cell(p['recall_at_10'])} | {cell(p['recall_at_20'])} | "
                     f"{cell(p['copy_r10_common'])} | {cell(p['copy_r10_rare'])} |")
    for name, values in curve["baselines"].items():
        lines.append(f"| {name} (flat) | | {cell(values['10'])} | {cell(values['20'])} | | |")
    crossing = curve["crosses_history"]
    lines.append("")
    for k, hit in crossing.items():
        lines.append(f"- model beats baseline:history at {k}: "
                     + ("not within this run" if hit is None else f"from step {hit['step']} ({cell(hit['tokens'])} tokens)"))
    return "\n".join(lines)


def plot_curve(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["tokens"] if p["tokens"] is not None else p["step"] for p in curve["points"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, k in zip(axes, KS):
        ax.plot(xs, [p[f"recall_at_{k}"] for p in curve["points"]], "o-", label="model")
        for name, style in zip(BASELINES, ("--", ":")):
            ax.axhline(curve["baselines"][name][k], linestyle=style, color="gray" if "freq" in name else "black",
                       label=name)
        ax.set_title(f"next-visit Recall@{k}")
        ax.set_xlabel("training tokens")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="RUN_DIR of a training run (its kept checkpoints)")
    parser.add_argument("--data", type=Path, required=True, help="target DATA_DIR (prepared with --vocab-from)")
    parser.add_argument("--out", type=Path, required=True, help="folder for curve.json / curve.md / curve.png")
    parser.add_argument("--max-patients", type=int, default=None, help="seeded subset per split (default: all)")
    parser.add_argument("--step-limit", type=int, default=24, help="rollout tokens per visit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_patients is not None and args.max_patients < 1:
        print("sparseehr curve: --max-patients must be >= 1", file=sys.stderr)
        return 2
    for path, what in ((args.run, "RUN_DIR"), (args.data, "DATA_DIR")):
        if not path.is_dir():
            print(f"sparseehr curve: {what} {path} does not exist", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        curve = curve_points(args.run, args.data, args.out, args.max_patients, args.step_limit, args.seed)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"sparseehr curve: {error}", file=sys.stderr)
        return 1
    (args.out / "curve.json").write_text(json.dumps(curve, indent=2))
    table = curve_markdown(curve)
    (args.out / "curve.md").write_text(f"# Learning curve on {args.data}\n\n{table}\n")
    plot_curve(curve, args.out / "curve.png")
    print(table)
    print(f"curve: {args.out / 'curve.md'}, {args.out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
