"""`sparseehr scaling plan`: pick the model shapes and training tokens of an IsoFLOP sweep; write PLAN_DIR/plan.json.

For every family and budget C, each ladder shape (sparseehr.scaling.families) gets its training FLOPs per token
f from sparseehr.model.accounting (forward + backward, active parameters with routers and the shared expert,
attention over the data's packed row length) and so D = C / f training tokens. The plan keeps `--sizes`
consecutive shapes centred on the one whose tokens-per-parameter ratio D / N is closest to `--tokens-per-param`
(the expected optimum), dropping shapes too large to get `--min-steps` optimizer steps. It refuses a plan whose
token count exceeds `--max-epochs` passes over DATA_DIR's training split.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sparseehr.scaling.utility import UtilityConfig

PLAN_FILE = "plan.json"
SLURM_FILE = "slurm_array.sh"
RUNS_DIR = "runs"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan that cannot be made (the message says which budget, point or setting and why)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr scaling plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="DATA_DIR written by `sparseehr prepare`")
    parser.add_argument("--budgets", type=float, nargs="+", required=True, help="training FLOP budgets C")
    parser.add_argument("--family", nargs="+", default=["dense"], choices=["dense", "hybrid", "all-moe"])
    parser.add_argument("--out", type=Path, required=True, help="PLAN_DIR (plan.json, slurm_array.sh, runs/)")
    parser.add_argument("--sizes", type=int, default=5, help="model shapes per budget (>= 4, default 5)")
    parser.add_argument("--tokens-per-param", type=float, default=20.0,
                        help="expected optimal D/N the shapes are centred on (default 20, Hoffmann et al.)")
    parser.add_argument("--max-epochs", type=float, default=4.0,
                        help="refuse points that need more passes over the training split (default 4)")
    parser.add_argument("--min-steps", type=int, default=20, help="drop shapes with fewer optimizer steps")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="packed row length (default: the longest window, as `sparseehr train` does)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-max-rows", type=int, default=0, help="validation rows per evaluation (0 = all)")
    parser.add_argument("--ckpt-interval", type=int, default=50, help="optimizer steps between checkpoints")
    parser.add_argument("--utility-patients", type=int, default=64,
                        help="validation patients whose next-visit Recall@10/@20 and screening AUROC `run` measures "
                             "per point (seeded subset, rollout scoring; 0 = none, default 64)")
    parser.add_argument("--utility-step-limit", type=int, default=24, help="new tokens per rollout (default 24)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plan.json")
    return parser


def data_summary(data_dir: Path, seq_len: int | None) -> dict[str, Any]:
    """Training tokens, the packed row length and its mean fill, vocabulary size of a DATA_DIR."""
    import numpy as np

    from sparseehr.data_pipeline import schema
    from sparseehr.launch.data import load_data_tokenizer, load_windows_split, pack_next_fit, window_lengths

    try:
        train = window_lengths(load_windows_split(data_dir, schema.SPLIT_TRAIN))
        val = window_lengths(load_windows_split(data_dir, schema.SPLIT_VALIDATION))
        vocab = len(load_data_tokenizer(data_dir))
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise PlanError(f"--data {data_dir}: {exc}") from exc
    if not len(train) or not len(val):
        raise PlanError(f"--data {data_dir}: the train or validation split has no windows")
    longest = int(max(train.max(), val.max()))
    seq_len = seq_len or longest
    if seq_len < longest:
        raise PlanError(f"--seq-len {seq_len} is shorter than the longest window ({longest}) of {data_dir}")
    rows = pack_next_fit(train, np.arange(len(train)), seq_len)
    return {"train_tokens": int(train.sum()), "train_windows": int(len(train)), "seq_len": seq_len,
            "mean_row_tokens": float(train.sum() / len(rows)), "vocab_size": vocab}


def shape_figures(family: str, hidden: int, layers: int, vocab: int, seq_len: int) -> dict[str, Any]:
    from sparseehr.model.accounting import count_parameters, flops_breakdown
    from sparseehr.model.configuration_sparseehr import SparseEHRConfig
    from sparseehr.scaling.families import family_fields

    fields = family_fields(family, hidden, layers, seq_len)
    config = SparseEHRConfig(vocab_size=vocab, **fields)
    counts = count_parameters(config)
    flops = flops_breakdown(config, seq_len)
    return {"model_overrides": fields, "params_active": counts.active_non_embedding, "params_total": counts.total,
            "params_active_with_embedding": counts.active_per_token, "flops_per_token": flops.training,
            "flops_breakdown": flops.as_dict()}


def pick_shapes(candidates: list[dict], sizes: int, tokens_per_param: float) -> list[dict]:
    """`sizes` consecutive candidates centred on the one whose D/N is closest to tokens_per_param.

    >>> cands = [{"tokens": 2000 // n, "params_active": n} for n in (1, 2, 4, 8, 16)]  # D/N: 2000 500 125 31 7
    >>> [c["params_active"] for c in pick_shapes(cands, 3, 100.0)]
    [2, 4, 8]
    """
    if len(candidates) < sizes:
        return candidates
    ratios = [math.log(c["tokens"] / c["params_active"] / tokens_per_param) for c in candidates]
    centre = min(range(len(candidates)), key=lambda i: abs(ratios[i]))
    start = min(max(0, centre - sizes // 2), len(candidates) - sizes)
    return candidates[start:start + sizes]


def make_plan(args: argparse.Namespace) -> dict[str, Any]:
    from sparseehr.scaling.families import LADDER

    if args.sizes < 4:
        raise PlanError(f"--sizes {args.sizes}: an IsoFLOP parabola needs at least 4 shapes per budget")
    if any(not b > 0 for b in args.budgets) or len(set(args.budgets)) != len(args.budgets):
        raise PlanError(f"--budgets {args.budgets}: budgets must be positive and distinct")
    for name in ("micro_batch", "min_steps", "ckpt_interval"):
        if getattr(args, name) < 1:
            raise PlanError(f"--{name.replace('_', '-')} must be >= 1")
    if not (args.lr > 0 and args.tokens_per_param > 0 and args.max_epochs > 0):
        raise PlanError("--lr, --tokens-per-param and --max-epochs must be positive")
    try:
        utility = UtilityConfig(patients=args.utility_patients, step_limit=args.utility_step_limit, seed=args.seed)
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    data = data_summary(args.data, args.seq_len)
    if utility.patients and utility.step_limit > data["seq_len"] - 3:
        # eval's rollout prompt is context + GAP + VISIT:open, and the rollout must fit the model's window too
        raise PlanError(f"--utility-step-limit {utility.step_limit} leaves no context in the {data['seq_len']}-token "
                        f"window; use at most {data['seq_len'] - 3} (or --utility-patients 0)")
    tokens_per_step = data["mean_row_tokens"] * args.micro_batch
    points: list[dict[str, Any]] = []
    for family in args.family:
        shapes = [(h, layers, shape_figures(family, h, layers, data["vocab_size"], data["seq_len"]))
                  for h, layers in LADDER]
        for budget in sorted(args.budgets):
            candidates = []
            for hidden, layers, figures in shapes:
                tokens = int(budget // figures["flops_per_token"])
                if tokens / tokens_per_step >= args.min_steps:
                    candidates.append({"hidden_size": hidden, "num_hidden_layers": layers, "tokens": tokens,
                                       **figures})
            chosen = pick_shapes(candidates, args.sizes, args.tokens_per_param)
            if len(chosen) < args.sizes:
                raise PlanError(f"budget {budget:.3g} ({family}): only {len(chosen)} shapes get >= --min-steps "
                                f"{args.min_steps} steps of {tokens_per_step:.0f} tokens; raise the budget")
            for point in chosen:
                epochs = point["tokens"] / data["train_tokens"]
                if epochs > args.max_epochs:
                    raise PlanError(
                        f"budget {budget:.3g} ({family}, hidden {point['hidden_size']} x {point['num_hidden_layers']}"
                        f" layers) needs {point['tokens']:,} training tokens = {epochs:.1f} epochs of {args.data}'s "
                        f"{data['train_tokens']:,}-token train split, over --max-epochs {args.max_epochs:g}: lower the "
                        f"budget or prepare more patients")
                steps = point["tokens"] / tokens_per_step
                point_id = f"{family}-C{budget:.3g}-h{point['hidden_size']}-l{point['num_hidden_layers']}"
                points.append({"id": point_id, "family": family, "budget_flops": budget, "epochs": epochs,
                               "estimated_steps": round(steps),
                               "warmup_steps": max(1, min(100, round(steps / 20))), **point})
    training = {"preset": "tiny", "seq_len": data["seq_len"], "micro_batch": args.micro_batch, "lr": args.lr,
                "seed": args.seed, "eval_max_rows": args.eval_max_rows, "ckpt_interval": args.ckpt_interval}
    return {"version": PLAN_VERSION, "data_dir": str(args.data.resolve()), "data": data, "training": training,
            "utility": asdict(utility),
            "settings": {"budgets": sorted(args.budgets), "families": args.family, "sizes": args.sizes,
                         "tokens_per_param": args.tokens_per_param, "max_epochs": args.max_epochs,
                         "min_steps": args.min_steps},
            "points": points}


def write_slurm_script(plan_dir: Path, n_points: int) -> Path:
    """A SLURM array job: task i runs plan point i on one node (resumable: requeued tasks continue)."""
    script = f"""#!/usr/bin/env bash
# SLURM array over the {n_points} points of {plan_dir / PLAN_FILE}: task i trains point i with
# `sparseehr scaling run --point i` (deepspeed launcher, one node; more GPUs: sbatch --gpus-per-node G,
# expert parallelism: EP_SIZE=E), which skips a finished point and resumes a
# killed one from its checkpoint. Submit with: sbatch {plan_dir / SLURM_FILE}; fit afterwards with
#   sparseehr scaling fit {plan_dir / 'runs.jsonl'} --out {plan_dir / 'fit'}
#SBATCH --job-name=sparseehr-scaling
#SBATCH --array=0-{n_points - 1}
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
RANKS=${{GPUS_PER_NODE:-${{SLURM_GPUS_ON_NODE:-1}}}}
EP_SIZE=${{EP_SIZE:-1}}
python -m sparseehr scaling run {shlex.quote(str(plan_dir.resolve()))} --point "$SLURM_ARRAY_TASK_ID" \\
    --ranks "$RANKS" --ep-size "$EP_SIZE"
"""
    path = plan_dir / SLURM_FILE
    path.write_text(script)
    path.chmod(0o755)
    return path


def load_plan(plan_dir: Path) -> dict[str, Any]:
    path = Path(plan_dir) / PLAN_FILE
    if not path.is_file():
        raise PlanError(f"{path}: missing; write one with `sparseehr scaling plan`")
    try:
        plan = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path}: not JSON ({exc})") from exc
    for key in ("version", "data_dir", "training", "points"):
        if key not in plan:
            raise PlanError(f"{path}: no {key!r} field (not written by `sparseehr scaling plan`?)")
    return plan


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out: Path = args.out
    if (out / PLAN_FILE).exists() and not args.overwrite:
        print(f"sparseehr scaling plan: {out / PLAN_FILE} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        plan = make_plan(args)
    except PlanError as exc:
        print(f"sparseehr scaling plan: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(plan, indent=2) + "\n")
    tmp.replace(out / PLAN_FILE)
    write_slurm_script(out, len(plan["points"]))
    print(f"{'point':<34} {'N active':>10} {'tokens':>11} {'D/N':>7} {'FLOPs/token':>12} {'epochs':>7} {'steps':>6}")
    for p in plan["points"]:
        print(f"{p['id']:<34} {p['params_active']:>10,} {p['tokens']:>11,} {p['tokens'] / p['params_active']:>7.1f} "
              f"{p['flops_per_token']:>12.4g} {p['epochs']:>7.2f} {p['estimated_steps']:>6}")
    print(f"wrote {out / PLAN_FILE} ({len(plan['points'])} points) and {out / SLURM_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
