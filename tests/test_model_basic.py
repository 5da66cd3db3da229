"""SparseEHR model: shapes, config validation, presets, Auto-class registration and save/load round trip."""
from __future__ import annotations

import math

import pytest
import torch

import sparseehr  # noqa: F401  (registers the Auto classes)
from sparseehr.model.configuration_sparseehr import SparseEHRConfig
from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM, SparseEHRModel
from sparseehr.model.presets import PRESETS, get_preset


def tiny_model(seed: int = 0, **overrides) -> SparseEHRForCausalLM:
    torch.manual_seed(seed)
    return SparseEHRForCausalLM(get_preset("tiny", **overrides))


def test_tiny_shapes_and_outputs():
    cfg = get_preset("tiny", num_hidden_layers=3, first_k_dense_replace=1)
    model = SparseEHRForCausalLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 7))
    out = model(ids, labels=ids, output_router_logits=True, output_expert_counts=True)
    assert out.logits.shape == (2, 7, cfg.vocab_size)
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (14, cfg.num_experts)
    assert out.expert_counts.shape == (2, cfg.num_experts)
    # top-1: every token is routed exactly once per MoE layer
    assert out.expert_counts.sum(dim=1).tolist() == [14, 14]
    assert torch.allclose(out.loss, out.lm_loss + cfg.router_aux_loss_coef * out.aux_loss)
    # a fresh model is near-uniform over the vocabulary: LM loss close to log(V)
    assert abs(out.lm_loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 0.5
    # layer 0 dense, layers 1-2 MoE
    assert not model.model.layers[0].is_moe and model.model.layers[1].is_moe and model.model.layers[2].is_moe
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tie_word_embeddings=True in every preset
    untied = SparseEHRForCausalLM(get_preset("tiny", tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    base_out = SparseEHRModel(cfg)(ids)
    assert base_out.last_hidden_state.shape == (2, 7, cfg.hidden_size)


def test_no_labels_means_no_loss_and_no_extras():
    model = tiny_model()
    out = model(torch.randint(0, 99, (1, 5)))
    assert out.loss is None and out.lm_loss is None
    assert out.aux_loss is not None  # returned for logging, never added without labels
    assert out.router_logits is None and out.expert_counts is None


def test_loss_matches_hand_computed_cross_entropy():
    model = tiny_model(first_k_dense_replace=2)  # fully dense: loss must equal plain shifted CE
    ids = torch.randint(0, 99, (2, 6))
    labels = ids.clone()
    labels[0, 4:] = -100
    out = model(ids, labels=labels)
    logits = out.logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1),
                                                 ignore_index=-100)
    assert out.aux_loss is None
    assert torch.allclose(out.loss, expected, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(num_attention_heads=3), "num_key_value_heads"),
    (dict(first_k_dense_replace=5), "first_k_dense_replace"),
    (dict(num_experts_per_tok=3), "num_experts_per_tok"),
    (dict(num_experts=3, expert_parallel_size=2), "expert_parallel_size"),
    (dict(shared_expert_mode="residual", shared_expert_intermediate_size=64), "residual"),
    (dict(shared_expert_mode="mixed"), "shared_expert_mode"),
    (dict(router_noise_policy="RSample", num_experts_per_tok=2), "RSample"),
    (dict(shared_expert_gate=True, shared_expert_intermediate_size=0), "shared_expert_gate"),
    (dict(eval_capacity_factor=0.0), "eval_capacity_factor"),
    (dict(embedding_init_std=0.0), "embedding_init_std"),
    (dict(logit_scale=-1.0), "logit_scale"),
])
def test_config_rejects_impossible_combinations(bad, message):
    with pytest.raises(ValueError, match=message):
        get_preset("tiny", **bad)


