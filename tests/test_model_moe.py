"""SparseEHR MoE behaviour: padding-invariant aux loss, dense equivalence, determinism, packing, cache, init."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM, SparseEHRMLP, SparseEHRMoeBlock
from sparseehr.model.presets import get_preset
from sparseehr.model.transformers_compat import output_cache

ATOL = 1e-5


def build(seed: int = 0, **overrides) -> SparseEHRForCausalLM:
    torch.manual_seed(seed)
    return SparseEHRForCausalLM(get_preset("tiny", **overrides))


def left_pad(seqs: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


def test_aux_loss_and_counts_ignore_padding():
    model = build(num_hidden_layers=3).eval()
    seq = torch.randint(1, 99, (1, 8))
    padded, mask = left_pad([seq[0], torch.randint(1, 99, (13,))])
    with torch.no_grad():
        alone = model(seq, output_expert_counts=True)
        # the same sequence left-padded to 13 next to a second sequence, then the padded row on its own
        padded_row = model(padded[:1], attention_mask=mask[:1], output_expert_counts=True)
    assert torch.allclose(alone.aux_loss, padded_row.aux_loss, atol=1e-6)
    assert torch.equal(alone.expert_counts, padded_row.expert_counts)
    assert padded_row.expert_counts.sum(dim=1).tolist() == [8, 8]  # 5 padding tokens per layer not counted


def test_aux_loss_matches_deepspeed_formula_without_padding():
    model = build().eval()
    ids = torch.randint(0, 99, (2, 10))
    with torch.no_grad():
        out = model(ids, output_router_logits=True)
    deepspeed_l_aux = model.model.layers[1].mlp.moe.deepspeed_moe.l_aux
    # Hand formula from the router logits: E * sum_e(mean prob_e * fraction of tokens whose top-1 is e).
    probs = out.router_logits[0].softmax(-1)
    frac = F.one_hot(probs.argmax(-1), 4).float().mean(0)
    expected = 4 * (probs.mean(0) * frac).sum()
    assert torch.allclose(out.aux_loss, expected, atol=1e-6)
    assert torch.allclose(out.aux_loss, deepspeed_l_aux, atol=1e-6)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_one_expert_moe_equals_dense_swiglu(mode):
    cfg = get_preset("tiny", num_experts=1, num_experts_per_tok=1, shared_expert_intermediate_size=0,
                     drop_tokens=False)
    torch.manual_seed(1)
    block = SparseEHRMoeBlock(cfg)
    dense = SparseEHRMLP(cfg.hidden_size, cfg.moe_intermediate_size)
    dense.load_state_dict(block.moe.deepspeed_moe.experts.deepspeed_experts[0].state_dict())
    block.train(mode == "train")
    x = torch.randn(3, 5, cfg.hidden_size)
    out = block(x, token_mask=None)
    expected = F.linear(F.silu(F.linear(x, dense.gate_proj.weight)) * F.linear(x, dense.up_proj.weight),
                        dense.down_proj.weight)
    assert torch.allclose(out.hidden_states, expected, atol=1e-6)


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(num_experts_per_tok=2),
    dict(shared_expert_mode="residual"),
    dict(shared_expert_gate=True, num_hidden_layers=3, first_k_dense_replace=0),
])
def test_eval_logits_do_not_depend_on_batch_composition(overrides):
    model = build(seed=2, **overrides).eval()
    target = torch.randint(1, 99, (6,))
    others = [torch.randint(1, 99, (n,)) for n in (11, 3, 9)]
    with torch.no_grad():
        alone = model(target[None]).logits[0]
        ids, mask = left_pad([others[0], target, others[1], others[2]])
        batched = model(ids, attention_mask=mask).logits[1, -6:]
        # right padding too
        right = torch.zeros((2, 11), dtype=torch.long)
        right_mask = torch.zeros((2, 11), dtype=torch.long)
        right[0], right_mask[0] = others[0], 1
        right[1, :6], right_mask[1, :6] = target, 1
        right_logits = model(right, attention_mask=right_mask).logits[1, :6]
    assert torch.allclose(alone, batched, atol=ATOL)
    assert torch.allclose(alone, right_logits, atol=ATOL)


def test_training_mode_still_drops_by_capacity():
    # Sanity check that eval determinism comes from the eval switch, not from a gate that never drops:
    # with capacity factor 0.25 and 4 experts, training keeps at most ceil(N/4*0.25) tokens per expert.
    model = build(capacity_factor=0.25, min_capacity=0, use_rts=False)
    block = model.model.layers[1].mlp
    x = torch.randn(1, 32, 32)
    block.train()
    trained = block(x, None).hidden_states - block.shared_mlp(x)
    dropped = (trained.abs().sum(-1) == 0).sum().item()
    assert dropped >= 32 - 4 * 2
    block.eval()
    evaluated = block(x, None).hidden_states - block.shared_mlp(x)
    assert (evaluated.abs().sum(-1) == 0).sum().item() == 0


def test_packed_row_equals_separate_sequences_and_loss_never_crosses():
    model = build(seed=4, num_hidden_layers=3).eval()
    first, second = torch.randint(1, 99, (5,)), torch.randint(1, 99, (7,))
    packed = torch.cat([first, second])[None]
    position_ids = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        together = model(packed, position_ids=position_ids, labels=packed)
        one = model(first[None], labels=first[None])
        two = model(second[None], labels=second[None])
    assert torch.allclose(together.logits[0, :5], one.logits[0], atol=ATOL)
    assert torch.allclose(together.logits[0, 5:], two.logits[0], atol=ATOL)
    # 4 + 6 targets; the boundary pair (last of first -> first of second) is not a target
    expected = (one.lm_loss * 4 + two.lm_loss * 6) / 10
    assert torch.allclose(together.lm_loss, expected, atol=1e-5)


def test_cached_decoding_matches_full_forward():
    model = build(seed=5, num_hidden_layers=3, num_experts_per_tok=2).eval()
    ids = torch.randint(1, 99, (2, 10))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefix = model(ids[:, :6], use_cache=True)
        cache, steps = output_cache(prefix), [prefix.logits]
        for t in range(6, 10):  # one-token decode steps (DeepSpeed's min_capacity would reject these)
            step = model(ids[:, t:t + 1], cache=cache, use_cache=True)
            cache = output_cache(step)
            steps.append(step.logits)
        chunk = model(ids[:, :4], use_cache=True)  # a multi-token chunk on top of a cache
        chunk = model(ids[:, 4:], cache=output_cache(chunk), use_cache=True).logits
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=ATOL)
    assert torch.allclose(chunk, full[:, 4:], atol=ATOL)


def test_generate_cached_uncached_and_left_padded_batch():
    model = build(seed=6).eval()
    prompts = [torch.randint(1, 99, (n,)) for n in (4, 9, 6)]
    singles = []
    for prompt in prompts:
        cached = model.generate(prompt[None], max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(prompt[None], max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)
        singles.append(cached[0, len(prompt):])
    ids, mask = left_pad(prompts)
    batched = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    for row, single in enumerate(singles):
        assert torch.equal(batched[row, ids.shape[1]:], single)


@pytest.mark.parametrize("mode", ["additive", "residual"])
def test_experts_start_different_and_nothing_is_tied(mode):
    model = build(seed=7, num_hidden_layers=3, shared_expert_mode=mode)
    blocks = [model.model.layers[i].mlp for i in (1, 2)]
    for block in blocks:
        experts = block.moe.deepspeed_moe.experts.deepspeed_experts
        for a, b in itertools.combinations(experts, 2):
            assert not torch.equal(a.gate_proj.weight, b.gate_proj.weight)
            assert not torch.equal(a.down_proj.weight, b.down_proj.weight)
        std = experts[0].up_proj.weight.std().item()
        assert 0.015 < std < 0.025  # drawn from N(0, initializer_range=0.02), not torch's default init
    if mode == "residual":
        first, second = (b.moe.mlp for b in blocks)
        assert first.gate_proj.weight.data_ptr() != second.gate_proj.weight.data_ptr()
        assert not torch.equal(first.gate_proj.weight, second.gate_proj.weight)
        assert not torch.equal(first.gate_proj.weight, blocks[0].moe.deepspeed_moe.experts.deepspeed_experts[0].gate_proj.weight)


def test_no_parameter_path_contains_expert_outside_deepspeed():
    # DeepSpeed's checkpoint writer drops every non-expert key under a module path containing "expert".
    model = build(num_hidden_layers=3, shared_expert_gate=True)
    for name, _ in model.named_parameters():
        our_part = name.split("deepspeed_moe.experts.deepspeed_experts.")[0]
        if "deepspeed_experts." in name:
            continue  # DeepSpeed's own expert parameters, saved to the per-expert files
        assert "expert" not in our_part, name


@pytest.mark.parametrize("top_k", [1, 2])
def test_bf16_training_step_and_generation(top_k):
    # The bf16 DeepSpeed configs run the model in bfloat16: router in fp32 inside, loss in fp32, finite grads.
    model = build(seed=8, num_experts_per_tok=top_k).to(torch.bfloat16)
    ids = torch.randint(1, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    out = model(ids, attention_mask=mask, labels=ids, output_expert_counts=True)
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.logits.dtype == torch.bfloat16
    assert out.expert_counts.sum().item() == (2 * 9 - 3) * top_k
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    generated = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 12)
