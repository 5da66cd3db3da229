"""DeepSpeed engine set-up: distributed init, the model at the run's ep size, MoE-aware optimizer, schedule.

Initialisation is ep-size independent: the full ep=1 model is built from the seed first and each rank then keeps
the experts its expert-parallel rank owns. So a seed gives the same network at any ep size (which is what lets
the ep=1 vs ep=2 test compare losses), and --init-from an exported HF_DIR loads at any ep size the same way
(from_pretrained would drop DeepSpeed's expert tags, DEEPSPEED_MOE.md item 9, so we build from config and load).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import torch

from sparseehr.launch.launcher import free_port

EXPERT_KEY = re.compile(r"(\.deepspeed_moe\.experts\.deepspeed_experts\.)(\d+)(\.)")


def init_distributed() -> tuple[int, int]:
    """Join the job the launcher set up, or make a one-rank job when run as plain `sparseehr train`."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    backend = "gloo" if get_accelerator().device_name() == "cpu" else get_accelerator().communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend)
    import deepspeed.comm as dist

    return dist.get_rank(), dist.get_world_size()


def expert_parallel_rank(ep_size: int) -> int:
    """Create DeepSpeed's expert groups now (initialize() later finds and reuses them) and return our ep rank."""
    from deepspeed.utils import groups

    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    return groups._get_expert_parallel_rank(name)


def shard_full_state_dict(full: dict[str, torch.Tensor], target_keys: list[str], ep_rank: int,
                          num_local_experts: int) -> dict[str, torch.Tensor]:
    """Pick, for a model built at some ep size, its tensors out of an ep=1 state_dict (local expert i of ep rank
    r is global expert r * num_local_experts + i).

    >>> full = {"m.deepspeed_moe.experts.deepspeed_experts.3.w": torch.tensor(3.0), "emb": torch.tensor(0.0)}
    >>> shard_full_state_dict(full, ["m.deepspeed_moe.experts.deepspeed_experts.1.w", "emb"], 1, 2)
    {'m.deepspeed_moe.experts.deepspeed_experts.1.w': tensor(3.), 'emb': tensor(0.)}
    """
    shard = {}
    for key in target_keys:
        match = EXPERT_KEY.search(key)
        source = key
        if match:
            global_id = ep_rank * num_local_experts + int(match.group(2))
            source = key[: match.start(2)] + str(global_id) + key[match.end(2):]
        if source not in full:
            raise KeyError(f"weights for {key} (stored as {source}) are missing from the full state_dict")
        shard[key] = full[source]
    return shard


def complete_tied_weights(state: dict[str, torch.Tensor], model_config) -> dict[str, torch.Tensor]:
    """A full state_dict with the tied output projection present under its own name.

    save_pretrained stores a tied lm_head once (under the input embedding); strict loading wants every key.

    >>> class Tied: tie_word_embeddings = True
    >>> sorted(complete_tied_weights({"model.embed_tokens.weight": torch.zeros(1)}, Tied()))
    ['lm_head.weight', 'model.embed_tokens.weight']
    """
    if getattr(model_config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state = {**state, "lm_head.weight": state["model.embed_tokens.weight"]}
    return state


def build_model(model_config, ep_size: int, ep_rank: int, full_state_dict: dict[str, torch.Tensor] | None,
                seed: int):
    """SparseEHRForCausalLM at ep_size holding this rank's part of full_state_dict (or of the seeded init)."""
    from sparseehr.model import SparseEHRForCausalLM

    torch.manual_seed(seed)
    model_config.expert_parallel_size = 1
    if full_state_dict is None:
        if ep_size == 1:
            return SparseEHRForCausalLM(model_config)
        full_state_dict = SparseEHRForCausalLM(model_config).state_dict()
    model_config.expert_parallel_size = ep_size
    torch.manual_seed(seed)
    model = SparseEHRForCausalLM(model_config)
    num_local = model_config.num_experts // ep_size if model_config.num_moe_layers else 1
    target = model.state_dict()
    shard = shard_full_state_dict(full_state_dict, list(target), ep_rank, num_local)
    model.load_state_dict(shard, strict=True)
    return model


def optimizer_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay matrices only; then split by DeepSpeed so expert parameters get their own groups
    (their gradients are reduced over the expert-data-parallel group, not the whole world)."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        # Norm weights, biases and embeddings: decaying them hurts and buys nothing (GPT-2/nanoGPT practice).
        if param.ndim < 2 or "embed" in name or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"name": "decay", "params": decay, "weight_decay": weight_decay},
              {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]
    return split_params_into_different_moe_groups_for_optimizer([g for g in groups if g["params"]])


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine to min_ratio at total_steps.

    >>> [round(cosine_with_warmup(s, 2, 6, 0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def initialize_engine(model, train_cfg, ds_config: dict[str, Any], total_steps: int):
    import deepspeed

    params = optimizer_param_groups(model, train_cfg.weight_decay)
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2),
                                  eps=train_cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, train_cfg.warmup_steps, total_steps, train_cfg.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine
