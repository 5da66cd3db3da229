"""Everything a run needs before its first step: distributed job, tokenizer, model config, engine config, data,
engine, and — on --resume — the restored state. Consistency checks that span those pieces live here."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseehr.data_pipeline import schema
from sparseehr.launch import checkpoint as ckpt
from sparseehr.launch.config import ConfigError, TrainConfig
from sparseehr.launch.data import PackedTrainLoader, load_data_tokenizer, load_windows_split, window_lengths
from sparseehr.launch.ds_config import build_ds_config, load_ds_config
from sparseehr.launch.engine import build_model, expert_parallel_rank, init_distributed, initialize_engine
from sparseehr.launch.export import RUN_MODEL_CONFIG_DIR, RUN_TOKENIZER_DIR

DS_CONFIG_FILE = "ds_config.json"


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
    state: dict[str, Any]          # step, tokens_seen
    resumed: bool
    flops_per_token: float

    def invariants(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint."""
        return {"world_size": self.world_size, "ep_size": self.ep_size, "seq_len": self.seq_len,
                "total_steps": self.total_steps, "micro_batch_size": self.cfg.micro_batch_size,
                "grad_accum_steps": self.cfg.grad_accum_steps, "seed": self.cfg.seed}


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


def load_model_config(cfg: TrainConfig, tokenizer, resume_tag: str | None):
    from sparseehr.model import SparseEHRConfig
    from sparseehr.model.presets import get_preset

    run_dir = Path(cfg.out_dir)
    if resume_tag is not None:
        return SparseEHRConfig.from_pretrained(str(run_dir / RUN_MODEL_CONFIG_DIR))
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


def complete_tied_weights(state: dict[str, torch.Tensor], model_config) -> dict[str, torch.Tensor]:
    # save_pretrained stores a tied lm_head once; give it back its alias so strict loading sees every key.
    if getattr(model_config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    return state


def prepare_run(cfg: TrainConfig, eval_only: bool = False) -> RunContext:
    from sparseehr.model.accounting import flops_per_token

    rank, world = init_distributed()
    set_cpu_threads()
    run_dir = Path(cfg.out_dir)
    resume_tag = ckpt.read_latest_tag(run_dir) if cfg.resume else None
    if eval_only and not (resume_tag or cfg.init_from):
        raise ConfigError("--eval-only needs weights: --resume (with a checkpoint in RUN_DIR) or --init-from HF_DIR")
    if not cfg.resume and not eval_only and (ckpt.list_tags(run_dir) or (run_dir / "metrics.jsonl").exists()):
        raise ConfigError(f"{run_dir} already holds a training run; pass --resume to continue it or choose a new "
                          f"--out")

    tokenizer = load_data_tokenizer(cfg.data_dir)
    model_config = load_model_config(cfg, tokenizer, resume_tag)
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
    engine = initialize_engine(model, cfg, ds_config, total_steps)
    # Training randomness (DeepSpeed's random token selection, router noise) starts from a per-rank stream that
    # does not depend on how much initialisation consumed, so runs at different ep sizes draw the same numbers.
    seed_everything(cfg.seed + rank)

    state: dict[str, Any] = {"step": 0, "tokens_seen": 0}
    ctx = RunContext(cfg, rank, world, ep_size, seq_len, tokenizer.pad_token_id, total_steps, model_config, engine,
                     loader, val_ds if len(val_ds) else None, state, resume_tag is not None,
                     flops_per_token(model_config, seq_len, training=True))
    if resume_tag is not None:
        restore(ctx, run_dir, resume_tag, load_optimizer=not eval_only)
    elif rank == 0 and not eval_only:
        write_run_files(cfg, run_dir, ds_config, ep_size, seq_len, model_config, tokenizer)
        if cfg.resume:  # e.g. a requeued job whose first attempt died before its first checkpoint
            print(f"[sparseehr] --resume: no checkpoint in {run_dir}, starting from step 0", flush=True)
            from sparseehr.launch.loop import truncate_metrics

            truncate_metrics(run_dir, 0)
    return ctx


def restore(ctx: RunContext, run_dir: Path, tag: str, load_optimizer: bool) -> None:
    import deepspeed.comm as dist

    from sparseehr.launch.loop import truncate_metrics

    main_states = torch.load(run_dir / tag / ckpt.MAIN_STATES_FILE, map_location="cpu", weights_only=False)
    saved = main_states.get("sparseehr")
    if saved is None:
        raise TrainingError(f"{run_dir / tag}: not written by sparseehr train (no 'sparseehr' client state)")
    current = ctx.invariants()
    current.pop("total_steps")  # may grow on resume (--max-steps raised); the schedule follows the new length
    for key, value in current.items():
        if key in saved and saved[key] != value:
            advice = (" (optimizer state does not survive an ep change: `sparseehr export` the run and start a new "
                      "one with --init-from)") if key == "ep_size" else ""
            raise TrainingError(f"cannot resume {run_dir / tag}: it was written with {key}={saved[key]}, this run "
                                f"has {key}={value}{advice}")
    del main_states
    ctx.engine.load_checkpoint(str(run_dir), tag=tag, load_optimizer_states=load_optimizer,
                               load_lr_scheduler_states=load_optimizer)
    rank_state = ckpt.load_rank_state(run_dir, tag, ctx.rank)
    ctx.loader.load_state_dict(rank_state["data_position"])
    ckpt.restore_rng_state(rank_state["rng"])
    ctx.state.update(step=int(saved["step"]), tokens_seen=int(saved["tokens_seen"]))
    if ctx.rank == 0:
        truncate_metrics(run_dir, ctx.state["step"])
        print(f"[sparseehr] resumed {tag}: step {ctx.state['step']}, data epoch {ctx.loader.position.epoch} "
              f"micro-batch {ctx.loader.position.micro_batches_done}", flush=True)
    dist.barrier()


def write_run_files(cfg: TrainConfig, run_dir: Path, ds_config: dict[str, Any], ep_size: int, seq_len: int,
                    model_config, tokenizer) -> None:
    """train_config.json (with the resolved ep size and seq_len), ds_config.json, model_config/, tokenizer/."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dataclasses.replace(cfg, ep_size=ep_size, seq_len=seq_len).save(run_dir)
    (run_dir / DS_CONFIG_FILE).write_text(json.dumps(ds_config, indent=2, sort_keys=True) + "\n")
    model_config.save_pretrained(str(run_dir / RUN_MODEL_CONFIG_DIR))
    tokenizer.save_pretrained(str(run_dir / RUN_TOKENIZER_DIR))
