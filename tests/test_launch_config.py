"""TrainConfig / presets / DeepSpeed JSON merge: every bad combination fails with a message naming the cause."""
from __future__ import annotations

import json

import pytest
import torch

from sparseehr.launch import rundir
from sparseehr.launch.config import ConfigError, TrainConfig, get_train_preset
from sparseehr.launch.ds_config import build_ds_config, load_ds_config, resolve_ds_config_path
from sparseehr.launch.engine import cosine_with_warmup, shard_full_state_dict

SHIPPED = ("zero1", "zero2", "zero2_ep", "zero1_bf16", "zero2_bf16", "zero2_ep_bf16", "cpu")


def cfg(**overrides) -> TrainConfig:
    return get_train_preset("tiny", **{"data_dir": "d", "out_dir": "o", "max_steps": 10, **overrides})


@pytest.mark.parametrize("overrides, field", [
    ({"micro_batch_size": 0}, "micro_batch_size"),
    ({"grad_accum_steps": -1}, "grad_accum_steps"),
    ({"max_steps": None}, "max_steps / max_tokens"),
    ({"max_tokens": 100}, "max_steps / max_tokens"),
    ({"lr": 0.0}, "lr"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ({"warmup_steps": 11}, "warmup_steps"),
    ({"ep_size": 0}, "ep_size"),
    ({"seq_len": 1}, "seq_len"),
    ({"resume": True, "init_from": "x"}, "--resume and --init-from"),
    ({"data_dir": ""}, "data_dir"),
])
def test_train_config_rejects(overrides, field):
    with pytest.raises(ConfigError, match=field.replace("/", ".").replace("-", r"\-")):
        cfg(**overrides)


def test_presets_and_round_trip(tmp_path):
    for name in ("tiny", "small", "base", "paper"):
        assert get_train_preset(name, data_dir="d", out_dir="o", max_steps=5000).preset == name
    with pytest.raises(ConfigError, match="unknown training preset 'huge'"):
        get_train_preset("huge", data_dir="d", out_dir="o", max_steps=1)
    original = cfg(lr=0.5, model_overrides={"num_experts": 8})
    rundir.write_train_config(tmp_path, original)
    assert rundir.read_train_config(tmp_path) == original
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["lr"] == 0.5 and saved["model_overrides"] == {"num_experts": 8}  # the raw file, not our reader
    (tmp_path / "train_config.json").write_text(json.dumps({**saved, "learning_rate": 1.0}))
    with pytest.raises(ConfigError, match=r"train_config.json: unknown TrainConfig fields \['learning_rate'\]"):
        rundir.read_train_config(tmp_path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_resolve_by_name_and_merge(name):
    ds_json, path = load_ds_config(name)  # without ".json" too
    assert path == resolve_ds_config_path(name + ".json")
    merged, ep = build_ds_config(cfg(micro_batch_size=3, grad_accum_steps=2, grad_clip=0.5), ds_json, name,
                                 world_size=8, num_experts=8, has_moe_layers=True)
    assert merged["train_micro_batch_size_per_gpu"] == 3
    assert merged["gradient_accumulation_steps"] == 2
    assert merged["train_batch_size"] == 3 * 2 * 8
    assert merged["gradient_clipping"] == 0.5
    assert "sparseehr" not in merged  # our section never reaches DeepSpeed
    assert ep == (2 if name == "zero2_ep" else 8 if name == "zero2_ep_bf16" else 1)


def test_path_wins_over_shipped_name(tmp_path):
    own = tmp_path / "zero1.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert load_ds_config(str(own))[0]["zero_optimization"]["stage"] == 2
    with pytest.raises(ConfigError, match="no such file, and not one of the shipped configs"):
        resolve_ds_config_path(str(tmp_path / "nope.json"))


def merge(ds_json, world=2, experts=4, moe=True, **overrides):
    return build_ds_config(cfg(**overrides), ds_json, "X.json", world, experts, moe)


def test_matching_batch_fields_are_accepted_conflicting_ones_rejected():
    merged, _ = merge({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1})
    assert merged["train_batch_size"] == 8
    with pytest.raises(ConfigError, match=r"X.json: train_micro_batch_size_per_gpu = 16 conflicts .*\(4\)"):
        merge({"train_micro_batch_size_per_gpu": 16})
    with pytest.raises(ConfigError, match="gradient_clipping = 5.0 conflicts"):
        merge({"gradient_clipping": 5.0})


@pytest.mark.parametrize("ds_json, overrides, message", [
    ({"zero_optimization": {"stage": 3}}, {}, "ZeRO stage 3 cannot shard DeepSpeed's native MoE"),
    ({}, {"ep_size": 3}, "expert_parallel_size 3 does not divide num_experts 4"),
    ({"sparseehr": {"expert_parallel_size": 4}}, {}, "expert_parallel_size 4 does not divide the world size 2"),
    ({"sparseehr": {"expert_parallel_size": 2}}, {"ep_size": 1}, "--ep-size 1 conflicts with X.json"),
    ({"sparseehr": {"expert_parallel": 2}}, {}, "unknown keys \\['expert_parallel'\\]"),
    ({"expert_parallel": {"enabled": True}}, {}, "AutoEP"),
    ({"optimizer": {"type": "Adam"}}, {}, "\"optimizer\" is set by the trainer"),
    ({"scheduler": {"type": "WarmupLR"}}, {}, "\"scheduler\" is set by the trainer"),
    ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, {}, "fp16 and bf16 are both enabled"),
])
def test_bad_engine_combinations(ds_json, overrides, message):
    with pytest.raises(ConfigError, match=message):
        merge(ds_json, **overrides)


def test_zero3_is_fine_without_moe_and_ep_needs_moe():
    merged, ep = merge({"zero_optimization": {"stage": 3}}, moe=False)
    assert merged["zero_optimization"]["stage"] == 3 and ep == 1
    with pytest.raises(ConfigError, match="model has no MoE layers"):
        merge({}, moe=False, ep_size=2)


def test_cosine_with_warmup_hand_values():
    # warmup 4 of 14 steps, floor 0.2: 1/4, 2/4, 3/4, 4/4, then 0.2 + 0.8 * (1 + cos(pi * k / 10)) / 2
    got = [cosine_with_warmup(s, 4, 14, 0.2) for s in (0, 1, 3, 4, 9, 14, 20)]
    expected = [0.25, 0.5, 1.0, 1.0, 0.6, 0.2, 0.2]
    assert got == pytest.approx(expected, abs=1e-12)


def test_shard_full_state_dict_maps_local_to_global_experts():
    prefix = "model.layers.1.mlp.moe.deepspeed_moe.experts.deepspeed_experts."
    full = {f"{prefix}{g}.w": torch.full((1,), float(g)) for g in range(4)} | {"emb": torch.zeros(1)}
    local = [f"{prefix}0.w", f"{prefix}1.w", "emb"]
    shard = shard_full_state_dict(full, local, ep_rank=1, num_local_experts=2)  # rank 1 of ep=2 owns 2 and 3
    assert [shard[k].item() for k in local] == [2.0, 3.0, 0.0]
    with pytest.raises(KeyError, match="stored as .*deepspeed_experts.4.w"):
        shard_full_state_dict(full, local, ep_rank=2, num_local_experts=2)


def test_max_tokens_becomes_enough_steps():
    from sparseehr.launch.context import steps_for_tokens

    # 120 real tokens per micro-batch x 2 accumulation x 4 ranks = 960 tokens per optimizer step
    assert steps_for_tokens(960, 120.0, 2, 4) == 1
    assert steps_for_tokens(961, 120.0, 2, 4) == 2
    assert steps_for_tokens(10_000, 120.0, 2, 4) == 11  # 10.42 -> 11: never fewer tokens than asked


@pytest.mark.parametrize("module_name", ["data", "engine", "context"])
def test_docstring_examples(module_name):
    import doctest
    import importlib

    module = importlib.import_module(f"sparseehr.launch.{module_name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