def test_embedding_init_std_and_logit_scale():
    torch.manual_seed(0)
    default = SparseEHRForCausalLM(get_preset("tiny"))
    torch.manual_seed(0)
    wide = SparseEHRForCausalLM(get_preset("tiny", embedding_init_std=1.0, logit_scale=0.25))
    # 99 x 32 draws: the sample std is within a few percent of the requested one; the tied head shares it.
    assert abs(wide.model.embed_tokens.weight.std().item() - 1.0) < 0.05
    assert abs(default.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert wide.lm_head.weight is wide.model.embed_tokens.weight
    # Other matrices keep initializer_range.
    q = wide.model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 0.02) < 0.003
    # logit_scale multiplies the logits: same weights, scale 0.25 vs 1.0.
    unscaled = SparseEHRForCausalLM(get_preset("tiny", embedding_init_std=1.0))
    unscaled.load_state_dict(wide.state_dict())
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    unscaled.eval(), wide.eval()
    with torch.no_grad():
        assert torch.allclose(wide(input_ids=ids).logits, 0.25 * unscaled(input_ids=ids).logits, atol=1e-5)


def test_presets_and_unknown_names():
    assert set(PRESETS) == {"tiny", "small", "base", "paper"}
    paper = get_preset("paper")
    assert (paper.num_hidden_layers, paper.hidden_size, paper.vocab_size) == (16, 2048, 20656)
    assert (paper.first_k_dense_replace, paper.num_experts, paper.num_experts_per_tok) == (4, 4, 1)
    assert paper.num_key_value_heads < paper.num_attention_heads  # GQA
    assert get_preset("small", vocab_size=321).vocab_size == 321
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="top_k"):
        get_preset("tiny", top_k=2)


def test_auto_classes_round_trip_identical_logits(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    model = tiny_model(seed=3, num_hidden_layers=3, shared_expert_gate=True).eval()
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SparseEHRConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SparseEHRForCausalLM
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is SparseEHRModel
    assert torch.equal(base.embed_tokens.weight, model.model.embed_tokens.weight)


def test_from_pretrained_restores_deepspeed_expert_tags(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny_model().save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    block = loaded.model.layers[1].mlp
    for name, param in loaded.named_parameters():
        if "deepspeed_experts" in name:
            assert param.allreduce is False and param.group_name == "ep_size_1", name
        else:
            assert getattr(param, "allreduce", True) is not False, name
    assert block.moe.expert_group_name == "ep_size_1"


def test_save_pretrained_refuses_expert_parallel_models(tmp_path):
    model = SparseEHRForCausalLM(get_preset("tiny", expert_parallel_size=2))
    with pytest.raises(ValueError, match="expert_parallel_size=1"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("module_name", ["configuration_sparseehr", "presets", "accounting", "loss", "expert_stats"])
def test_docstring_examples(module_name):
    import doctest
    import importlib

    module = importlib.import_module(f"sparseehr.model.{module_name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_expert_load_std_hand_values():
    from sparseehr.model.expert_stats import expert_load_fractions, expert_load_std

    # counts 6, 2, 0, 0: fractions .75 .25 0 0, mean .25, squared deviations .25 0 .0625 .0625 -> variance .09375
    assert expert_load_std(expert_load_fractions([[6, 2, 0, 0]])) == pytest.approx(math.sqrt(0.09375))
    # one expert takes every token: sqrt(E - 1) / E; balanced: 0; the model figure is the mean over layers
    assert expert_load_std([[1.0, 0.0, 0.0, 0.0], [0.25] * 4]) == pytest.approx(math.sqrt(3) / 4 / 2)


def test_next_token_nll_hand_case():
    from sparseehr.model.loss import next_token_nll

    # Uniform logits over 10 tokens: every target costs log 10. Labels 5 6 7 8 with a segment restart at t=2:
    # targets are 6 (t=0) and 8 (t=2); t=1 would predict the next segment's first token, t=3 has no next token.
    nll, count = next_token_nll(torch.zeros(1, 4, 10), torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 1, 0, 1]]))
    assert int(count) == 2 and float(nll) == pytest.approx(2 * math.log(10))
