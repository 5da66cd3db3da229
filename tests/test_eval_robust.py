"""`sparseehr eval` checks every path and the model's files before the expensive work, in one line each."""
from __future__ import annotations

import json
import shutil

import pytest

from sparseehr.data_pipeline.artifacts import EXPORT_INFO_FILE, vocabulary_hash
from sparseehr.eval.cli import main

from eval_tiny_datadir import build_datadir, build_tokenizer, save_model_dir, train_tiny_model
from cli_helpers import one_line_error


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_datadir(tmp_path_factory.mktemp("datadir"))


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    return save_model_dir(train_tiny_model(data_dir, steps=5), tmp_path_factory.mktemp("hf"))


def run(*argv) -> int:
    return main([str(a) for a in argv])


def copy_model(model_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    return target


def test_out_an_existing_file_is_refused_before_any_work(data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    out.write_text("keep")
    with pytest.raises(SystemExit) as exited:
        run("next-visit", "--model", model_dir, "--data", data_dir, "--out", out)
    assert exited.value.code == 2
    one_line_error(capsys, "is an existing file")
    assert out.read_text() == "keep"
    with pytest.raises(SystemExit) as exited:   # nor into the DATA_DIR it reads
        run("next-visit", "--model", "baseline:history", "--data", data_dir, "--out", data_dir)
    assert exited.value.code == 2
    one_line_error(capsys, "is the --data input")


def test_truncated_safetensors_is_one_line(data_dir, model_dir, tmp_path, capsys):
    broken = copy_model(model_dir, tmp_path)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size * 2 // 3])
    assert run("next-visit", "--model", broken, "--data", data_dir, "--out", tmp_path / "out") == 1
    one_line_error(capsys, "model.safetensors: truncated")
    assert not (tmp_path / "out").exists()


def test_config_num_experts_disagreeing_with_the_weights_is_one_line(data_dir, model_dir, tmp_path, capsys):
    edited = copy_model(model_dir, tmp_path)
    config = json.loads((edited / "config.json").read_text())
    config["num_experts"] = config["num_experts"] * 2
    (edited / "config.json").write_text(json.dumps(config))
    assert run("routing", "--model", edited, "--data", data_dir, "--out", tmp_path / "out") == 1
    one_line_error(capsys, "does not match", "config.json", "num_experts")


def test_without_tokenizer_files_the_export_hash_is_compared(data_dir, model_dir, tmp_path, capsys):
    bare = copy_model(model_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    tokenizer = build_tokenizer()
    (bare / EXPORT_INFO_FILE).write_text(json.dumps({"vocab_size": len(tokenizer),
                                                     "tokenizer_vocab_sha256": vocabulary_hash(tokenizer.get_vocab())}))
    out = tmp_path / "ok"
    assert run("next-visit", "--model", bare, "--data", data_dir, "--out", out, "--k", "1", "--bootstrap", "10",
               "--step-limit", "4") == 0
    capsys.readouterr()

    other = tmp_path / "other_data"
    shutil.copytree(data_dir, other)
    swapped = build_tokenizer()
    vocab = swapped.get_vocab()
    a, b = sorted(t for t in vocab if t.startswith("DX:") and t != "DX:<unk>")[:2]
    swapped_vocab = {**vocab, a: vocab[b], b: vocab[a]}    # same size, two codes trade ids
    assert len(swapped_vocab) == len(vocab)
    tokenizer_file = other / "tokenizer" / "tokenizer.json"
    spec = json.loads(tokenizer_file.read_text())
    spec["model"]["vocab"] = swapped_vocab
    tokenizer_file.write_text(json.dumps(spec))
    assert run("next-visit", "--model", bare, "--data", other, "--out", tmp_path / "no") == 1
    one_line_error(capsys, "trained on another vocabulary", EXPORT_INFO_FILE)
    assert not (tmp_path / "no").exists()


def test_without_tokenizer_files_nor_export_record_a_size_mismatch_is_refused(data_dir, model_dir, tmp_path,
                                                                              capsys):
    bare = copy_model(model_dir, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    config = json.loads((bare / "config.json").read_text())
    other = tmp_path / "other_data"
    shutil.copytree(data_dir, other)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["DX:Z999"])
    tokenizer.save_pretrained(str(other / "tokenizer"))
    assert len(tokenizer) > config["vocab_size"]
    assert run("next-visit", "--model", bare, "--data", other, "--out", tmp_path / "no") == 1
    one_line_error(capsys, "prepare the data with the model's vocabulary")
