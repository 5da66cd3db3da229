"""`sparseehr scaling run PLAN_DIR`: train every point of a plan through the normal training stack.

Each point is one `sparseehr train` run (the `deepspeed` launcher with `--ranks N`) into PLAN_DIR/runs/<id>/,
always with `--resume`: a point killed mid-run continues from its last checkpoint, a point already in
PLAN_DIR/runs.jsonl is skipped. A finished point's clinical utility (validation Recall@10/@20, rollout scoring,
and screening AUROC on a seeded patient subset: sparseehr.scaling.utility) is measured next, and the point appends
one row to runs.jsonl (format: docs/scaling.md). train.log is appended to, so a resumed point keeps every attempt.
`--print-commands` prints each pending point's `deepspeed` command line instead of running it (the SLURM array
script beside the plan runs `--point i` per array task).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sparseehr.scaling.plan import RUNS_DIR, PlanError, load_plan
from sparseehr.scaling.table import UTILITY
from sparseehr.scaling.utility import UtilityConfig, measure_utility

RUNS_FILE = "runs.jsonl"
TRAIN_LOG = "train.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr scaling run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan_dir", type=Path, help="PLAN_DIR written by `sparseehr scaling plan`")
    parser.add_argument("--ranks", type=int, default=1, help="training processes per point (deepspeed launcher)")
    parser.add_argument("--ep-size", type=int, default=1, help="expert-parallel size for points with MoE layers")
    parser.add_argument("--point", action="append", default=None, metavar="INDEX_OR_ID",
                        help="run only this point (plan index or id; repeatable); default: every point")
    parser.add_argument("--print-commands", action="store_true",
                        help="print each pending point's deepspeed command line instead of running it")
    return parser


def train_args(plan: dict[str, Any], point: dict[str, Any], run_dir: Path, ep_size: int) -> list[str]:
    """`sparseehr train` / launch/train.py arguments of one plan point."""
    training = plan["training"]
    args = ["--preset", training["preset"], "--data", plan["data_dir"], "--out", str(run_dir),
            "--max-tokens", str(point["tokens"]), "--seq-len", str(training["seq_len"]),
            "--micro-batch", str(training["micro_batch"]), "--lr", str(training["lr"]),
            "--warmup-steps", str(point["warmup_steps"]), "--seed", str(training["seed"]),
            "--eval-interval", "0", "--eval-max-rows", str(training["eval_max_rows"]),
            "--ckpt-interval", str(training["ckpt_interval"]), "--log-interval", "10", "--resume"]
    overrides = point["model_overrides"]
    for name in sorted(overrides):
        args += ["--model-override", f"{name}={json.dumps(overrides[name])}"]
    if ep_size > 1 and overrides["first_k_dense_replace"] < overrides["num_hidden_layers"]:
        args += ["--ep-size", str(ep_size)]  # a dense model has no experts to split
    return args


def deepspeed_command_line(ranks: int, args: list[str]) -> str:
    """The launcher form a cluster user runs (sparseehr.stages.train_command runs the same thing here)."""
    return shlex.join(["deepspeed", "--num_gpus", str(ranks), "--module", "sparseehr.launch.train", *args])


def finished_ids(plan_dir: Path) -> set[str]:
    path = plan_dir / RUNS_FILE
    if not path.is_file():
        return set()
    ids = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise PlanError(f"{path} line {number}: not a runs.jsonl row ({exc})") from exc
    return ids


def append_row(plan_dir: Path, row: dict[str, Any]) -> None:
    """One line per finished point, under an exclusive lock (array tasks on many nodes append to one file)."""
    with open(plan_dir / RUNS_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_UN)


def run_row(point: dict[str, Any], run_dir: Path, wall_s: float) -> dict[str, Any]:
    """The runs.jsonl row of a finished point, from its metrics.jsonl and the accounting of the model it trained."""
    from sparseehr.launch.rundir import read_metrics
    from sparseehr.model.accounting import count_parameters, flops_per_token
    from sparseehr.model.configuration_sparseehr import SparseEHRConfig

    records = read_metrics(run_dir)
    steps = [r for r in records if "tokens" in r]
    validations = [r for r in records if "val_loss" in r]
    if not steps or not validations:
        raise PlanError(f"{run_dir}/metrics.jsonl: no training step or no validation loss recorded")
    train_config = json.loads((run_dir / "train_config.json").read_text())
    config = SparseEHRConfig.from_pretrained(str(run_dir / "model_config"))
    counts = count_parameters(config)
    per_token = flops_per_token(config, int(train_config["seq_len"]), training=True)
    tokens = int(steps[-1]["tokens"])
    timed = [r["tokens_per_s"] for r in steps[1:]] or [steps[0]["tokens_per_s"]]
    return {"id": point["id"], "family": point["family"], "budget_flops": float(point["budget_flops"]),
            "flops": per_token * tokens, "flops_per_token": per_token, "params_active": counts.active_non_embedding,
            "params_total": counts.total, "tokens": tokens, "val_loss": float(validations[-1]["val_loss"]),
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "first_k_dense_replace": config.first_k_dense_replace, "seq_len": int(train_config["seq_len"]),
            "steps": int(steps[-1]["step"]), "tokens_per_s": statistics.median(timed), "wall_s": wall_s,
            "run_dir": str(run_dir)}


def utility_config(plan: dict[str, Any]) -> UtilityConfig:
    """The plan's utility settings (a plan written before they existed gets the defaults)."""
    return UtilityConfig(**plan.get("utility", {}))


