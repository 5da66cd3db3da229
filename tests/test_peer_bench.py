"""`sparseehr bench peer` without the peer: the matched Llama shape against a real HF Llama, and refused settings."""
from __future__ import annotations

import pytest
import torch

from sparseehr.peer_setup import PeerBenchConfig, llama_non_embedding, matched_peer_shape, peer_pretrain_overrides
from sparseehr.peerbench import main


def test_llama_count_matches_transformers_and_the_shape_matches_our_preset():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = matched_peer_shape("small", vocab_size=300)
    config = LlamaConfig(vocab_size=50, hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
                         num_attention_heads=shape["num_attention_heads"],
                         num_key_value_heads=shape["num_key_value_heads"], intermediate_size=shape["intermediate_size"],
                         head_dim=shape["attention_head_dim"], tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    embeddings = 2 * 50 * shape["hidden_size"]          # input embedding + untied lm_head
    assert sum(p.numel() for p in model.parameters()) - embeddings == shape["peer_non_embedding"]
    # within one MLP column (3 x hidden x layers parameters) of our total non-embedding count
    assert abs(shape["peer_non_embedding"] - shape["ours_non_embedding"]) <= 3 * shape["hidden_size"] * 4 / 2
    assert llama_non_embedding(8, 1, 2, 1, 16) == 2 * 64 + 2 * 8 * 4 + 3 * 8 * 16 + 2 * 8 + 8


def test_pretrain_overrides_carry_the_shared_budget(tmp_path):
    cfg = PeerBenchConfig(data=tmp_path, claims_data=tmp_path, targets={"t": tmp_path}, work=tmp_path, max_steps=7,
                          seq_len=128, micro_batch=4, ranks=2, peer_venv=tmp_path / "venv")
    overrides = peer_pretrain_overrides(cfg, matched_peer_shape("small", vocab_size=300))
    assert {"trainer.max_steps=7", "max_seq_len=128", "datamodule.batch_size=8",
            "trainer.val_check_interval=7"} <= set(overrides)


@pytest.mark.parametrize("extra, message", [(["--trajectories", "5"], "at least 20"),
                                            (["--target", "nameless"], "NAME=DATA_DIR"),
                                            (["--system", "other"], "supported peers")])
def test_refused_settings(tmp_path, capsys, extra, message):
    argv = ["--data", str(tmp_path), "--claims-data", str(tmp_path), "--work", str(tmp_path / "w")]
    if "--target" not in extra:
        argv += ["--target", f"t={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + extra)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
