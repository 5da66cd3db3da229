"""Parameter and FLOP accounting of a SparseEHR config, by closed-form formula (no model is built).

Convention (stated once, used everywhere: model-info, the launcher's MFU, the scaling-law work):
- `total`: every parameter once. With tied embeddings the vocabulary matrix counts once.
- `active_per_token`: the parameters one token's forward pass reads: everything except the routed experts the
  token is not sent to, i.e. total - num_moe_layers * (num_experts - num_experts_per_tok) * params_per_expert.
  Embeddings are INCLUDED (the input row and, tied or not, the whole output projection are used per token).
  `active_non_embedding` removes the input embedding (and an untied output projection) for Kaplan-style N.
- FLOPs: 2 per multiply-accumulate of every matrix the token's forward pass multiplies by (all active
  parameters except the input-embedding lookup, which is a gather; the output projection is included), plus
  attention scores and the weighted sum of values: 2 * 2 * seq_len * (num_heads * head_dim) per layer, counted
  over the full context as in PaLM's MFU (not halved for the causal mask). Norms, softmax, rotary and routing
  dispatch are ignored (< 1%). Training = 3 x forward (backward costs twice the forward).

>>> from sparseehr.model.presets import get_preset
>>> counts = count_parameters(get_preset("paper"))
>>> round(counts.total / 1e6, 1), round(counts.active_per_token / 1e6, 1)
(814.2, 474.5)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from sparseehr.model.configuration_sparseehr import SparseEHRConfig


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a config (see the module docstring for the convention)."""

    total: int
    active_per_token: int
    active_non_embedding: int
    non_embedding: int
    embedding: int  # input embedding (V x H)
    output_projection: int  # 0 when tied to the input embedding
    attention: int  # all layers: q, k, v, o
    norms: int
    dense_mlp: int  # the D dense blocks' MLPs
    router: int  # all MoE layers
    routed_experts: int  # all routed experts of all MoE layers
    routed_experts_active: int  # num_experts_per_tok experts per MoE layer
    shared_expert: int  # shared expert (+ its gate) or PR-MoE residual MLP (+ coefficient), all MoE layers
    params_per_expert: int
    num_moe_layers: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def swiglu_params(hidden_size: int, intermediate_size: int) -> int:
    """gate_proj + up_proj + down_proj, no biases."""
    return 3 * hidden_size * intermediate_size


def attention_params(config: SparseEHRConfig) -> int:
    q_and_o = 2 * config.hidden_size * config.num_attention_heads * config.head_dim
    k_and_v = 2 * config.hidden_size * config.num_key_value_heads * config.head_dim
    return q_and_o + k_and_v


def count_parameters(config: SparseEHRConfig) -> ParamCounts:
    """Exact parameter counts of `SparseEHRForCausalLM(config)` by formula (tests check it against numel)."""
    hidden = config.hidden_size
    layers, moe_layers = config.num_hidden_layers, config.num_moe_layers
    dense_layers = layers - moe_layers
    embedding = config.vocab_size * hidden
    output_projection = (0 if config.tie_word_embeddings else config.vocab_size * hidden) + (
        config.vocab_size if getattr(config, "lm_head_bias", False) else 0)   # the output bias, one per token
    attention = layers * attention_params(config)
    norms = layers * 2 * hidden + hidden
    dense_mlp = dense_layers * swiglu_params(hidden, config.intermediate_size)
    per_expert = swiglu_params(hidden, config.moe_intermediate_size) if moe_layers else 0
    router = moe_layers * hidden * config.num_experts if moe_layers else 0
    routed = moe_layers * config.num_experts * per_expert
    routed_active = moe_layers * config.num_experts_per_tok * per_expert
    if not moe_layers:
        shared_per_layer = 0
    elif config.shared_expert_mode == "residual":
        # PR-MoE: residual MLP (one expert wide) + coefficient Linear(hidden, 2) with bias
        shared_per_layer = per_expert + 2 * hidden + 2
    else:
        shared_per_layer = swiglu_params(hidden, config.shared_expert_intermediate_size)
        shared_per_layer += hidden if config.shared_expert_gate else 0
    shared = moe_layers * shared_per_layer
    total = embedding + output_projection + attention + norms + dense_mlp + router + routed + shared
    active = total - (routed - routed_active)
    return ParamCounts(
        total=total, active_per_token=active, active_non_embedding=active - embedding - output_projection,
        non_embedding=total - embedding - output_projection, embedding=embedding,
        output_projection=output_projection, attention=attention, norms=norms, dense_mlp=dense_mlp,
        router=router, routed_experts=routed, routed_experts_active=routed_active, shared_expert=shared,
        params_per_expert=per_expert, num_moe_layers=moe_layers,
    )


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs per token by part, at one context length (the convention of the module docstring).

    Every field is 2 x the multiply-accumulates of that part for one token; `attention_scores` is QK^T plus the
    weighted sum of V over the full context. MoE parts count what a token actually runs: the router of every
    MoE layer, `num_experts_per_tok` routed experts and the shared expert (or PR-MoE residual MLP + coefficient).
    """

    seq_len: int
    attention_projections: float  # q, k, v, o of every layer
    attention_scores: float       # 2 * 2 * seq_len * heads * head_dim per layer
    dense_mlp: float              # the D dense blocks' SwiGLU
    router: float                 # hidden x num_experts per MoE layer
    routed_experts: float         # num_experts_per_tok experts per MoE layer
    shared_expert: float          # shared expert (+ gate) or PR-MoE residual MLP (+ coefficient)
    output_projection: float      # hidden x vocab (tied or not: it is a matmul either way)

    @property
    def forward(self) -> float:
        return (self.attention_projections + self.attention_scores + self.dense_mlp + self.router
                + self.routed_experts + self.shared_expert + self.output_projection)

    @property
    def training(self) -> float:
        """Forward + backward: the backward pass costs twice the forward (Kaplan et al. 2020's 6N)."""
        return 3.0 * self.forward

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "forward": self.forward, "training": self.training}


def flops_breakdown(config: SparseEHRConfig, seq_len: int) -> FlopBreakdown:
    """Forward FLOPs per token, part by part, at context length `seq_len` (the packed row length in training)."""
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    counts = count_parameters(config)
    # Norm weights are elementwise (no matmul) and the input embedding is a gather: neither is counted.
    return FlopBreakdown(
        seq_len=seq_len,
        attention_projections=2.0 * counts.attention,
        attention_scores=2.0 * 2 * seq_len * config.num_attention_heads * config.head_dim * config.num_hidden_layers,
        dense_mlp=2.0 * counts.dense_mlp,
        router=2.0 * counts.router,
        routed_experts=2.0 * counts.routed_experts_active,
        shared_expert=2.0 * counts.shared_expert,
        output_projection=2.0 * config.vocab_size * config.hidden_size,
    )


def flops_per_token(config: SparseEHRConfig, seq_len: int, training: bool) -> float:
    """Model FLOPs per token at context length `seq_len` (forward, or forward+backward when `training`)."""
    breakdown = flops_breakdown(config, seq_len)
    return breakdown.training if training else breakdown.forward


def count_module_parameters(model) -> int:
    """numel of a built model's parameters, each shared tensor once (works on the meta device)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():  # parameters() already yields a tied parameter once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
