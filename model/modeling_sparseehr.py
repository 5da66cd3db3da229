"""SparseEHR: a Llama-style decoder whose first D blocks are dense and the rest DeepSpeed mixture-of-experts blocks.

Shape legend used in comments: B batch, T query tokens in this call, P cached tokens, K = P + T keys,
H hidden size, N = B*T flattened tokens, E routed experts, nh / nkv query / key-value heads, hd head dim.

DeepSpeed pitfalls handled here (see shared/DEEPSPEED_MOE.md):
- no module attribute has "expert" in its path (DeepSpeed's checkpoint writer drops such weights): the MoE block is
  `mlp`, the DeepSpeed layer `moe`, the shared expert `shared_mlp`, its gate `shared_gate`;
- DeepSpeed deep-copies one expert template, so `_init_weights` re-draws every expert's Linear independently and a
  fresh template is built per layer;
- evaluation routes exact top-k (no capacity, no random token selection, no second-expert sampling, no noise,
  `min_capacity` 0), so logits never depend on the rest of the batch and one-token decode steps work;
- the load-balancing loss and the expert counts are computed over non-padding tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from sparseehr.model.configuration_sparseehr import SparseEHRConfig
from sparseehr.model.loss import next_token_nll
from sparseehr.model.transformers_compat import CACHE_FIELD, CACHE_NAMES, output_cache, resolve_cache_argument


@dataclass
class SparseEHRModelOutput(MoeModelOutputWithPast):
    """Output of [`SparseEHRModel`]: the library's MoE output (its cache field named as the installed release names
    it) plus the mean load-balancing loss and the expert counts."""

    aux_loss: torch.FloatTensor | None = None
    expert_counts: torch.LongTensor | None = None


@dataclass
class SparseEHRCausalLMOutput(MoeCausalLMOutputWithPast):
    """Output of [`SparseEHRForCausalLM`]: transformers' MoeCausalLMOutputWithPast plus two fields.

    loss: lm_loss + router_aux_loss_coef * aux_loss, only when labels are given.
    lm_loss: the next-token loss alone.
    aux_loss: mean over MoE layers of DeepSpeed's load-balancing loss E * sum_e(mean_prob_e * frac_tokens_e),
        computed over non-padding tokens (1.0 = perfectly balanced).
    router_logits: one [B*T, E] fp32 tensor per MoE layer, when `output_router_logits`.
    expert_counts: [num_moe_layers, E] tokens routed to each expert (router's top-k choice, padding excluded),
        when `output_expert_counts`.
    """

    lm_loss: torch.FloatTensor | None = None
    expert_counts: torch.LongTensor | None = None


class SparseEHRRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()  # normalise in fp32 for bf16 stability
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, T, hd] for positions [B, T]. Computed per call (no buffer) so meta-device construction and
    from_pretrained never leave an uninitialised non-persistent buffer behind; the cost is negligible."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim
    inv_freq = 1.0 / (theta ** exponent)  # [hd/2]
    freqs = position_ids[..., None].float() * inv_freq  # [B, T, hd/2]
    angles = torch.cat([freqs, freqs], dim=-1)  # [B, T, hd]
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class SparseEHRAttention(nn.Module):
    """Grouped-query attention with rotary embeddings on torch SDPA."""

    def __init__(self, config: SparseEHRConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, is_causal: bool,
                cache: Cache | None) -> torch.Tensor:
        batch, seq_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, nh|nkv, T, hd]
        if cache is not None:
            # The cache stores the nkv heads (GQA's memory saving), before the repeat below.
            k, v = cache.update(k, v, self.layer_idx)  # [B, nkv, K, hd]
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return self.o_proj(out)


class SparseEHRMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Used for dense blocks, routed and shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class MoeBlockOutput:
    hidden_states: torch.Tensor  # [B, T, H]
    router_logits: torch.Tensor  # [N, E] fp32
    aux_loss: torch.Tensor  # scalar
    expert_counts: torch.Tensor  # [E] int64


class SparseEHRMoeBlock(nn.Module):
    """Router + routed experts (DeepSpeed `MoE`) + shared expert, kept as separate parts.

    additive mode: out = moe(x) + [sigmoid(shared_gate(x)) *] shared_mlp(x)   (DeepSeek / Qwen2-MoE)
    residual mode: DeepSpeed PR-MoE, out = c0(x) * moe(x) + c1(x) * mlp(x), c = softmax(coefficient(x))
    """

    def __init__(self, config: SparseEHRConfig) -> None:
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k_routes = config.num_experts_per_tok
        self.train_settings = dict(drop_tokens=config.drop_tokens, min_capacity=config.min_capacity,
                                   use_rts=config.use_rts, top2_2nd_expert_sampling=config.top2_2nd_expert_sampling)
        exact_eval = config.eval_capacity_factor is None
        # min_capacity 0: DeepSpeed's top-1 asserts tokens >= min_capacity, which a one-token decode step violates.
        self.eval_settings = dict(drop_tokens=not exact_eval, min_capacity=0, use_rts=False,
                                  top2_2nd_expert_sampling=False)
        residual = config.shared_expert_mode == "residual"
        # A fresh template per layer: DeepSpeed deep-copies it into the experts and, in PR-MoE mode, keeps the
        # template itself as the residual MLP, so sharing one template would tie residual MLPs across layers.
        template = SparseEHRMLP(config.hidden_size, config.moe_intermediate_size)
        # Imported here so that `import sparseehr` (which registers the Auto classes) does not load DeepSpeed.
        from deepspeed.moe.layer import MoE

        self.moe = MoE(
            hidden_size=config.hidden_size,
            expert=template,
            num_experts=config.num_experts,
            ep_size=config.expert_parallel_size,
            k=config.num_experts_per_tok,
            capacity_factor=config.capacity_factor,
            eval_capacity_factor=config.eval_capacity_factor or 1.0,
            min_capacity=config.min_capacity,
            use_residual=residual,
            noisy_gate_policy=config.router_noise_policy,
            drop_tokens=config.drop_tokens,
            use_rts=config.use_rts,
            top2_2nd_expert_sampling=config.top2_2nd_expert_sampling,
        )
        self.shared_mlp = (SparseEHRMLP(config.hidden_size, config.shared_expert_intermediate_size)
                           if not residual and config.shared_expert_intermediate_size > 0 else None)
        self.shared_gate = nn.Linear(config.hidden_size, 1, bias=False) if config.shared_expert_gate else None

    @property
    def router_weight(self) -> torch.Tensor:
        return self.moe.deepspeed_moe.gate.wg.weight  # [E, H]

    def _apply_gate_settings(self) -> None:
        # DeepSpeed reads these attributes at every call; switching them here follows .train()/.eval() exactly.
        gate = self.moe.deepspeed_moe.gate
        for name, value in (self.train_settings if self.training else self.eval_settings).items():
            setattr(gate, name, value)

    def forward(self, hidden_states: torch.Tensor, token_mask: torch.Tensor | None) -> MoeBlockOutput:
        self._apply_gate_settings()
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])  # [N, H]
        valid = token_mask.reshape(-1) if token_mask is not None else None  # [N] bool
        # DeepSpeed's top-1 gate takes `used_token` so padding occupies no capacity (its top-2 gate ignores it).
        # It must be int64: a float mask turns DeepSpeed's no-drop capacity into a float tensor that topk rejects.
        used_token = valid.long() if valid is not None else None
        routed, _, _ = self.moe(hidden_states, used_token)
        if self.shared_mlp is not None:
            shared = self.shared_mlp(hidden_states)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(hidden_states)) * shared
            routed = routed + shared

        # Router statistics recomputed from the same fp32 logits DeepSpeed uses, over non-padding tokens only:
        # DeepSpeed's own l_aux averages probabilities over padding too.
        logits = F.linear(flat.float(), self.router_weight.float())  # [N, E]
        probs = logits.softmax(dim=-1)
        weights = valid.float() if valid is not None else torch.ones_like(probs[:, 0])
        num_tokens = weights.sum().clamp(min=1.0)
        mean_prob = (probs * weights[:, None]).sum(0) / num_tokens  # [E]
        first_choice = F.one_hot(probs.argmax(dim=-1), self.num_experts).float()
        frac_tokens = (first_choice * weights[:, None]).sum(0) / num_tokens  # [E]
        aux_loss = self.num_experts * (mean_prob * frac_tokens).sum()
        chosen = probs.topk(self.top_k_routes, dim=-1).indices  # [N, k]
        counts = (F.one_hot(chosen, self.num_experts).sum(1) * weights[:, None].long()).sum(0)  # [E]
        return MoeBlockOutput(routed, logits, aux_loss, counts)


class SparseEHRDecoderLayer(nn.Module):
    def __init__(self, config: SparseEHRConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = SparseEHRAttention(config, layer_idx)
        self.is_moe = config.is_moe_layer(layer_idx)
        self.mlp = (SparseEHRMoeBlock(config) if self.is_moe
                    else SparseEHRMLP(config.hidden_size, config.intermediate_size))
        self.input_layernorm = SparseEHRRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SparseEHRRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, is_causal: bool, cache: Cache | None,
                token_mask: torch.Tensor | None) -> tuple[torch.Tensor, MoeBlockOutput | None]:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin, attn_mask,
                                                       is_causal, cache)
        normed = self.post_attention_layernorm(hidden_states)
        if self.is_moe:
            moe_out = self.mlp(normed, token_mask)
            return hidden_states + moe_out.hidden_states, moe_out
        return hidden_states + self.mlp(normed), None


class SparseEHRPreTrainedModel(PreTrainedModel):
    config_class = SparseEHRConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False  # DeepSpeed's random token selection would differ on recompute
    _no_split_modules = ["SparseEHRDecoderLayer"]
    _skip_keys_device_placement = list(CACHE_NAMES)
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.tag_expert_parameters()
        return model

    def tag_expert_parameters(self) -> None:
        """Restore DeepSpeed's `allreduce=False` / `group_name` marks on routed-expert parameters.

        `from_pretrained` recreates Parameters and loses the marks DeepSpeed's `Experts` set at construction, after
        which `deepspeed.initialize` asserts (DEEPSPEED_MOE.md, bite 9). Safe to call repeatedly.
        """
        for module in self.modules():
            if isinstance(module, SparseEHRMoeBlock):
                group_name = module.moe.expert_group_name
                for param in module.moe.deepspeed_moe.experts.parameters():
                    param.allreduce = False
                    param.group_name = group_name

    def save_pretrained(self, *args, **kwargs):
        if self.config.expert_parallel_size != 1:
            # Under expert parallelism each rank holds only its local experts: a save_pretrained here would write an
            # incomplete model whose config asks for process groups at load time.
            raise ValueError(
                f"save_pretrained needs an expert_parallel_size=1 model (this one has "
                f"{self.config.expert_parallel_size}): merge the DeepSpeed expert checkpoint files into a model "
                f"built with expert_parallel_size=1 and save that")
        return super().save_pretrained(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The base class draws every nn.Linear / nn.Embedding from N(0, initializer_range) and sets norms to 1.
        # It is applied per module, so each deep-copied expert gets its own independent draw (bite 2), and the
        # DeepSpeed router (`gate.wg`, an nn.Linear) and PR-MoE coefficient are covered too.
        super()._init_weights(module)
        std = self.config.embedding_init_std
        if std is not None and isinstance(module, nn.Embedding):  # embed_tokens, the model's only embedding
            module.weight.normal_(mean=0.0, std=std)


def _build_attention_mask(attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                          packed: bool, batch: int, q_len: int, past_len: int,
                          device: torch.device) -> tuple[torch.Tensor | None, bool]:
    """Boolean SDPA mask [B|1, 1, T, K] (True = may attend) or None with an is_causal flag.

    Combines causality, key padding and, for packed rows, block-diagonal segments (a segment starts where the
    position id restarts at 0), so no token ever attends across patients.
    """
    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if not has_padding and not packed:
        if q_len == 1:
            return None, False  # one new token sees the whole cache
        if past_len == 0:
            return None, True  # plain causal: let SDPA use its fast causal path
    key_len = past_len + q_len
    query_pos = torch.arange(past_len, key_len, device=device)
    key_pos = torch.arange(key_len, device=device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None]  # [1, T, K]
    if has_padding:
        allowed = allowed & attention_mask[:, None, :].bool()
    if packed:
        segment = torch.cumsum((position_ids == 0).long(), dim=-1).expand(batch, -1)  # [B, T]
        allowed = allowed & (segment[:, :, None] == segment[:, None, :])
    # A query may always see itself: padded queries would otherwise get an all-masked row and NaN from SDPA.
    allowed = allowed | (key_pos[None, :] == query_pos[:, None])[None]
    return allowed[:, None], False


class SparseEHRModel(SparseEHRPreTrainedModel):
    def __init__(self, config: SparseEHRConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([SparseEHRDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = SparseEHRRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_expert_counts: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SparseEHRModelOutput:
        """`cache` (or its pre-5.24 name `past_key_values`) is the KV cache to extend."""
        cache = resolve_cache_argument(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("SparseEHRModel.forward: pass exactly one of input_ids or inputs_embeds")
        if use_cache is None:  # a training step never reads its cache back: do not build one by default
            use_cache = self.config.use_cache and not self.training
        output_router_logits = (self.config.output_router_logits if output_router_logits is None
                                else output_router_logits)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        batch, q_len, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if use_cache and cache is None:
            cache = DynamicCache()
        past_len = cache.get_seq_length() if cache is not None else 0

        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (batch, past_len + q_len):
                raise ValueError(f"attention_mask must be 2-D [batch, past + new tokens] = "
                                 f"[{batch}, {past_len + q_len}], got shape {tuple(attention_mask.shape)}")
        packed = False
        if position_ids is None:
            if attention_mask is not None:
                # Positions count real tokens only, so a left-padded sequence gets the same rotary phases as the
                # same sequence alone (batch-composition invariance); generate() uses this convention too.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]
            else:
                position_ids = torch.arange(past_len, past_len + q_len, device=device)[None].expand(batch, -1)
        else:
            if position_ids.dim() == 1:
                position_ids = position_ids[None]
            # Position ids restarting at 0 inside a row mark packed sequences (DataCollatorWithFlattening).
            packed = past_len == 0 and q_len > 1 and bool((position_ids[:, 1:] == 0).any())
        attn_mask, is_causal = _build_attention_mask(attention_mask, position_ids, packed, batch, q_len, past_len,
                                                     device)
        token_mask = attention_mask[:, -q_len:].bool() if attention_mask is not None else None
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, inputs_embeds.dtype)

        hidden_states = inputs_embeds
        all_hidden: list[torch.Tensor] = []
        moe_outputs: list[MoeBlockOutput] = []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, moe_out = layer(hidden_states, cos, sin, attn_mask, is_causal, cache, token_mask)
            if moe_out is not None:
                moe_outputs.append(moe_out)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)

        aux_loss = torch.stack([m.aux_loss for m in moe_outputs]).mean() if moe_outputs else None
        return SparseEHRModelOutput(
            last_hidden_state=hidden_states,
            **{CACHE_FIELD: cache if use_cache else None},
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            aux_loss=aux_loss,
            router_logits=tuple(m.router_logits for m in moe_outputs) if output_router_logits else None,
            expert_counts=(torch.stack([m.expert_counts for m in moe_outputs])
                           if output_expert_counts and moe_outputs else None),
        )


class SparseEHRForCausalLM(SparseEHRPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SparseEHRConfig) -> None:
        super().__init__(config)
        self.model = SparseEHRModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        output_expert_counts: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> SparseEHRCausalLMOutput:
        """Labels are the input ids (shifted inside), -100 where ignored. Under packing, the first token of each
        segment is never a target of the previous patient's last token. `cache` (or its pre-5.24 name
        `past_key_values`) is the KV cache to extend."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=resolve_cache_argument(cache, past_key_values), inputs_embeds=inputs_embeds,
                             use_cache=use_cache,
                             output_router_logits=output_router_logits, output_expert_counts=output_expert_counts,
                             output_hidden_states=output_hidden_states)
        hidden_states = outputs.last_hidden_state
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)
        if self.config.logit_scale != 1.0:
            logits = logits * self.config.logit_scale

        loss = lm_loss = None
        if labels is not None:
            if logits_to_keep:
                raise ValueError("labels and logits_to_keep cannot be combined: the loss needs every position")
            token_losses, n_targets = next_token_nll(logits, labels, position_ids)
            denominator = num_items_in_batch if num_items_in_batch is not None else n_targets.clamp(min=1)
            lm_loss = token_losses / denominator
            loss = lm_loss
            if outputs.aux_loss is not None:
                loss = lm_loss + self.config.router_aux_loss_coef * outputs.aux_loss
        return SparseEHRCausalLMOutput(
            loss=loss, lm_loss=lm_loss, aux_loss=outputs.aux_loss, logits=logits,
            **{CACHE_FIELD: output_cache(outputs)}, hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits, expert_counts=outputs.expert_counts,
        )
