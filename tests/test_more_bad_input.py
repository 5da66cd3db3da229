"""More faults a MIMIC-IV, MEDS or cluster user meets, each with a one-line answer and nothing of theirs lost."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from launch_helpers import REPO_ROOT, build_tiny_datadir, subprocess_env
from sparseehr.data_pipeline.artifacts import MEDS_INPUT, MIMIC_INPUT, artifact_kind

from eval_tiny_datadir import build_datadir, save_model_dir, train_tiny_model
from cli_helpers import one_line_error


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    data = build_datadir(tmp_path_factory.mktemp("eval_data"))
    return save_model_dir(train_tiny_model(data, steps=2), tmp_path_factory.mktemp("hf"))


def test_synth_overwrite_replaces_only_an_earlier_synthetic_tree(tmp_path, capsys):
    from sparseehr.data_pipeline.simulator.cli import main as synth

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    argv = ["--system", "mimic", "--patients", "20", "--seed", "1"]
    assert synth([*argv, "--out", str(mine), "--overwrite"]) == 2
    one_line_error(capsys, "is not raw MIMIC-IV hosp tables", "only replaces earlier raw MIMIC-IV hosp tables")
    assert (mine / "notes.txt").read_text() == "keep"
    raw = tmp_path / "raw"
    assert synth([*argv, "--out", str(raw)]) == 0
    assert artifact_kind(raw) == MIMIC_INPUT
    assert synth(["--system", "claims", "--patients", "20", "--seed", "1", "--out", str(raw), "--overwrite"]) == 2
    one_line_error(capsys, "holds raw MIMIC-IV hosp tables")            # a MEDS tree never replaces MIMIC tables
    assert synth([*argv, "--out", str(raw), "--overwrite"]) == 0
    claims = tmp_path / "claims"
    assert synth(["--system", "claims", "--patients", "20", "--seed", "1", "--out", str(claims)]) == 0
    assert artifact_kind(claims) == MEDS_INPUT


def test_demo_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    from sparseehr.demo import main as demo

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("months of work")
    (home / "data").mkdir()                               # a demo-like name does not make it a demo folder
    assert demo(["--out", str(home), "--overwrite"]) == 2
    one_line_error(capsys, "thesis.tex", "refusing to delete it")
    assert (home / "thesis.tex").read_text() == "months of work"


def test_vocab_from_a_missing_folder_is_named(tmp_path, mimic_demo_hosp, capsys):
    from sparseehr.data_pipeline.cli import main as prepare

    assert prepare(["--mimic", str(mimic_demo_hosp), "--vocab-from", str(tmp_path / "typo"),
                    "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    one_line_error(capsys, str(tmp_path / "typo"), "--vocab-from folder does not exist")


def test_eval_data_pointing_at_raw_mimic_is_a_usage_error(tmp_path, mimic_demo_hosp, capsys):
    from sparseehr.eval.cli import main as evaluate

    with pytest.raises(SystemExit) as exited:
        evaluate(["next-visit", "--model", "baseline:history", "--data", str(mimic_demo_hosp),
                  "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    one_line_error(capsys, "holds raw MIMIC-IV hosp tables, not a DATA_DIR")


def test_eval_with_a_corrupt_config_json_is_one_line(tmp_path, hf_dir, capsys):
    from sparseehr.eval.cli import main as evaluate

    broken = tmp_path / "hf"
    shutil.copytree(hf_dir, broken)
    (broken / "config.json").write_text('{"model_type": "sparseehr", "hidden_size": ')
    data = build_datadir(tmp_path / "data")
    assert evaluate(["next-visit", "--model", str(broken), "--data", str(data), "--out", str(tmp_path / "out")]) == 1
    one_line_error(capsys, "config.json: cannot build the model from it")


def test_train_init_from_a_truncated_or_wrong_folder_is_refused(tmp_path, hf_dir, capsys):
    from sparseehr.launch.train import main as train

    data = build_tiny_datadir(tmp_path / "data")
    broken = tmp_path / "hf"
    shutil.copytree(hf_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    common = ["--preset", "tiny", "--max-steps", "3", "--data", str(data), "--out", str(tmp_path / "run")]
    assert train([*common, "--init-from", str(broken)]) == 2
    one_line_error(capsys, "--init-from", "model.safetensors: truncated")
    assert train([*common, "--init-from", str(data)]) == 2
    one_line_error(capsys, "not an exported HF_DIR")
    assert not (tmp_path / "run").exists()


def test_export_run_pointing_at_a_data_dir_is_named(tmp_path, capsys):
    from sparseehr.launch.export import main as export

    data = build_tiny_datadir(tmp_path / "data")
    assert export(["--run", str(data), "--out", str(tmp_path / "hf")]) == 1
    one_line_error(capsys, "holds DATA_DIR, not a training RUN_DIR")


def test_slurm_script_outside_sbatch_says_so(tmp_path):
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(REPO_ROOT / "launch" / "slurm_train.sh"), "--preset", "tiny"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "submit this script with sbatch" in result.stderr
    assert not list(tmp_path.iterdir())  # no hostfile or run folder left behind


def test_slurm_script_without_deepspeed_on_path_says_so(tmp_path):
    env = {**subprocess_env(), "SLURM_JOB_NODELIST": "localhost", "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    os.chmod(shims / "scontrol", 0o755)
    env["PATH"] = f"{shims}:{env['PATH']}"
    result = subprocess.run(["bash", str(REPO_ROOT / "launch" / "slurm_train.sh"), "--preset", "tiny"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "deepspeed is not on PATH" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]
