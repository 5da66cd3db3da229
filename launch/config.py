"""Training settings: one validated dataclass and named presets.

Our settings (batch, learning rate, schedule, run length, checkpoints) live here; DeepSpeed's JSON files in
ds_configs/ hold engine settings only (ZeRO stage, precision, communication). `launch.ds_config` merges the two.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


class ConfigError(ValueError):
    """A training setting (or a combination of settings) that cannot work; the message names the field."""


@dataclass
class TrainConfig:
    """Everything that decides what a training run does (except the engine JSON).

    Args:
        preset: model preset name (sparseehr.model.presets), e.g. "tiny", "small".
        data_dir: prepared DATA_DIR (`sparseehr prepare` output).
        out_dir: RUN_DIR: checkpoints, metrics.jsonl, train_config.json, ds_config.json.
        deepspeed_config: a ds_configs JSON path or the name of one shipped in sparseehr.ds_configs.
        ep_size: expert-parallel size (None: taken from the JSON's "sparseehr" section, else 1).
        seq_len: packed row length in tokens (None: the longest training window, so no window is ever cut).
        micro_batch_size: packed rows per rank per forward pass.
        grad_accum_steps: micro-batches per optimizer step.
        max_steps / max_tokens: run length; exactly one is set (max_tokens counts real, non-padding tokens,
            summed over ranks, and is turned into steps from the first batches' fill rate — see docs).
        lr, min_lr_ratio, warmup_steps: AdamW peak learning rate, cosine floor as a fraction of lr, linear warmup.
        weight_decay: applied to matrices only (not to norms, biases or embeddings).
        grad_clip: global gradient-norm clip (DeepSpeed's gradient_clipping); 0 disables.
        log_interval / eval_interval / ckpt_interval: in optimizer steps; 0 disables eval / interval checkpoints.
        eval_max_rows: cap on packed validation rows per evaluation (0 = the whole validation split).
        keep_last: how many checkpoints stay on disk (older ones are deleted after a successful save).
        init_from: an exported HF_DIR whose weights start the run (any ep size; optimizer starts fresh).
        model_overrides: extra SparseEHRConfig fields passed to get_preset (e.g. {"num_experts": 8}).
        peak_tflops: accelerator peak for MFU (None: a table for known GPUs, a measured matmul peak on CPU).
    """

    preset: str = "tiny"
    data_dir: str = ""
    out_dir: str = ""
    deepspeed_config: str = "zero1.json"
    ep_size: int | None = None
    seq_len: int | None = None
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    max_steps: int | None = None
    max_tokens: int | None = None
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234
    log_interval: int = 1
    eval_interval: int = 50
    eval_max_rows: int = 0
    ckpt_interval: int = 100
    keep_last: int = 2
    resume: bool = False
    init_from: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    peak_tflops: float | None = None

    def __post_init__(self) -> None:
        positive = ("micro_batch_size", "grad_accum_steps", "log_interval", "keep_last")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        non_negative = ("warmup_steps", "eval_interval", "ckpt_interval", "eval_max_rows", "seed")
        for name in non_negative:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 0, got {value!r}")
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ConfigError("TrainConfig: set exactly one of max_steps / max_tokens "
                              f"(got max_steps={self.max_steps}, max_tokens={self.max_tokens})")
        for name in ("max_steps", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"TrainConfig.{name} must be an integer >= 1, got {value!r}")
        if self.ep_size is not None and (not isinstance(self.ep_size, int) or self.ep_size < 1):
            raise ConfigError(f"TrainConfig.ep_size must be an integer >= 1, got {self.ep_size!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ConfigError(f"TrainConfig.seq_len must be an integer >= 2, got {self.seq_len!r}")
        if not self.lr > 0:
            raise ConfigError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("TrainConfig.weight_decay and grad_clip must be >= 0, "
                              f"got {self.weight_decay!r} and {self.grad_clip!r}")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError(f"TrainConfig.beta1/beta2 must be in [0, 1), got {self.beta1!r}/{self.beta2!r}")
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ConfigError(f"TrainConfig.warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise ConfigError(f"TrainConfig.peak_tflops must be > 0, got {self.peak_tflops!r}")
        if not isinstance(self.model_overrides, dict):
            raise ConfigError("TrainConfig.model_overrides must be a dict of SparseEHRConfig fields")
        if self.resume and self.init_from:
            # Resuming restores the run's own weights; silently ignoring init_from would surprise, so refuse.
            raise ConfigError("TrainConfig: --resume and --init-from exclude each other (resume restores the run's "
                              "own checkpoint; init-from starts a new run from exported weights)")
        if not self.data_dir:
            raise ConfigError("TrainConfig.data_dir is required (--data DATA_DIR)")
        if not self.out_dir:
            raise ConfigError("TrainConfig.out_dir is required (--out RUN_DIR)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> "TrainConfig":
        """A TrainConfig from saved values (RUN_DIR/train_config.json); `source` names them in errors."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object of TrainConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown TrainConfig fields {unknown}")
        return cls(**values)


# ----------------------------------------------------------------------------------------------------------
# Presets: the training side of each model preset (same names). Values are starting points sized for the model;
# every field can be overridden on the command line.
# ----------------------------------------------------------------------------------------------------------
def tiny(**overrides: Any) -> TrainConfig:
    """Seconds on a CPU: tests and the demo's smoke run."""
    values: dict[str, Any] = dict(preset="tiny", micro_batch_size=4, grad_accum_steps=1, lr=3e-3, warmup_steps=2,
                                  eval_interval=10, ckpt_interval=20, log_interval=1)
    return TrainConfig(**{**values, **overrides})


def small(**overrides: Any) -> TrainConfig:
    """Minutes on a CPU, the demo's recipe (issue 12): 16 packed rows of 256 tokens per rank, peak LR 3e-3 with
    20 warmup steps and cosine decay to 10%; the demo runs it on 2 ranks (fp32: faster than bf16 on this CPU at
    this width, docs/training.md). The validation loss every 50 steps reads 256 packed rows: on the demo's whole
    claims validation split it cost ~16 s per evaluation, a third of the wall time of the steps between two."""
    values: dict[str, Any] = dict(preset="small", micro_batch_size=16, grad_accum_steps=1, lr=3e-3, warmup_steps=20,
                                  eval_interval=50, eval_max_rows=256, ckpt_interval=100)
    return TrainConfig(**{**values, **overrides})


def base(**overrides: Any) -> TrainConfig:
    """One GPU node."""
    values: dict[str, Any] = dict(preset="base", micro_batch_size=8, grad_accum_steps=4, lr=6e-4,
                                  warmup_steps=500, eval_interval=500, ckpt_interval=1000,
                                  deepspeed_config="zero2_bf16.json")
    return TrainConfig(**{**values, **overrides})


def paper(**overrides: Any) -> TrainConfig:
    """The paper-size model: multi-node, expert parallel, bf16."""
    values: dict[str, Any] = dict(preset="paper", micro_batch_size=4, grad_accum_steps=8, lr=3e-4,
                                  warmup_steps=2000, eval_interval=1000, ckpt_interval=1000,
                                  deepspeed_config="zero2_ep_bf16.json")
    return TrainConfig(**{**values, **overrides})


PRESETS: dict[str, Callable[..., TrainConfig]] = {"tiny": tiny, "small": small, "base": base, "paper": paper}


def get_train_preset(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
