"""DeepSpeed engine settings: find the JSON, merge our TrainConfig into it, reject combinations that cannot work.

The JSON holds engine settings only (ZeRO stage, precision, communication). Batch sizes, accumulation and
gradient clipping come from TrainConfig; the optimizer and schedule are ours (MoE-aware parameter groups), so a
JSON that sets them is refused rather than silently overridden. Our one extension is a top-level "sparseehr"
section ({"expert_parallel_size": N}); it is removed before DeepSpeed sees the dictionary.
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

from sparseehr.launch.config import ConfigError, TrainConfig

OUR_SECTION = "sparseehr"
OUR_SECTION_KEYS = {"expert_parallel_size"}
# DeepSpeed fields that our TrainConfig owns: JSON value allowed only when equal to ours.
BATCH_FIELDS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping")
# Sections we build ourselves (optimizer groups must be split for MoE; schedule is cosine with warmup).
OWNED_SECTIONS = ("optimizer", "scheduler")


def resolve_ds_config_path(name_or_path: str) -> Path:
    """A path when it exists, else a file shipped in sparseehr.ds_configs (with or without ".json")."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    package_dir = resources.files("sparseehr.ds_configs")
    for candidate in (path.name, path.name + ".json"):
        shipped = package_dir / candidate
        if shipped.is_file():
            return Path(str(shipped))
    shipped_names = sorted(p.name for p in package_dir.iterdir() if p.name.endswith(".json"))
    raise ConfigError(f"--deepspeed {name_or_path!r}: no such file, and not one of the shipped configs "
                      f"{shipped_names}")


def load_ds_config(name_or_path: str) -> tuple[dict[str, Any], Path]:
    path = resolve_ds_config_path(name_or_path)
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    return values, path


def json_expert_parallel_size(ds_json: dict[str, Any], source: str) -> int | None:
    section = ds_json.get(OUR_SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: \"{OUR_SECTION}\" must be an object")
    unknown = sorted(set(section) - OUR_SECTION_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown} in \"{OUR_SECTION}\" (known: {sorted(OUR_SECTION_KEYS)})")
    value = section.get("expert_parallel_size")
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{source}: {OUR_SECTION}.expert_parallel_size must be an integer >= 1, got {value!r}")
    return value


def resolve_ep_size(cfg: TrainConfig, ds_json: dict[str, Any], source: str) -> int:
    """--ep-size wins when the JSON is silent; when both are given they must agree."""
    from_json = json_expert_parallel_size(ds_json, source)
    if cfg.ep_size is not None and from_json is not None and cfg.ep_size != from_json:
        raise ConfigError(f"--ep-size {cfg.ep_size} conflicts with {source}: "
                          f"{OUR_SECTION}.expert_parallel_size = {from_json}")
    return cfg.ep_size or from_json or 1


def validate_parallelism(ep_size: int, world_size: int, num_experts: int, has_moe_layers: bool,
                         zero_stage: int) -> None:
    """The combinations DeepSpeed's native MoE cannot run (DEEPSPEED_MOE.md items 6-7)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    if has_moe_layers and zero_stage == 3:
        raise ConfigError("ZeRO stage 3 cannot shard DeepSpeed's native MoE layers (the engine refuses them); "
                          "use ZeRO-1 or ZeRO-2 (ds_configs/zero2.json, zero2_ep.json)")
    if ep_size > 1 and not has_moe_layers:
        raise ConfigError(f"expert_parallel_size {ep_size} > 1 but the model has no MoE layers")
    if has_moe_layers and num_experts % ep_size != 0:
        raise ConfigError(f"expert_parallel_size {ep_size} does not divide num_experts {num_experts}; "
                          f"choose a divisor of {num_experts}")
    if world_size % ep_size != 0:
        raise ConfigError(f"expert_parallel_size {ep_size} does not divide the world size {world_size} "
                          f"(ranks); launch a multiple of {ep_size} ranks or lower --ep-size")


def build_ds_config(cfg: TrainConfig, ds_json: dict[str, Any], source: str, world_size: int, num_experts: int,
                    has_moe_layers: bool) -> tuple[dict[str, Any], int]:
    """Return (the dictionary handed to deepspeed.initialize, the resolved ep size)."""
    if "expert_parallel" in ds_json:
        raise ConfigError(f"{source}: \"expert_parallel\" enables DeepSpeed AutoEP, which replaces HF MoE blocks; "
                          f"SparseEHR uses DeepSpeed's native MoE layer. Set --ep-size or "
                          f"\"{OUR_SECTION}\": {{\"expert_parallel_size\": N}} instead")
    for section in OWNED_SECTIONS:
        if section in ds_json:
            raise ConfigError(f"{source}: \"{section}\" is set by the trainer (AdamW with MoE parameter groups, "
                              f"cosine schedule with warmup); remove it and use --lr/--warmup-steps/--min-lr-ratio")
    merged = copy.deepcopy(ds_json)
    merged.pop(OUR_SECTION, None)
    ep_size = resolve_ep_size(cfg, ds_json, source)

    ours = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.grad_clip,
    }
    for key in BATCH_FIELDS:
        if key in merged and merged[key] != ours[key]:
            raise ConfigError(f"{source}: {key} = {merged[key]!r} conflicts with the training config "
                              f"({ours[key]!r}); drop it from the JSON, batch settings come from --micro-batch/"
                              f"--grad-accum/--grad-clip")
        merged[key] = ours[key]

    fp16 = bool(merged.get("fp16", {}).get("enabled", False))
    bf16 = bool(merged.get("bf16", {}).get("enabled", False))
    if fp16 and bf16:
        raise ConfigError(f"{source}: fp16 and bf16 are both enabled; enable at most one")
    zero = merged.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{source}: zero_optimization must be an object")
    validate_parallelism(ep_size, world_size, num_experts, has_moe_layers, int(zero.get("stage", 0)))
    return merged, ep_size
