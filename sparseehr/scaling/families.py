"""Model families and the size ladder of a scaling sweep, as plain functions returning config fields.

A family turns a (width, depth) shape into the SparseEHRConfig fields of one model; the ladder is the list of
shapes a plan picks from (roughly x1.5-2 in non-embedding parameters per rung). Every family keeps the same
attention (head width 4-64, two query heads per key-value head) and the same *active* MLP width per token, 3 x
hidden: dense blocks use a 3h SwiGLU; MoE blocks route each token to one 1.5h expert (of 4) plus a 1.5h shared
expert, like the `small` preset. So at a given shape the families differ only in what the MoE adds: routers
and idle experts (total parameters), not active width.

>>> dense(64, 2)["first_k_dense_replace"], hybrid(64, 8)["first_k_dense_replace"], all_moe(64, 2)["first_k_dense_replace"]
(2, 2, 0)
>>> [shape for shape in LADDER[:3]]
[(8, 2), (12, 2), (16, 2)]
"""
from __future__ import annotations

from typing import Any, Callable

# (hidden_size, num_hidden_layers), smallest first.
LADDER: list[tuple[int, int]] = [
    (8, 2), (12, 2), (16, 2), (24, 2), (32, 2), (48, 2), (64, 2), (64, 3), (96, 3), (128, 3), (128, 4), (192, 4), (256, 4), (256, 6),
    (384, 6),
    (512, 6), (512, 8), (768, 8), (768, 12), (1024, 12), (1024, 16), (1536, 16), (2048, 16), (2048, 24),
]
NUM_EXPERTS = 4


def attention_fields(hidden: int) -> dict[str, int]:
    """Heads of 4-64 wide: max(2, hidden // 64) query heads, half as many key-value heads (GQA)."""
    heads = max(2, hidden // 64)
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden_size {hidden} does not split into {heads} heads of even width")
    return {"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 2)}


def _model(hidden: int, layers: int, dense_layers: int, max_len: int) -> dict[str, Any]:
    if hidden < 2 or layers < 1:
        raise ValueError(f"a shape needs hidden_size >= 2 and >= 1 layer, got ({hidden}, {layers})")
    fields: dict[str, Any] = {**attention_fields(hidden), "num_hidden_layers": layers,
                              "first_k_dense_replace": dense_layers, "intermediate_size": 3 * hidden,
                              "max_position_embeddings": max_len}
    if dense_layers < layers:
        fields.update(num_experts=NUM_EXPERTS, num_experts_per_tok=1, moe_intermediate_size=3 * hidden // 2,
                      shared_expert_intermediate_size=3 * hidden // 2)
    return fields


def dense(hidden: int, layers: int, max_len: int = 512) -> dict[str, Any]:
    """Every block dense (a Llama-style decoder, the EHR scaling-law study's family)."""
    return _model(hidden, layers, layers, max_len)


def hybrid(hidden: int, layers: int, max_len: int = 512) -> dict[str, Any]:
    """SparseEHR: the first quarter of the blocks dense (at least one), the rest MoE (the paper's 4 of 16)."""
    return _model(hidden, layers, max(1, round(layers / 4)), max_len)


def all_moe(hidden: int, layers: int, max_len: int = 512) -> dict[str, Any]:
    """Every block MoE (the paper's D = 0 row)."""
    return _model(hidden, layers, 0, max_len)


FAMILIES: dict[str, Callable[..., dict[str, Any]]] = {"dense": dense, "hybrid": hybrid, "all-moe": all_moe}


def family_fields(family: str, hidden: int, layers: int, max_len: int) -> dict[str, Any]:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[family](hidden, layers, max_len)
