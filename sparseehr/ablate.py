"""`sparseehr ablate dense-prefix`: the paper's Tables 3-4 (dense-prefix ablation) measured here.

Trains one variant per D (number of leading dense layers) on the same DATA_DIR, the same token budget and the same
seed, then reports total and active parameters (sparseehr.model.accounting), median step time, tokens/s, peak
memory (RSS of the training process), validation perplexity and expert-utilisation standard deviation, with the
headline ratios D=4 vs D=0. Writes OUT/ablation.json, OUT/ablation.md and OUT/ablation.png.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from sparseehr.stages import StageError, StageRunner, run_subprocess, train_command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sparseehr ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["dense-prefix"], help="which ablation")
    parser.add_argument("--dense-layers", type=int, nargs="+", default=[0, 2, 4, 8], help="values of D")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--num-layers", type=int, default=16,
                        help="decoder layers of every variant (the paper's 16, so D=8 is half dense)")
    parser.add_argument("--data", type=Path, default=None,
                        help="a prepared DATA_DIR; default: synthesize and prepare a claims system under --out")
    parser.add_argument("--patients", type=int, default=4000, help="claims patients when --data is not given")
    parser.add_argument("--max-tokens", type=int, default=150_000, help="training tokens per variant")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ablate-dense-prefix"))
    parser.add_argument("--resume", action="store_true", help="skip variants finished by an earlier run")
    args = parser.parse_args(argv)
    bad = [d for d in args.dense_layers if not 0 <= d <= args.num_layers]
    if bad:
        parser.error(f"--dense-layers {bad} outside 0..--num-layers {args.num_layers}")
    if args.max_tokens < 1 or args.patients < 1:
        parser.error("--max-tokens and --patients must be >= 1")
    return args


def variant_row(run_dir: Path) -> dict:
    """Figures of one finished variant from its metrics.jsonl and the model's closed-form accounting."""
    from sparseehr.launch.rundir import load_model_config, metrics_path, read_metrics
    from sparseehr.model.accounting import count_parameters

    records = read_metrics(run_dir)
    train = [r for r in records if "step_time_s" in r]
    # The first logged interval includes start-up (graph warm-up, allocator growth): leave it out of the timing.
    timed = train[1:] if len(train) > 1 else train
    validations = [r for r in records if "val_loss" in r]
    if not timed or not validations:
        raise StageError(f"{metrics_path(run_dir)} has no timed steps or no validation loss")
    model_config = load_model_config(run_dir)
    counts = count_parameters(model_config)
    loads = [r["expert_load_std"] for r in timed if r.get("expert_load_std") is not None]
    return {
        "dense_layers": model_config.first_k_dense_replace,
        "total_params": counts.total,
        "active_params_per_token": counts.active_per_token,
        "step_time_s": statistics.median(r["step_time_s"] for r in timed),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
        "peak_rss_mb": max((r.get("peak_rss_mb") or 0.0) for r in records) or None,
        "val_loss": validations[-1]["val_loss"],
        "val_ppl": validations[-1]["val_ppl"],
        "expert_util_std": statistics.mean(loads) if loads else None,
        "steps": train[-1]["step"],
        "tokens": train[-1].get("tokens"),
    }


def headline(rows: list[dict]) -> dict:
    """Ratios D=4 vs D=0 (the paper: 12.5% fewer active parameters, 10.9% shorter steps, near-equal PPL)."""
    by_d = {row["dense_layers"]: row for row in rows}
    if 0 not in by_d or 4 not in by_d:
        return {}
    d0, d4 = by_d[0], by_d[4]
    return {"active_params_ratio_d4_over_d0": d4["active_params_per_token"] / d0["active_params_per_token"],
            "step_time_ratio_d4_over_d0": d4["step_time_s"] / d0["step_time_s"],
            "val_ppl_ratio_d4_over_d0": d4["val_ppl"] / d0["val_ppl"]}


def write_reports(out: Path, rows: list[dict], ratios: dict, settings: dict) -> None:
    (out / "ablation.json").write_text(json.dumps({"settings": settings, "rows": rows, "headline": ratios}, indent=2))
    lines = ["| D | total params | active/token | step time (s) | tokens/s | peak RSS (MB) | val PPL | expert util std |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        util = "n/a (no MoE layer)" if r["expert_util_std"] is None else f"{r['expert_util_std']:.3f}"
        rss = "n/a" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['dense_layers']} | {r['total_params']:,} | {r['active_params_per_token']:,} | "
                     f"{r['step_time_s']:.3f} | {r['tokens_per_s']:.0f} | {rss} | {r['val_ppl']:.2f} | {util} |")
    if ratios:
        lines += ["", "Headline D=4 vs D=0: active parameters x{active_params_ratio_d4_over_d0:.3f}, step time "
                  "x{step_time_ratio_d4_over_d0:.3f}, validation perplexity x{val_ppl_ratio_d4_over_d0:.3f}".format(**ratios)]
    (out / "ablation.md").write_text("# Dense-prefix ablation\n\n" + "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    d = [r["dense_layers"] for r in rows]
    for ax, key, label in zip(axes, ("step_time_s", "active_params_per_token", "val_ppl"),
                              ("median step time (s)", "active parameters / token", "validation perplexity")):
        ax.plot(d, [r[key] for r in rows], marker="o")
        ax.set_xlabel("dense layers D")
        ax.set_ylabel(label)
        ax.set_xticks(d)
    fig.suptitle("SparseEHR dense-prefix ablation")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    plt.close(fig)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.resume:
        print(f"sparseehr ablate: {out} exists; pass --resume to continue it", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    stages = StageRunner(out, resume=args.resume, total=len(args.dense_layers) + (0 if args.data else 2))
    try:
        data_dir = args.data
        if data_dir is None:
            from sparseehr.data_pipeline.cli import main as prepare_main
            from sparseehr.data_pipeline.simulator.cli import main as synth_main

            raw, data_dir = out / "raw", out / "data"
            stages.run("synthesize claims", raw, lambda: synth_main(
                ["--system", "claims", "--patients", str(args.patients), "--seed", str(args.seed),
                 "--out", str(raw), "--overwrite"]))
            stages.run("prepare claims", data_dir, lambda: prepare_main(
                ["--meds", str(raw), "--out", str(data_dir), "--max-len", str(args.seq_len), "--overwrite",
                 "--no-progress"]))
        rows = []
        for dense in args.dense_layers:
            run_dir = out / f"D{dense}"
            train_args = ["--preset", args.preset, "--data", str(data_dir), "--out", str(run_dir),
                          "--max-tokens", str(args.max_tokens), "--seq-len", str(args.seq_len),
                          "--micro-batch", str(args.micro_batch), "--lr", str(args.lr), "--seed", str(args.seed),
                          "--model-override", f"num_hidden_layers={args.num_layers}",
                          "--model-override", f"first_k_dense_replace={dense}", "--resume"]
            stages.run(f"train D={dense}", run_dir,
                       lambda: run_subprocess(train_command(args.ranks, train_args), run_dir / "train.log"))
            rows.append(variant_row(run_dir))
    except StageError as error:
        print(f"sparseehr ablate: {error}", file=sys.stderr)
        return 1
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    write_reports(out, rows, headline(rows), settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
