"""Everything a run needs before its first step: distributed job, tokenizer, model config, engine config, data,
engine, the checkpoint manager, and — on --resume — the restored state. Consistency checks that span those pieces
live here. Files are read and written through launch/rundir.py; save and restore belong to launch/checkpoint.py."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseehr.data_pipeline import schema
from sparseehr.launch import rundir
from sparseehr.launch.checkpoint import CheckpointManager, RNGState, TrainState
from sparseehr.launch.config import ConfigError, TrainConfig
from sparseehr.launch.data import (PackedTrainLoader, load_data_tokenizer, load_windows_split, log_unigram_prior,
                                   window_lengths)
from sparseehr.launch.ds_config import build_ds_config, load_ds_config
from sparseehr.launch.engine import (build_model, complete_tied_weights, expert_parallel_rank, init_distributed,
                                     initialize_engine)


class TrainingError(RuntimeError):
    """A run that cannot start or continue (the message says which file or setting and why)."""


@dataclass
class RunContext:
    cfg: TrainConfig
    rank: int
    world_size: int
    ep_size: int
    seq_len: int
    pad_id: int
    total_steps: int
    model_config: Any
    engine: Any
    loader: PackedTrainLoader
    val_dataset: Any
    state: TrainState
    checkpoints: CheckpointManager
    resumed: bool
    flops_per_token: float


def run_invariants(cfg: TrainConfig, world_size: int, ep_size: int, seq_len: int, total_steps: int) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint (total_steps may grow)."""
    return {"world_size": world_size, "ep_size": ep_size, "seq_len": seq_len, "total_steps": total_steps,
            "micro_batch_size": cfg.micro_batch_size, "grad_accum_steps": cfg.grad_accum_steps, "seed": cfg.seed}


def set_cpu_threads() -> None:
    """On CPU, split the cores between the ranks on this node (oversubscription makes every rank slower)."""
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    local_ranks = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_ranks, 1)))


def steps_for_tokens(max_tokens: int, real_tokens_per_micro_batch: float, grad_accum_steps: int,
                     world_size: int) -> int:
    """Optimizer steps that cover max_tokens real tokens (rounded up; the schedule needs a fixed length).

    >>> steps_for_tokens(1000, 100.0, 2, 2)  # 400 tokens per step
    3
    """
    return max(1, math.ceil(max_tokens / (real_tokens_per_micro_batch * grad_accum_steps * world_size)))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_model_config(cfg: TrainConfig, tokenizer, resume_tag: str | None):
    """The run's own config on resume, the HF_DIR's with --init-from, else the preset sized to the vocabulary."""
    from sparseehr.model import SparseEHRConfig
    from sparseehr.model.presets import get_preset

    if resume_tag is not None:
        return rundir.load_model_config(cfg.out_dir)
    if cfg.init_from:
        if cfg.model_overrides:
            raise ConfigError(f"--model-override cannot change a model loaded with --init-from {cfg.init_from}")
        if not (Path(cfg.init_from) / "config.json").is_file():
            raise ConfigError(f"--init-from {cfg.init_from}: no config.json (expected a `sparseehr export` HF_DIR)")
        model_config = SparseEHRConfig.from_pretrained(cfg.init_from)
    else:
        specials = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                    "eos_token_id": tokenizer.eos_token_id}
        try:
            model_config = get_preset(cfg.preset, vocab_size=len(tokenizer), **{**specials, **cfg.model_overrides})
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if model_config.vocab_size < len(tokenizer):
        raise ConfigError(f"model vocab_size {model_config.vocab_size} < tokenizer size {len(tokenizer)} "
                          f"({cfg.data_dir}/{schema.DATA_TOKENIZER_DIR})")
    return model_config


