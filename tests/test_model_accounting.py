"""Parameter/FLOP accounting: the paper preset by hand, formula vs built model, and the model-info CLI."""
from __future__ import annotations

import pytest
import torch

from sparseehr.model import info
from sparseehr.model.accounting import count_module_parameters, count_parameters, flops_per_token
from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM
from sparseehr.model.presets import get_preset


def test_paper_preset_counts_by_hand():
    # Written out from the architecture, independently of accounting.py:
    V, H, L, D, E = 20656, 2048, 16, 4, 4
    heads, kv_heads, head_dim, ffn = 16, 4, 128, 1536
    attention = 2 * H * heads * head_dim + 2 * H * kv_heads * head_dim  # q,o + k,v = 10,485,760
    swiglu = 3 * H * ffn  # 9,437,184
    per_layer_norms = 2 * H
    moe_layer = H * E + E * swiglu + swiglu  # router + 4 routed experts + shared expert
    total = V * H + L * (attention + per_layer_norms) + H + D * swiglu + (L - D) * moe_layer
    active = total - (L - D) * (E - 1) * swiglu
    assert (total, active) == (814_221_312, 474_482_688)
    counts = count_parameters(get_preset("paper"))
    assert counts.total == total and counts.active_per_token == active
    assert abs(counts.total / 807e6 - 1) < 0.05 and abs(counts.active_per_token / 470e6 - 1) < 0.05
    assert counts.embedding == V * H and counts.output_projection == 0  # tied


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(shared_expert_mode="residual"),
    dict(shared_expert_gate=True, tie_word_embeddings=False, num_experts_per_tok=2),
    dict(first_k_dense_replace=2),
    dict(first_k_dense_replace=0, shared_expert_intermediate_size=0, num_experts=3),
])
def test_formula_matches_built_model(overrides):
    config = get_preset("tiny", num_hidden_layers=3, **overrides)
    model = SparseEHRForCausalLM(config)
    counts = count_parameters(config)
    assert count_module_parameters(model) == counts.total
    # active = total minus the routed experts a token does not visit, counted from the real modules
    idle = 0
    for layer in model.model.layers:
        if layer.is_moe:
            experts = layer.mlp.moe.deepspeed_moe.experts.deepspeed_experts
            per_expert = sum(p.numel() for p in experts[0].parameters())
            idle += (len(experts) - config.num_experts_per_tok) * per_expert
    assert counts.active_per_token == counts.total - idle


def test_paper_preset_builds_on_meta_device():
    with torch.device("meta"):
        model = SparseEHRForCausalLM(get_preset("paper"))
    assert count_module_parameters(model) == 814_221_312


def test_flops_per_token_by_hand():
    config = get_preset("tiny")  # V99 H32 L2 D1, 4 heads x 8, 2 kv heads, ffn 64, experts 32, shared 32, tied
    H, V = 32, 99
    attention = 2 * H * 32 + 2 * H * 16
    matmuls = (2 * attention + 3 * H * 64 + H * 4 + 3 * H * 32 + 3 * H * 32 + V * H)  # router+1 expert+shared+head
    seq_len = 10
    forward = 2 * matmuls + 2 * 2 * seq_len * 32 * 2
    assert flops_per_token(config, seq_len, training=False) == forward
    assert flops_per_token(config, seq_len, training=True) == 3 * forward
    with pytest.raises(ValueError):
        flops_per_token(config, 0, training=False)


def test_model_info_cli_paper_table(capsys):
    assert info.main(["--preset", "paper", "--dense-layers", "0", "4"]) == 0
    text = capsys.readouterr().out
    assert "814.2M" in text and "474.5M" in text and "807M" in text and "942M" in text
    assert "D=4 vs D=0" in text
    assert info.main(["--preset", "tiny", "--dense-layers", "7"]) == 2


def test_paper_rows_imply_different_expert_widths():
    config = get_preset("paper")
    # (807 - 470)M over 12 MoE layers x 3 idle experts x 3 x 2048 -> ~1524; D=8 row -> ~1743
    widths = {d: info.implied_expert_width(d, t, a, config) for d, (t, a) in info.PAPER_TABLE4.items()}
    assert round(widths[4]) == round((807e6 - 470e6) / (12 * 3 * 3 * 2048))
    assert widths[8] - widths[0] > 300  # no single expert width fits every row


def test_model_info_json_is_clean(capsys):
    import json

    assert info.main(["--preset", "tiny", "--dense-layers", "0", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["dense_layers"] for r in rows] == [0, 1]
    assert rows[0]["total"] > rows[1]["total"]  # D=0 has one more MoE block


def test_bench_model_cli_runs_and_rejects_bad_sizes(capsys):
    import json

    from sparseehr.model import bench

    assert bench.main(["--preset", "tiny", "--tokens", "512", "--repeats", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["bench"], r["tokens_per_call"]) for r in report["results"]] == [("moe_block", 512), ("model", 512)]
    assert all(r["ours_tokens_per_s"] > 0 and r["ratio"] > 0 for r in report["results"])
    assert bench.main(["--tokens", "1000"]) == 2
