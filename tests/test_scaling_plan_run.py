"""`sparseehr scaling plan` (shapes, FLOPs per token by hand, epochs refusal) and `run` (commands, resume after a
real kill with train.log kept, clinical utility equal to `sparseehr eval`'s, a 2-rank point through the deepspeed
launcher) on the launch tests' tiny DATA_DIR."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import REPO_ROOT, build_tiny_datadir, read_jsonl, subprocess_env
from sparseehr.scaling import plan as planmod
from sparseehr.scaling import run as runmod
from sparseehr.stages import run_subprocess


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_datadir(tmp_path_factory.mktemp("scaling") / "data", max_len=24)


def make_plan(tiny_data, out, *extra):
    argv = ["--data", str(tiny_data), "--out", str(out), "--micro-batch", "2", "--max-epochs", "1e6",
            "--min-steps", "5", "--utility-step-limit", "4", *extra]
    return planmod.main(argv), out / planmod.PLAN_FILE


def test_plan_flops_per_token_match_a_hand_count(tiny_data, tmp_path):
    rc, path = make_plan(tiny_data, tmp_path / "plan", "--budgets", "2e9", "--family", "hybrid", "--sizes", "7")
    assert rc == 0
    plan = json.loads(path.read_text())
    vocab, seq_len = plan["data"]["vocab_size"], plan["training"]["seq_len"]
    point = next(p for p in plan["points"] if (p["hidden_size"], p["num_hidden_layers"]) == (32, 2))
    # hybrid, hidden 32, 2 layers: block 0 dense (SwiGLU 96), block 1 MoE: router to 4 experts of 48, top-1, plus a
    # shared expert of 48. 2 heads of 16, 1 key-value head. Tied embeddings.
    h = 32
    attention = 2 * h * 32 + 2 * h * 16            # q, o: 32 wide; k, v: 16 wide
    dense_mlp = 3 * h * 96
    router, expert, shared = h * 4, 3 * h * 48, 3 * h * 48
    forward = 2 * (2 * attention + dense_mlp + router + expert + shared + vocab * h) + 2 * 2 * seq_len * 32 * 2
    assert point["flops_per_token"] == 3 * forward
    norms = 2 * (2 * h) + h
    assert point["params_active"] == 2 * attention + norms + dense_mlp + router + expert + shared
    assert point["params_total"] == point["params_active"] + 3 * expert + vocab * h
    assert point["tokens"] == int(2e9 // (3 * forward))
    assert point["model_overrides"]["first_k_dense_replace"] == 1 and point["model_overrides"]["num_experts"] == 4


def test_plan_picks_shapes_around_the_expected_optimum(tiny_data, tmp_path):
    rc, path = make_plan(tiny_data, tmp_path / "plan", "--budgets", "1e8", "1e12", "--family", "dense", "all-moe",
                         "--sizes", "4", "--tokens-per-param", "20")
    assert rc == 0
    plan = json.loads(path.read_text())
    for family in ("dense", "all-moe"):
        for budget in (1e8, 1e12):
            points = [p for p in plan["points"] if p["family"] == family and p["budget_flops"] == budget]
            ratios = [p["tokens"] / p["params_active"] for p in points]
            assert len(points) == 4 and ratios == sorted(ratios, reverse=True)  # distinct sizes, smallest first
            assert ratios[0] >= 20 >= ratios[-1] or points[0]["hidden_size"] == 8
    big = [p["params_active"] for p in plan["points"] if p["budget_flops"] == 1e12 and p["family"] == "dense"]
    small = [p["params_active"] for p in plan["points"] if p["budget_flops"] == 1e8 and p["family"] == "dense"]
    assert max(big) > max(small)  # more compute, larger shapes
    slurm = (tmp_path / "plan" / planmod.SLURM_FILE).read_text()
    assert f"#SBATCH --array=0-{len(plan['points']) - 1}" in slurm and "scaling run" in slurm


def test_plan_refuses_more_epochs_than_the_data_holds(tiny_data, tmp_path, capsys):
    argv = ["--data", str(tiny_data), "--out", str(tmp_path / "p"), "--budgets", "1e11", "--micro-batch", "2",
            "--min-steps", "5", "--max-epochs", "2", "--utility-step-limit", "4"]
    assert planmod.main(argv) == 2
    err = capsys.readouterr().err
    assert "epochs of" in err and "--max-epochs 2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_plan_keeps_utility_settings_and_refuses_a_rollout_longer_than_the_window(tiny_data, tmp_path, capsys):
    rc, path = make_plan(tiny_data, tmp_path / "plan", "--budgets", "2e9", "--sizes", "4", "--utility-patients", "5")
    assert rc == 0
    assert json.loads(path.read_text())["utility"] == {"patients": 5, "step_limit": 4, "batch_size": 16, "seed": 0}
    capsys.readouterr()
    rc, path = make_plan(tiny_data, tmp_path / "long", "--budgets", "2e9", "--sizes", "4", "--utility-step-limit", "22")
    err = capsys.readouterr().err
    assert rc == 2 and "--utility-step-limit 22 leaves no context in the 24-token window" in err
    assert not path.exists()
    rc, _ = make_plan(tiny_data, tmp_path / "none", "--budgets", "2e9", "--sizes", "4", "--utility-step-limit", "22",
                      "--utility-patients", "0")
    assert rc == 0  # nothing is scored, so the rollout length does not matter


def test_run_subprocess_appends_to_the_log_of_an_earlier_attempt(tmp_path):
    log = tmp_path / "train.log"
    for word in ("first", "second"):
        assert run_subprocess([sys.executable, "-c", f"print('{word} attempt')"], log, append=True) == 0
    lines = log.read_text().splitlines()
    assert [line for line in lines if "attempt" in line and not line.startswith("=====")] == \
        ["first attempt", "second attempt"]
    assert sum(line.startswith("===== ") for line in lines) == 2
    assert run_subprocess([sys.executable, "-c", "print('fresh')"], log) == 0  # the default still starts afresh
    assert log.read_text() == "fresh\n"


def test_print_commands_lists_deepspeed_lines(tiny_data, tmp_path, capsys):
    rc, _ = make_plan(tiny_data, tmp_path / "plan", "--budgets", "2e9", "--family", "hybrid", "--sizes", "4")
    assert rc == 0
    capsys.readouterr()
    assert runmod.main([str(tmp_path / "plan"), "--print-commands", "--ranks", "2", "--ep-size", "2"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("deepspeed")]
    assert len(lines) == 4
    assert all("--num_gpus 2 --module sparseehr.launch.train" in line and "--ep-size 2" in line and "--resume" in line
               for line in lines)
    assert runmod.main([str(tmp_path / "plan"), "--ranks", "3", "--ep-size", "2"]) == 2


def _run_cmd(plan_dir: Path) -> list[str]:
    return [sys.executable, "-m", "sparseehr", "scaling", "run", str(plan_dir), "--point", "0", "--point", "1"]


@pytest.mark.slow
def test_run_resumes_after_a_killed_point(tiny_data, tmp_path):
    plan_dir = tmp_path / "plan"
    rc, _ = make_plan(tiny_data, plan_dir, "--budgets", "1e8", "--family", "dense", "--sizes", "4",
                      "--ckpt-interval", "5")
    assert rc == 0
    plan = json.loads((plan_dir / planmod.PLAN_FILE).read_text())
    first, second = plan["points"][0]["id"], plan["points"][1]["id"]
    second_dir = plan_dir / planmod.RUNS_DIR / second
    proc = subprocess.Popen(_run_cmd(plan_dir), env=subprocess_env(), cwd=REPO_ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill the whole sweep (its trainer too) once point 0 is in runs.jsonl and point 1 has a checkpoint.
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if (second_dir / "latest").is_file() and (plan_dir / runmod.RUNS_FILE).is_file():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed mid-point"
    rows = read_jsonl(plan_dir / runmod.RUNS_FILE)
    assert [r["id"] for r in rows] == [first]
    killed_at = int((second_dir / "latest").read_text().strip().removeprefix("global_step"))
    first_metrics = (plan_dir / planmod.RUNS_DIR / first / "metrics.jsonl").read_bytes()

    done = subprocess.run(_run_cmd(plan_dir), env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 of 2 points finished earlier; 1 to run" in done.stdout
    assert f"resumed global_step{killed_at}" in done.stdout
    rows = read_jsonl(plan_dir / runmod.RUNS_FILE)
    assert [r["id"] for r in rows] == [first, second]
    assert (plan_dir / planmod.RUNS_DIR / first / "metrics.jsonl").read_bytes() == first_metrics  # not retrained
    log = (second_dir / runmod.TRAIN_LOG).read_text()  # both attempts' output, the killed one first
    assert log.count("===== ") == 2 and log.index("starting from step 0") < log.index(f"resumed global_step{killed_at}")
    steps = [r["step"] for r in read_jsonl(second_dir / "metrics.jsonl") if "tokens" in r]
    assert steps == sorted(set(steps)) and steps[-1] == rows[1]["steps"] > killed_at
    assert rows[1]["tokens"] >= plan["points"][1]["tokens"]
    assert rows[1]["flops"] == pytest.approx(rows[1]["tokens"] * plan["points"][1]["flops_per_token"])
    # A third run has nothing to do.
    again = subprocess.run(_run_cmd(plan_dir), env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "2 of 2 points finished earlier; 0 to run" in again.stdout


@pytest.mark.slow
def test_run_measures_the_utility_eval_reports_and_trains_a_point_on_two_ranks(tiny_data, tmp_path):
    """One hybrid point through the deepspeed launcher on 2 ranks with expert parallelism 2; its R@10/R@20 must be
    what `sparseehr eval next-visit` reports for the same checkpoint on the same validation patients."""
    plan_dir = tmp_path / "plan"
    rc, _ = make_plan(tiny_data, plan_dir, "--budgets", "1e8", "--family", "hybrid", "--sizes", "4",
                      "--utility-patients", "6", "--seed", "3")
    assert rc == 0
    done = subprocess.run([sys.executable, "-m", "sparseehr", "scaling", "run", str(plan_dir), "--point", "0",
                           "--ranks", "2", "--ep-size", "2"], env=subprocess_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [row] = read_jsonl(plan_dir / runmod.RUNS_FILE)
    run_dir = Path(row["run_dir"])
    assert "2 rank(s), ep=2" in (run_dir / runmod.TRAIN_LOG).read_text()
    assert list(run_dir.glob("global_step*/layer_0_expert_*_mp_rank_00_model_states.pt"))  # real expert files
    assert row["utility"]["n_patients"] == 6 and row["utility"]["split"] == "validation"
    assert (row["screening_auroc"] is None) == (not (row["utility"]["screening_cases"]
                                                      and row["utility"]["screening_controls"]))

    from sparseehr.eval.cli import main as eval_main
    from sparseehr.launch.export import export_run

    hf = export_run(run_dir, tmp_path / "hf")
    out = tmp_path / "eval"
    assert eval_main(["next-visit", "--model", str(hf), "--data", str(tiny_data), "--out", str(out), "--split",
                      "validation", "--max-patients", "6", "--seed", "3", "--step-limit", "4", "--k", "10", "20",
                      "--bootstrap", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n_instances"] == row["utility"]["n_instances"]
    assert row["recall_at_10"] == pytest.approx(report["recall_at_k"]["10"])
    assert row["recall_at_20"] == pytest.approx(report["recall_at_k"]["20"])
