"""`sparseehr bench train`: training throughput of a preset with 1 rank, 2 ranks data parallel, 2 ranks ep=2.

Each configuration is a real `deepspeed --num_gpus N launch/train.py` run; figures are read back from its
metrics.jsonl: median step time, tokens/s and MFU over the steps after --warmup, and the largest peak RSS of any
rank. Configurations run one after another in the same invocation so their ratios are comparable.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from sparseehr.launch.launcher import deepspeed_command
from sparseehr.launch.rundir import read_metrics

CONFIGS = {  # name -> (ranks, engine JSON, ep size)
    "1rank": (1, "zero1.json", 1),
    "2rank_dp": (2, "zero1.json", 1),
    "2rank_ep2": (2, "zero2_ep.json", 2),
}


def run_config(name: str, data: str, out: Path, preset: str, steps: int, extra: list[str], timeout: int,
               threads: int) -> Path:
    ranks, ds_json, ep = CONFIGS[name]
    run_dir = out / name
    command = deepspeed_command(ranks, [
        "--preset", preset, "--data", data, "--out", str(run_dir), "--max-steps", str(steps), "--deepspeed", ds_json,
        "--ep-size", str(ep), "--eval-interval", "0", "--ckpt-interval", "0", "--log-interval", "1", *extra],
        as_script=True)
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "TQDM_DISABLE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return run_dir


def summarize(run_dir: Path, warmup: int) -> dict[str, float]:
    records = read_metrics(run_dir)
    timed = [r for r in records if "loss" in r and r["step"] > warmup]
    if not timed:
        raise RuntimeError(f"{run_dir}: no steps after warmup {warmup}; raise --steps")
    return {"steps_timed": len(timed),
            "step_time_s": statistics.median(r["step_time_s"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "mfu": statistics.median(r["mfu"] for r in timed),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records if "peak_rss_mb" in r),
            "final_loss": timed[-1]["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="DATA_DIR (e.g. `sparseehr prepare` of the MIMIC demo)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--out", default=None, help="folder for the runs and bench_train.json (default: temp)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--threads-per-rank", type=int, default=1,
                        help="OMP_NUM_THREADS of each rank (default 1: N ranks use N cores; 0 = leave as is)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: extra `sparseehr train` flags")
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    if args.warmup >= args.steps:
        parser.error("--warmup must be smaller than --steps")
    extra = [a for a in args.train_args if a != "--"]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sparseehr-bench-train-"))
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for name in names:
        results[name] = summarize(run_config(name, args.data, out, args.preset, args.steps, extra, args.timeout,
                                             args.threads_per_rank),
                                  args.warmup)
    print(f"sparseehr bench train: preset {args.preset}, {args.steps} steps (median of the last "
          f"{args.steps - args.warmup}), {args.threads_per_rank or 'default'} thread(s) per rank, data {args.data}")
    print(f"{'config':<11} {'step_s':>8} {'tokens/s':>10} {'MFU':>8} {'peak RSS MiB':>13} {'final loss':>11}")
    for name, r in results.items():
        print(f"{name:<11} {r['step_time_s']:>8.4f} {r['tokens_per_s']:>10.0f} {r['mfu']:>8.4f} "
              f"{r['peak_rss_mb']:>13.0f} {r['final_loss']:>11.4f}")
    (out / "bench_train.json").write_text(json.dumps({"preset": args.preset, "steps": args.steps,
                                                      "warmup": args.warmup, "results": results}, indent=2))
    print(f"wrote {out / 'bench_train.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
