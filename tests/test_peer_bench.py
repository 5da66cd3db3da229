"""`sparseehr bench peer` without the peer: the matched Llama shape against a real HF Llama, and refused settings."""
from __future__ import annotations

import pytest
import torch

import pyarrow as pa
import pyarrow.parquet as pq

from sparseehr.peer_setup import (
    PeerBenchConfig, llama_non_embedding, matched_peer_shape, peer_pretrain_overrides, reshard_by_subject,
)
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


def test_reshard_keeps_each_subject_whole_and_every_row_in_order(tmp_path):
    # subjects 1..5 with 3, 1, 2, 1, 4 rows; 2 subjects per shard -> {1,2}, {3,4}, {5}
    subjects = [1, 1, 1, 2, 3, 3, 4, 5, 5, 5, 5]
    table = pa.table({"subject_id": pa.array(subjects, pa.int64()), "code": [f"C{i}" for i in range(11)]})
    pq.write_table(table, tmp_path / "0000.parquet")
    written = reshard_by_subject(tmp_path / "0000.parquet", tmp_path / "out" / "0000", 2)
    assert [p.name for p in written] == ["0000-0000.parquet", "0000-0001.parquet", "0000-0002.parquet"]
    parts = [pq.read_table(p) for p in written]
    assert [sorted(set(t.column("subject_id").to_pylist())) for t in parts] == [[1, 2], [3, 4], [5]]
    assert pa.concat_tables(parts).equals(table)


def test_reshard_refuses_a_shard_not_sorted_by_subject(tmp_path):
    pq.write_table(pa.table({"subject_id": pa.array([2, 1], pa.int64()), "code": ["A", "B"]}), tmp_path / "s.parquet")
    with pytest.raises(ValueError, match="not sorted by subject_id"):
        reshard_by_subject(tmp_path / "s.parquet", tmp_path / "out" / "s", 10)
