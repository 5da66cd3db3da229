"""Configuration of SparseEHR: a hybrid dense-to-MoE decoder over structured EHR tokens.

Field names follow the ecosystem (Qwen2-MoE / DeepSeek): `num_experts`, `num_experts_per_tok`,
`moe_intermediate_size`, `shared_expert_intermediate_size`, `first_k_dense_replace`, `router_aux_loss_coef`.
A config attribute called `top_k` would break `save_pretrained` next to DeepSpeed (DEEPSPEED_MOE.md, bite 9), so
the number of routed experts per token is only ever `num_experts_per_tok`.
"""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

SHARED_EXPERT_MODES = ("additive", "residual")
ROUTER_NOISE_POLICIES = (None, "Jitter", "RSample")


class SparseEHRConfig(PretrainedConfig):
    r"""Configuration of [`SparseEHRForCausalLM`].

    The first `first_k_dense_replace` decoder blocks use a dense SwiGLU MLP; the remaining blocks use a mixture of
    experts built on `deepspeed.moe.layer.MoE`, plus an optional shared expert that every token passes through.

    Args:
        vocab_size (`int`, defaults to 99): number of token ids (set from the tokenizer).
        hidden_size (`int`, defaults to 32): width of the residual stream.
        num_hidden_layers (`int`, defaults to 2): number of decoder blocks.
        first_k_dense_replace (`int`, defaults to 1): D, the number of leading blocks with a dense MLP
            (DeepSeek's name); the other `num_hidden_layers - D` blocks are MoE blocks.
        num_attention_heads (`int`, defaults to 4): query heads.
        num_key_value_heads (`int`, defaults to 2): key/value heads (grouped-query attention); must divide
            `num_attention_heads`.
        head_dim (`int`, *optional*): per-head width; defaults to `hidden_size // num_attention_heads`.
        intermediate_size (`int`, defaults to 64): SwiGLU width of the dense blocks' MLP.
        moe_intermediate_size (`int`, defaults to 32): SwiGLU width of each routed expert.
        shared_expert_intermediate_size (`int`, defaults to 32): SwiGLU width of the shared expert; 0 = none.
        shared_expert_mode (`str`, defaults to `"additive"`): `"additive"` adds the shared expert to the routed
            output (DeepSeek / Qwen2-MoE); `"residual"` is DeepSpeed's PR-MoE (`use_residual=True`): a learned
            softmax mix of the routed output and a residual MLP the size of one expert.
        shared_expert_gate (`bool`, defaults to `False`): in `additive` mode, scale the shared expert by a
            per-token sigmoid gate (Qwen2-MoE). Not allowed in `residual` mode (PR-MoE has its own mix).
        num_experts (`int`, defaults to 4): routed experts per MoE block.
        num_experts_per_tok (`int`, defaults to 1): routed experts per token, 1 or 2 (DeepSpeed's gates).
        router_aux_loss_coef (`float`, defaults to 0.01): weight of the load-balancing loss added to the LM loss
            when labels are given.
        capacity_factor (`float`, defaults to 1.25): expert capacity factor during training (tokens over capacity
            are dropped when `drop_tokens`).
        eval_capacity_factor (`float`, *optional*): `None` (default) makes evaluation exact top-k routing with no
            capacity limit, so a sequence's logits never depend on the rest of the batch. A number restores
            DeepSpeed's capacity-limited evaluation (batch dependent; for reproducing DeepSpeed runs only).
        min_capacity (`int`, defaults to 4): minimum expert capacity during training with dropping. Evaluation
            always uses 0 so that one-token decode steps work.
        drop_tokens (`bool`, defaults to `True`): drop tokens over capacity during training.
        use_rts (`bool`, defaults to `True`): DeepSpeed's random token selection when dropping (training only).
        router_noise_policy (`str`, *optional*): `None`, `"Jitter"` (multiplicative input noise) or `"RSample"`
            (Gumbel noise on top-1 logits); applied during training only. `"RSample"` requires top-1.
        top2_2nd_expert_sampling (`bool`, defaults to `True`): with top-2, sample the second expert during
            training (DeepSpeed's default); evaluation always takes the exact second choice.
        expert_parallel_size (`int`, defaults to 1): experts split over this many ranks; set by the launcher for
            training only. Exported configs always hold 1; inference never needs distributed state.
        rope_theta (`float`, defaults to 10000.0): rotary embedding base.
        max_position_embeddings (`int`, defaults to 512): longest sequence the model is meant for.
        rms_norm_eps (`float`, defaults to 1e-6): RMSNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation.
        embedding_init_std (`float`, *optional*): std of the token embedding's initialisation; `None` uses
            `initializer_range`. A large value (1.0, with `logit_scale` = hidden_size ** -0.5 when tied, as T5
            does) keeps every code's embedding distinct and of full norm, so in-context copying of a code that is
            rare in training is as easy as of a common one (docs/model.md, "Embedding scale and copying").
        logit_scale (`float`, defaults to 1.0): multiplies the output logits (Cohere's `logit_scale`).
        lm_head_bias (`bool`, defaults to `False`): give the output projection a per-token bias. `sparseehr
            train` starts it at the training split's log token frequencies, so the unigram prior (a spread of
            ~10 nats between common and rare codes) is there from step 0 instead of being pushed into the tied
            embeddings, which collapses every rare code's embedding onto one direction (docs/model.md).
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities in training.
        tie_word_embeddings (`bool`, defaults to `True`): share the input embedding and the output projection.
        use_cache (`bool`, defaults to `True`): return a KV cache by default.
        output_router_logits (`bool`, defaults to `False`): return router logits by default.

    Example:
        >>> cfg = SparseEHRConfig(hidden_size=32, num_hidden_layers=3, first_k_dense_replace=1)
        >>> cfg.num_moe_layers, cfg.moe_layer_indices
        (2, [1, 2])
    """

    model_type = "sparseehr"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 99,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        first_k_dense_replace: int = 1,
        num_attention_heads: int = 4,
        num_key_value_heads: int = 2,
        head_dim: int | None = None,
        intermediate_size: int = 64,
        moe_intermediate_size: int = 32,
        shared_expert_intermediate_size: int = 32,
        shared_expert_mode: str = "additive",
        shared_expert_gate: bool = False,
        num_experts: int = 4,
        num_experts_per_tok: int = 1,
        router_aux_loss_coef: float = 0.01,
        capacity_factor: float = 1.25,
        eval_capacity_factor: float | None = None,
        min_capacity: int = 4,
        drop_tokens: bool = True,
        use_rts: bool = True,
        router_noise_policy: str | None = None,
        top2_2nd_expert_sampling: bool = True,
        expert_parallel_size: int = 1,
        rope_theta: float = 10000.0,
        max_position_embeddings: int = 512,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        embedding_init_std: float | None = None,
        logit_scale: float = 1.0,
        lm_head_bias: bool = False,
        attention_dropout: float = 0.0,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        output_router_logits: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.first_k_dense_replace = first_k_dense_replace
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else (
            hidden_size // num_attention_heads if num_attention_heads else 0)
        self.intermediate_size = intermediate_size
        self.moe_intermediate_size = moe_intermediate_size
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.shared_expert_mode = shared_expert_mode
        self.shared_expert_gate = shared_expert_gate
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.router_aux_loss_coef = router_aux_loss_coef
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.drop_tokens = drop_tokens
        self.use_rts = use_rts
        self.router_noise_policy = router_noise_policy
        self.top2_2nd_expert_sampling = top2_2nd_expert_sampling
        self.expert_parallel_size = expert_parallel_size
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.embedding_init_std = embedding_init_std
        self.logit_scale = logit_scale
        self.lm_head_bias = lm_head_bias
        self.attention_dropout = attention_dropout
        self.use_cache = use_cache
        self.output_router_logits = output_router_logits
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)
        self.validate_sparseehr()

    # ---- derived layout -------------------------------------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    @property
    def moe_layer_indices(self) -> list[int]:
        return list(range(self.first_k_dense_replace, self.num_hidden_layers))

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    # ---- validation -----------------------------------------------------------------------------------------
    def validate_sparseehr(self) -> None:
        """Reject impossible or silently meaningless combinations, naming the field at fault."""

        def fail(message: str) -> None:
            raise ValueError(f"SparseEHRConfig: {message}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings", "expert_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            fail(f"first_k_dense_replace (D={self.first_k_dense_replace}) must lie in "
                 f"[0, num_hidden_layers={self.num_hidden_layers}]")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            fail(f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                 f"num_key_value_heads={self.num_key_value_heads} (grouped-query attention)")
        if self.head_dim <= 0 or self.head_dim % 2 != 0:
            fail(f"head_dim={self.head_dim} must be a positive even number (rotary embeddings rotate pairs); "
                 f"check hidden_size={self.hidden_size} / num_attention_heads={self.num_attention_heads}")
        if self.shared_expert_mode not in SHARED_EXPERT_MODES:
            fail(f"shared_expert_mode must be one of {SHARED_EXPERT_MODES}, got {self.shared_expert_mode!r}")
        if self.router_noise_policy not in ROUTER_NOISE_POLICIES:
            fail(f"router_noise_policy must be one of {ROUTER_NOISE_POLICIES}, got {self.router_noise_policy!r}")
        if self.rms_norm_eps <= 0 or self.initializer_range <= 0 or self.rope_theta <= 0:
            fail("rms_norm_eps, initializer_range and rope_theta must be positive")
        if self.embedding_init_std is not None and not self.embedding_init_std > 0:
            fail(f"embedding_init_std must be positive or None, got {self.embedding_init_std}")
        if not self.logit_scale > 0:
            fail(f"logit_scale must be positive, got {self.logit_scale}")
        if not 0.0 <= self.attention_dropout < 1.0:
            fail(f"attention_dropout must lie in [0, 1), got {self.attention_dropout}")
        if self.num_moe_layers == 0:
            return  # a fully dense model: the MoE fields are unused, nothing more to check
        if self.num_experts < 1:
            fail(f"num_experts must be >= 1 when there are MoE layers, got {self.num_experts}")
        if self.num_experts_per_tok not in (1, 2):
            fail(f"num_experts_per_tok must be 1 or 2 (DeepSpeed's top-1/top-2 gates), got {self.num_experts_per_tok}")
        if self.num_experts_per_tok > self.num_experts:
            fail(f"num_experts_per_tok={self.num_experts_per_tok} exceeds num_experts={self.num_experts}")
        if self.num_experts % self.expert_parallel_size != 0:
            fail(f"num_experts={self.num_experts} must be divisible by expert_parallel_size="
                 f"{self.expert_parallel_size}")
        if self.moe_intermediate_size <= 0:
            fail(f"moe_intermediate_size must be positive, got {self.moe_intermediate_size}")
        if self.shared_expert_intermediate_size < 0:
            fail(f"shared_expert_intermediate_size must be >= 0 (0 = no shared expert), "
                 f"got {self.shared_expert_intermediate_size}")
        if self.shared_expert_mode == "residual":
            # DeepSpeed's PR-MoE reuses the expert template as the residual MLP: it is exactly one expert wide.
            if self.shared_expert_intermediate_size != self.moe_intermediate_size:
                fail("shared_expert_mode='residual' (DeepSpeed PR-MoE) uses a residual MLP the size of one expert: "
                     f"shared_expert_intermediate_size={self.shared_expert_intermediate_size} must equal "
                     f"moe_intermediate_size={self.moe_intermediate_size}")
            if self.shared_expert_gate:
                fail("shared_expert_gate applies to shared_expert_mode='additive' only; PR-MoE ('residual') "
                     "already learns its own mix coefficient")
        if self.shared_expert_gate and self.shared_expert_intermediate_size == 0:
            fail("shared_expert_gate=True needs a shared expert (shared_expert_intermediate_size > 0)")
        if self.capacity_factor <= 0:
            fail(f"capacity_factor must be positive, got {self.capacity_factor}")
        if self.eval_capacity_factor is not None and self.eval_capacity_factor <= 0:
            fail(f"eval_capacity_factor must be positive or None (exact top-k), got {self.eval_capacity_factor}")
        if self.min_capacity < 0:
            fail(f"min_capacity must be >= 0, got {self.min_capacity}")
        if self.router_noise_policy == "RSample" and self.num_experts_per_tok != 1:
            fail("router_noise_policy='RSample' is applied by DeepSpeed's top-1 gate only; with "
                 "num_experts_per_tok=2 it would silently do nothing")
        if self.router_aux_loss_coef < 0:
            fail(f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")