def load_init_weights(init_from: str) -> dict[str, torch.Tensor]:
    """The full (ep=1) state_dict of an exported HF_DIR, read from its safetensors (no from_pretrained: it would
    drop DeepSpeed's expert tags, DEEPSPEED_MOE.md item 9)."""
    from safetensors.torch import load_file

    files = sorted(Path(init_from).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"--init-from {init_from}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def prepare_run(cfg: TrainConfig, eval_only: bool = False) -> RunContext:
    from sparseehr.model.accounting import flops_per_token

    rank, world = init_distributed()
    set_cpu_threads()
    run_dir = Path(cfg.out_dir)
    resume_tag = rundir.read_latest_tag(run_dir) if cfg.resume else None
    if eval_only and not (resume_tag or cfg.init_from):
        raise ConfigError("--eval-only needs weights: --resume (with a checkpoint in RUN_DIR) or --init-from HF_DIR")
    if not cfg.resume and not eval_only and rundir.holds_training_run(run_dir):
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume to continue it or choose a new "
                          f"--out")

    tokenizer = load_data_tokenizer(cfg.data_dir)
    model_config = resolve_model_config(cfg, tokenizer, resume_tag)
    ds_json, ds_path = load_ds_config(cfg.deepspeed_config)
    ds_config, ep_size = build_ds_config(cfg, ds_json, str(ds_path), world, model_config.num_experts,
                                         model_config.num_moe_layers > 0)

    train_ds = load_windows_split(cfg.data_dir, schema.SPLIT_TRAIN)
    val_ds = load_windows_split(cfg.data_dir, schema.SPLIT_VALIDATION)
    longest = int(max(window_lengths(train_ds).max(initial=0), window_lengths(val_ds).max(initial=0)))
    seq_len = cfg.seq_len or longest
    if longest > seq_len:
        raise ConfigError(f"--seq-len {seq_len} is shorter than the longest window ({longest} tokens) in "
                          f"{cfg.data_dir}/{schema.DATA_WINDOWS_DIR}; windows are never cut (they would lose the "
                          f"patient prefix), so raise --seq-len or prepare with a smaller max length")
    if seq_len > model_config.max_position_embeddings:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                          f"{model_config.max_position_embeddings} (preset {cfg.preset})")
    loader = PackedTrainLoader(train_ds, seq_len, cfg.micro_batch_size, rank, world, cfg.seed,
                               tokenizer.pad_token_id)
    total_steps = cfg.max_steps if cfg.max_steps is not None else steps_for_tokens(
        cfg.max_tokens, loader.real_tokens_per_micro_batch_estimate(), cfg.grad_accum_steps, world)

    ep_rank = expert_parallel_rank(ep_size) if ep_size > 1 else 0
    init_weights = None
    if cfg.init_from and resume_tag is None:
        init_weights = complete_tied_weights(load_init_weights(cfg.init_from), model_config)
    model = build_model(model_config, ep_size, ep_rank, init_weights, cfg.seed)
    if init_weights is None and resume_tag is None and model.lm_head.bias is not None:
        # Data-dependent initialisation (the prior of a classifier's bias): the output bias starts at the training
        # split's log token frequencies; docs/model.md says why this matters for copying rare codes.
        with torch.no_grad():
            model.lm_head.bias.copy_(log_unigram_prior(train_ds, model_config.vocab_size))
    engine = initialize_engine(model, cfg, ds_config, total_steps)
    # Training randomness (DeepSpeed's random token selection, router noise) starts from a per-rank stream that
    # does not depend on how much initialisation consumed, so runs at different ep sizes draw the same numbers.
    seed_everything(cfg.seed + rank)

    state = TrainState()
    checkpoints = CheckpointManager(run_dir, engine, state, {"data_position": loader, "rng": RNGState()},
                                    run_invariants(cfg, world, ep_size, seq_len, total_steps), rank, cfg.keep_last,
                                    cfg.ckpt_interval)
    ctx = RunContext(cfg, rank, world, ep_size, seq_len, tokenizer.pad_token_id, total_steps, model_config, engine,
                     loader, val_ds if len(val_ds) else None, state, checkpoints, resume_tag is not None,
                     flops_per_token(model_config, seq_len, training=True))
    if resume_tag is not None:
        checkpoints.load(resume_tag, eval_only=eval_only)
        if rank == 0:
            print(f"[sparseehr] resumed {resume_tag}: step {state.step}, data epoch {loader.position.epoch} "
                  f"micro-batch {loader.position.micro_batches_done}", flush=True)
    elif rank == 0 and not eval_only:
        write_run_files(cfg, run_dir, ds_config, ep_size, seq_len, model_config, tokenizer)
        if cfg.resume:  # e.g. a requeued job whose first attempt died before its first checkpoint
            print(f"[sparseehr] --resume: no checkpoint in {run_dir}, starting from step 0", flush=True)
            rundir.truncate_metrics(run_dir, 0)
    return ctx


def write_run_files(cfg: TrainConfig, run_dir: Path, ds_config: dict[str, Any], ep_size: int, seq_len: int,
                    model_config, tokenizer) -> None:
    """train_config.json (with the resolved ep size and seq_len), ds_config.json, model_config/, tokenizer/."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_train_config(run_dir, dataclasses.replace(cfg, ep_size=ep_size, seq_len=seq_len))
    rundir.write_ds_config(run_dir, ds_config)
    rundir.save_model_config(run_dir, model_config)
    rundir.save_tokenizer(run_dir, tokenizer)
