"""Train SparseEHR: `deepspeed [--num_gpus N | --hostfile F] launch/train.py ARGS` or `sparseehr train ARGS`.

Both run the same `main(argv)`; without a launcher (no RANK in the environment) it makes a one-rank job itself.
The loop lives in launch/loop.py, engine set-up in launch/engine.py, settings in launch/config.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sparseehr.data_pipeline.artifacts import (  # noqa: E402
    DATA_DIR, HF_DIR, MEDS_INPUT, MIMIC_INPUT, RUN_DIR, ArtifactError, OutputDirError, artifact_kind,
    check_output_dir, read_safetensors_header, vocabulary_hash,
)
from sparseehr.launch.config import ConfigError, TrainConfig, get_train_preset  # noqa: E402

# CLI flag -> TrainConfig field, for the plain overrides (None on the command line = keep the preset's value).
OVERRIDES = {
    "seq_len": int, "micro_batch": int, "grad_accum": int, "lr": float, "min_lr_ratio": float, "warmup_steps": int,
    "weight_decay": float, "grad_clip": float, "seed": int, "log_interval": int, "eval_interval": int,
    "eval_max_rows": int, "ckpt_interval": int, "keep_last": int, "peak_tflops": float,
}
FIELD_OF = {"micro_batch": "micro_batch_size", "grad_accum": "grad_accum_steps"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help="tiny | small | base | paper (model and training preset)")
    parser.add_argument("--data", required=True, help="DATA_DIR written by `sparseehr prepare`")
    parser.add_argument("--out", required=True, help="RUN_DIR: checkpoints, metrics.jsonl, configs")
    parser.add_argument("--deepspeed", default=None,
                        help="engine JSON: a path or a shipped name (zero1, zero2, zero2_ep, *_bf16, cpu)")
    parser.add_argument("--ep-size", type=int, default=None, help="expert-parallel size (divides experts, ranks)")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train")
    length.add_argument("--max-tokens", type=int, default=None, help="real (non-padding) tokens to train on")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/latest (fresh if none)")
    parser.add_argument("--init-from", default=None, help="exported HF_DIR to start from (any ep size)")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate the starting weights (--resume / --init-from), log val_loss, exit")
    parser.add_argument("--model-override", action="append", default=[], metavar="FIELD=JSON",
                        help="SparseEHRConfig field for this run, e.g. num_experts=8 (repeatable)")
    for flag, kind in OVERRIDES.items():
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, default=None)
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same, so ignore it.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_model_overrides(pairs: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--model-override {pair!r}: expected FIELD=VALUE")
        try:
            overrides[name] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[name] = raw  # a bare string such as shared_expert_mode=residual
    return overrides


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {"data_dir": args.data, "out_dir": args.out, "max_steps": args.max_steps,
                              "max_tokens": args.max_tokens, "ep_size": args.ep_size, "resume": args.resume,
                              "init_from": args.init_from,
                              "model_overrides": parse_model_overrides(args.model_override)}
    if args.deepspeed is not None:
        values["deepspeed_config"] = args.deepspeed
    for flag in OVERRIDES:
        if getattr(args, flag) is not None:
            values[FIELD_OF.get(flag, flag)] = getattr(args, flag)
    return get_train_preset(args.preset, **values)


def check_train_paths(cfg: TrainConfig) -> None:
    """Before any distributed set-up: --data must be a DATA_DIR, --out must not hold another artefact kind."""
    kind = artifact_kind(cfg.data_dir)
    if kind != DATA_DIR:
        if not os.path.isdir(cfg.data_dir):
            raise ConfigError(f"--data {cfg.data_dir}: no such folder")
        hint = {MIMIC_INPUT: f"run `sparseehr prepare --mimic {cfg.data_dir} --out DATA_DIR` first",
                MEDS_INPUT: f"run `sparseehr prepare --meds {cfg.data_dir} --out DATA_DIR` first"}.get(
            kind, "give the folder `sparseehr prepare` wrote")
        raise ConfigError(f"--data {cfg.data_dir} holds {kind or 'no DATA_DIR files'}, not a DATA_DIR; {hint}")
    check_output_dir(cfg.out_dir, RUN_DIR, inputs=[("--data", cfg.data_dir), ("--init-from", cfg.init_from)])
    if cfg.init_from:
        if artifact_kind(cfg.init_from) != HF_DIR:
            raise ConfigError(f"--init-from {cfg.init_from}: not an exported HF_DIR (config.json + weights)")
        try:
            for weights in sorted(Path(cfg.init_from).glob("*.safetensors")):
                read_safetensors_header(weights)
        except ArtifactError as exc:
            raise ConfigError(f"--init-from: {exc}") from exc
    run_tokenizer = Path(cfg.out_dir) / "tokenizer" / "tokenizer.json"
    if cfg.resume and run_tokenizer.is_file():
        # a resumed run must read ids that mean what they meant: the DATA_DIR's vocabulary is the run's
        data_tokenizer = Path(cfg.data_dir) / "tokenizer" / "tokenizer.json"
        if tokenizer_vocab_hash(run_tokenizer) != tokenizer_vocab_hash(data_tokenizer):
            raise ConfigError(f"--resume: {cfg.out_dir} was trained on another vocabulary than --data "
                              f"{cfg.data_dir} ({data_tokenizer} differs from {run_tokenizer}); resume with the "
                              f"run's own DATA_DIR")


def tokenizer_vocab_hash(path: Path) -> str | None:
    try:
        vocab = json.loads(path.read_text()).get("model", {}).get("vocab")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable tokenizer ({exc})") from exc
    return vocabulary_hash(vocab) if isinstance(vocab, dict) else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = config_from_args(args)
        check_train_paths(cfg)
    except (ConfigError, OutputDirError) as exc:
        print(f"sparseehr train: error: {exc}", file=sys.stderr)
        return 2
    from sparseehr.launch.checkpoint import CheckpointError
    from sparseehr.launch.loop import TrainingError, train
    from sparseehr.launch.rundir import RunDirError

    try:
        train(cfg, eval_only=args.eval_only)
    except (ConfigError, TrainingError, CheckpointError) as exc:
        print(f"sparseehr train: error: {exc}", file=sys.stderr)
        return 2
    except RunDirError as exc:  # a damaged RUN_DIR file: a data error, not a usage error
        print(f"sparseehr train: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
