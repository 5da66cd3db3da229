"""`sparseehr train` and `sparseehr export` never write over another artefact and never delete a user's folder.

Train refusals happen before any distributed set-up, so they run in-process; one real one-process run (2 steps)
gives export a RUN_DIR to protect.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from launch_helpers import REPO_ROOT, build_tiny_datadir, subprocess_env
from sparseehr.data_pipeline.artifacts import (EVAL_OUT_DIR, HF_DIR, RUN_DIR, RUN_MARKERS, EVAL_MARKERS,
                                               artifact_kind)
from sparseehr.launch.export import main as export
from sparseehr.launch.train import main as train

TRAIN = ["--preset", "tiny", "--max-steps", "2", "--ckpt-interval", "0", "--eval-interval", "0"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_datadir(tmp_path_factory.mktemp("robust") / "data")


@pytest.fixture(scope="module")
def run_dir(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("robust_run") / "run"
    result = subprocess.run([sys.executable, "-m", "sparseehr", "train", "--data", str(tiny_data), "--out", str(run),
                             *TRAIN], env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_the_recognised_file_names_are_the_ones_the_writers_write():
    from sparseehr.eval.report import REPORT_JSON, REPORT_MD
    from sparseehr.launch.rundir import LATEST_FILE, METRICS_FILE, tag_for_step
    from sparseehr.launch.rundir import TRAIN_CONFIG_FILE

    assert set(RUN_MARKERS) == {TRAIN_CONFIG_FILE, METRICS_FILE, LATEST_FILE}
    assert tag_for_step(7).startswith("global_step")
    assert set(EVAL_MARKERS) == {REPORT_JSON, REPORT_MD}


def test_train_out_refuses_a_data_dir_and_leaves_it_untouched(tiny_data, capsys):
    before = snapshot(tiny_data)
    assert train(["--data", str(tiny_data), "--out", str(tiny_data), *TRAIN]) == 2
    one_line_error(capsys, "is the --data input")
    other = tiny_data.parent / "other_data"
    if not other.exists():
        build_tiny_datadir(other, seed=1)
    other_before = snapshot(other)
    assert train(["--data", str(tiny_data), "--out", str(other), *TRAIN]) == 2
    one_line_error(capsys, "holds a DATA_DIR", "never writes into another kind of folder")
    assert snapshot(tiny_data) == before and snapshot(other) == other_before


def test_train_data_pointing_at_raw_mimic_is_a_usage_error(tmp_path, mimic_demo_hosp, capsys):
    assert train(["--data", str(mimic_demo_hosp), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    one_line_error(capsys, "holds raw MIMIC-IV hosp tables, not a DATA_DIR", "sparseehr prepare --mimic")
    assert train(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *TRAIN]) == 2
    one_line_error(capsys, "no such folder")
    assert not (tmp_path / "run").exists()


def test_export_refuses_the_run_folder_and_its_parents(run_dir, capsys):
    before = snapshot(run_dir)
    assert artifact_kind(run_dir) == RUN_DIR
    assert export(["--run", str(run_dir), "--out", str(run_dir)]) == 2
    one_line_error(capsys, "is the --run input")
    assert export(["--run", str(run_dir), "--out", str(run_dir), "--overwrite"]) == 2
    capsys.readouterr()
    assert export(["--run", str(run_dir), "--out", str(run_dir.parent), "--overwrite"]) == 2
    one_line_error(capsys, "contains the --run input")
    assert snapshot(run_dir) == before


def test_export_overwrite_replaces_only_a_previous_export(run_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    assert export(["--run", str(run_dir), "--out", str(mine)]) == 2
    one_line_error(capsys, "exists and is not empty", "--overwrite")
    assert export(["--run", str(run_dir), "--out", str(mine), "--overwrite"]) == 2
    one_line_error(capsys, "is not a HF_DIR", "only replaces a previous HF_DIR")
    assert (mine / "thesis.tex").read_text() == "months of work"

    report = tmp_path / "report"
    report.mkdir()
    for name in EVAL_MARKERS:
        (report / name).write_text("{}")
    assert artifact_kind(report) == EVAL_OUT_DIR
    assert export(["--run", str(run_dir), "--out", str(report), "--overwrite"]) == 2
    one_line_error(capsys, "holds an eval OUT_DIR")

    hf = tmp_path / "hf"
    assert export(["--run", str(run_dir), "--out", str(hf)]) == 0
    assert artifact_kind(hf) == HF_DIR
    (hf / "stale.bin").write_text("old")
    assert export(["--run", str(run_dir), "--out", str(hf)]) == 2
    capsys.readouterr()
    assert export(["--run", str(run_dir), "--out", str(hf), "--overwrite"]) == 0
    assert not (hf / "stale.bin").exists() and (hf / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine", "report"]  # no staging / .old-* left


def test_train_out_refuses_an_export_and_an_eval_folder(tiny_data, run_dir, tmp_path, capsys):
    hf = tmp_path / "hf"
    assert export(["--run", str(run_dir), "--out", str(hf)]) == 0
    capsys.readouterr()
    before = snapshot(hf)
    assert train(["--data", str(tiny_data), "--out", str(hf), *TRAIN]) == 2
    one_line_error(capsys, "holds a HF_DIR")
    assert snapshot(hf) == before


def test_resume_with_another_vocabulary_is_refused(tiny_data, run_dir, tmp_path, capsys):
    import json
    import shutil

    other = tmp_path / "other_data"
    shutil.copytree(tiny_data, other)
    spec_file = other / "tokenizer" / "tokenizer.json"
    spec = json.loads(spec_file.read_text())
    vocab = spec["model"]["vocab"]
    a, b = "DX:E119", "DX:I10"
    vocab[a], vocab[b] = vocab[b], vocab[a]          # same size, two diagnoses trade ids
    spec_file.write_text(json.dumps(spec))
    before = snapshot(run_dir)
    assert train(["--data", str(other), "--out", str(run_dir), "--resume", *TRAIN]) == 2
    one_line_error(capsys, "--resume", "trained on another vocabulary")
    assert snapshot(run_dir) == before
