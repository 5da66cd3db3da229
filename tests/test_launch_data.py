"""Packing, rank sharding, resumable data order, checkpoint pruning — single process, no DeepSpeed engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from launch_helpers import build_tiny_datadir
from sparseehr.data_pipeline import schema
from sparseehr.launch import checkpoint as ckpt
from sparseehr.launch import rundir
from sparseehr.launch.data import (PackedTrainLoader, collate_packed, load_windows_split, pack_next_fit,
                                   validation_batches, window_lengths)


@pytest.fixture(scope="module")
def tiny_datadir(tmp_path_factory):
    return build_tiny_datadir(tmp_path_factory.mktemp("launch_data") / "data")


def test_pack_next_fit_hand_example():
    lengths = np.array([5, 3, 4, 2, 6])
    # order 4,0,1,2,3 into 8 tokens: [6] (5 does not fit), [5,3], [4,2]
    assert pack_next_fit(lengths, np.array([4, 0, 1, 2, 3]), 8) == [[4], [0, 1], [2, 3]]
    with pytest.raises(ValueError, match="window 4 has 6 tokens, more than seq_len 5"):
        pack_next_fit(lengths, np.array([4]), 5)


def test_collate_restarts_positions_and_masks_boundaries():
    batch = collate_packed([[[10, 11, 12], [20, 21]], [[30]]], seq_len=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 0], [30, 0, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 4]]
    # label at t is the token at t; the model shifts. 20 (first of window 2) is never a target.
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, 21, -100], [-100] * 6]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]]


def test_loader_shards_ranks_disjointly_and_resumes_exactly(tiny_datadir):
    train = load_windows_split(tiny_datadir, schema.SPLIT_TRAIN)
    lengths = window_lengths(train)
    assert lengths.tolist() == [len(x) for x in train[schema.COL_INPUT_IDS]]
    seq_len = int(lengths.max()) * 2

    def rows_seen(loader, n):
        seen = []
        for _ in range(n):
            batch = loader.next_batch()
            seen += [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
        return seen

    loaders = [PackedTrainLoader(train, seq_len, 2, rank, 2, seed=7, pad_id=0) for rank in range(2)]
    per_epoch = loaders[0].micro_batches_per_epoch()
    rank0, rank1 = rows_seen(loaders[0], per_epoch), rows_seen(loaders[1], per_epoch)
    assert not set(rank0) & set(rank1)  # one epoch: no packed row on both ranks
    assert loaders[0].position.epoch == 0 and loaders[0].position.micro_batches_done == per_epoch

    # A loader restored from a state_dict yields exactly what the original yields next (into epoch 1 too).
    reference = PackedTrainLoader(train, seq_len, 2, 0, 2, seed=7, pad_id=0)
    rows_seen(reference, 3)
    state = reference.state_dict()
    restored = PackedTrainLoader(train, seq_len, 2, 0, 2, seed=7, pad_id=0)
    restored.load_state_dict(state)
    assert rows_seen(restored, per_epoch) == rows_seen(reference, per_epoch)
    with pytest.raises(ValueError, match="checkpoint has world_size=2, this run has 4"):
        PackedTrainLoader(train, seq_len, 1, 0, 4, seed=7, pad_id=0).load_state_dict(state)
    # Another seed gives another order.
    other = PackedTrainLoader(train, seq_len, 2, 0, 2, seed=8, pad_id=0)
    fresh = PackedTrainLoader(train, seq_len, 2, 0, 2, seed=7, pad_id=0)
    assert rows_seen(other, per_epoch) != rows_seen(fresh, per_epoch)


def test_validation_batches_same_count_on_every_rank(tiny_datadir):
    val = load_windows_split(tiny_datadir, schema.SPLIT_VALIDATION)
    seq_len = int(window_lengths(val).max())  # one window per row: rows == windows
    per_rank = [validation_batches(val, seq_len, 4, rank, 3, pad_id=0) for rank in range(3)]
    assert len({len(b) for b in per_rank}) == 1
    real_rows = sum(int((b["attention_mask"].sum(1) > 0).sum()) for batches in per_rank for b in batches)
    assert real_rows == len(val)
    targets = sum(int((b["labels"] != -100).sum()) for batches in per_rank for b in batches)
    assert targets == sum(len(ids) - 1 for ids in val[schema.COL_INPUT_IDS])


def test_packed_rows_do_not_attend_across_patients(tiny_datadir):
    """End to end with the real model: a window's logits are the same alone and packed behind another."""
    from sparseehr.model import SparseEHRForCausalLM
    from sparseehr.model.presets import get_preset

    torch.manual_seed(0)
    model = SparseEHRForCausalLM(get_preset("tiny", vocab_size=40)).eval()
    val = load_windows_split(tiny_datadir, schema.SPLIT_VALIDATION)
    first, second = (list(x) for x in val[schema.COL_INPUT_IDS][:2])
    seq_len = len(first) + len(second) + 3
    packed = collate_packed([[first, second]], seq_len, pad_id=0)
    alone = collate_packed([[second]], len(second), pad_id=0)
    with torch.no_grad():
        packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
        alone_logits = model(**{k: v for k, v in alone.items() if k != "labels"}).logits
    torch.testing.assert_close(packed_logits[0, len(first):len(first) + len(second)], alone_logits[0],
                               rtol=1e-5, atol=1e-5)