def select_points(plan: dict[str, Any], wanted: list[str] | None) -> list[tuple[int, dict[str, Any]]]:
    points = list(enumerate(plan["points"]))
    if not wanted:
        return points
    by_id = {p["id"]: (i, p) for i, p in points}
    chosen = []
    for item in wanted:
        if item.isdigit() and int(item) < len(points):
            chosen.append(points[int(item)])
        elif item in by_id:
            chosen.append(by_id[item])
        else:
            raise PlanError(f"--point {item!r}: no such plan index (0..{len(points) - 1}) or id")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.ranks < 1 or args.ep_size < 1 or args.ranks % args.ep_size:
        print(f"sparseehr scaling run: --ep-size {args.ep_size} must divide --ranks {args.ranks} (both >= 1)",
              file=sys.stderr)
        return 2
    plan_dir: Path = args.plan_dir
    try:
        plan = load_plan(plan_dir)
        points = select_points(plan, args.point)
        done = finished_ids(plan_dir)
    except PlanError as exc:
        print(f"sparseehr scaling run: error: {exc}", file=sys.stderr)
        return 2
    pending = [(i, p) for i, p in points if p["id"] not in done]
    if args.print_commands:
        for index, point in pending:
            run_dir = (plan_dir / RUNS_DIR / point["id"]).resolve()
            print(f"# [{index}] {point['id']}")
            print(deepspeed_command_line(args.ranks, train_args(plan, point, run_dir, args.ep_size)))
        return 0

    from sparseehr.stages import run_subprocess, train_command

    utility = utility_config(plan)

    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per point would flood a sweep's log
    print(f"{len(points) - len(pending)} of {len(points)} points finished earlier; {len(pending)} to run", flush=True)
    for number, (index, point) in enumerate(pending, 1):
        run_dir = plan_dir / RUNS_DIR / point["id"]
        print(f"[{number}/{len(pending)}] point {index} {point['id']}: {point['tokens']:,} tokens", flush=True)
        started = time.perf_counter()
        code = run_subprocess(train_command(args.ranks, train_args(plan, point, run_dir, args.ep_size)),
                              run_dir / TRAIN_LOG, append=True)
        if code != 0:
            print(f"sparseehr scaling run: point {point['id']} failed (exit {code}); see {run_dir / TRAIN_LOG}. "
                  f"Re-running resumes it.", file=sys.stderr)
            return 1
        try:
            row = run_row(point, run_dir, time.perf_counter() - started)
            row.update(measure_utility(run_dir, Path(plan["data_dir"]), utility))
        except (PlanError, OSError, ValueError, RuntimeError) as exc:
            print(f"sparseehr scaling run: error: {exc}", file=sys.stderr)
            return 1
        append_row(plan_dir, row)
        measured = ", ".join(f"{name} {row[name]:.3f}" for name in UTILITY if row[name] is not None)
        print(f"  val_loss {row['val_loss']:.4f}, {row['tokens']:,} tokens, {row['wall_s']:.0f} s"
              f"{', ' + measured if measured else ''}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