def test_prune_keeps_last_n_and_latest(tmp_path):
    for step in (3, 6, 9, 12):
        (tmp_path / rundir.tag_for_step(step)).mkdir()
    (tmp_path / "global_step_notes").mkdir()  # not a tag: never touched
    rundir.write_latest_tag(tmp_path, "global_step12")
    assert ckpt.prune_checkpoints(tmp_path, keep_last=2) == ["global_step3", "global_step6"]
    assert rundir.list_tags(tmp_path) == ["global_step9", "global_step12"]
    assert (tmp_path / "global_step_notes").is_dir()
    rundir.write_latest_tag(tmp_path, "global_step9")  # latest older than the newest: still kept
    assert ckpt.prune_checkpoints(tmp_path, keep_last=1) == []
    assert rundir.read_latest_tag(tmp_path) == "global_step9"
    # A resume from global_step9 removes the newer, never committed global_step12.
    assert ckpt.drop_uncommitted_tags(tmp_path, "global_step9") == ["global_step12"]
    assert rundir.list_tags(tmp_path) == ["global_step9"]


def test_log_unigram_prior_counts_only_predicted_tokens():
    from datasets import Dataset

    from sparseehr.launch.data import log_unigram_prior

    windows = Dataset.from_dict({schema.COL_INPUT_IDS: [[1, 2, 2], [3, 2], [4]]})
    prior = log_unigram_prior(windows, vocab_size=5)
    # Targets are 2, 2 and 2 (each window's first token predicts nothing); add-one: [1, 1, 4, 1, 1] / 8.
    expected = torch.log(torch.tensor([1, 1, 4, 1, 1], dtype=torch.float32) / 8)
    assert torch.allclose(prior, expected)
    with pytest.raises(ValueError, match="outside the model's vocabulary of 3"):
        log_unigram_prior(windows, vocab_size=3)


def test_a_fresh_run_starts_the_output_bias_at_the_data_prior(tmp_path):
    """`sparseehr train` with lm_head_bias starts the bias at log_unigram_prior(train split); one step of AdamW
    (LR 3e-3) moves each entry by at most about the LR, so after it the bias is still within 1e-2 of the prior."""
    import subprocess
    import sys

    from launch_helpers import subprocess_env
    from safetensors.torch import load_file

    from sparseehr.launch.data import log_unigram_prior

    data = build_tiny_datadir(tmp_path / "data")
    run, hf = tmp_path / "run", tmp_path / "hf"
    common = dict(env=subprocess_env(), capture_output=True, text=True, timeout=300)
    result = subprocess.run([sys.executable, "-m", "sparseehr", "train", "--preset", "tiny", "--data", str(data),
                             "--out", str(run), "--max-steps", "1", "--warmup-steps", "0", "--lr", "3e-3", "--eval-interval", "0",
                             "--ckpt-interval", "1", "--model-override", "lm_head_bias=true"], **common)
    assert result.returncode == 0, result.stderr[-2000:]
    result = subprocess.run([sys.executable, "-m", "sparseehr", "export", "--run", str(run), "--out", str(hf)],
                            **common)
    assert result.returncode == 0, result.stderr[-2000:]
    bias = load_file(str(hf / "model.safetensors"))["lm_head.bias"]
    prior = log_unigram_prior(load_windows_split(data, schema.SPLIT_TRAIN), bias.numel())
    assert prior.max() - prior.min() > 1.0          # the tiny data's prior is far from uniform: the check has teeth
    assert torch.allclose(bias, prior, atol=1e-2)
