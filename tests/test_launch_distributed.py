"""Real DeepSpeed on CPU with two ranks (`deepspeed --num_gpus 2 launch/train.py`), on the real MIMIC-IV demo
prepared by `sparseehr prepare`.

Runs (each a subprocess with a timeout and a free port):
  A: ZeRO-1, ep=1          B: ZeRO-2, ep=2 (ds_configs/zero2_ep.json)
  D: B's settings, SIGKILLed after its first checkpoint, then --resume
  exports of A and B, loaded back with --init-from at the OTHER ep size (--eval-only)
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch_helpers import REPO_ROOT, deepspeed_command, read_jsonl, run_deepspeed, subprocess_env
from sparseehr.data_pipeline import schema

pytestmark = pytest.mark.slow

STEPS = 20
COMMON = ["--preset", "tiny", "--max-steps", str(STEPS), "--eval-interval", "10", "--ckpt-interval", "5",
          "--keep-last", "2", "--log-interval", "1"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def demo_datadir(tmp_path_factory, mimic_demo_hosp):
    from sparseehr.data_pipeline.cli import main as prepare

    out = tmp_path_factory.mktemp("launch_dist") / "data"
    assert prepare(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--max-len", "128"]) == 0
    return out


def train_args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), *COMMON, *extra]  # a repeated flag: the later one wins


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def runs(demo_datadir, tmp_path_factory):
    root = tmp_path_factory.mktemp("launch_runs")
    run_a, run_b = root / "A", root / "B"
    check(run_deepspeed(2, train_args(demo_datadir, run_a, "--deepspeed", "zero1.json"), TIMEOUT))
    check(run_deepspeed(2, train_args(demo_datadir, run_b, "--deepspeed", "zero2_ep.json"), TIMEOUT))
    return {"root": root, "A": run_a, "B": run_b, "data": demo_datadir}


def metrics(run_dir, torn_tail_ok=False):
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl", torn_tail_ok) if "loss" in r}


def test_ep1_and_ep2_agree_on_loss_and_grad_norm(runs):
    a, b = metrics(runs["A"]), metrics(runs["B"])
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    # Step 1: same seed -> same full model (ep=2 ranks keep their slice of it), same batch, same maths. Only the
    # summation order differs (all-to-all, ZeRO-1 vs ZeRO-2 reduction): tolerance rel 1e-5.
    assert b[1]["loss"] == pytest.approx(a[1]["loss"], rel=1e-5)
    assert b[1]["lm_loss"] == pytest.approx(a[1]["lm_loss"], rel=1e-5)
    assert b[1]["grad_norm"] == pytest.approx(a[1]["grad_norm"], rel=1e-5)
    # Later steps compound rounding through AdamW; they must still track closely.
    for step in range(2, STEPS + 1):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=2e-3), step
    # The copy probe (launch/probe.py) runs on both ranks under DP and under ep=2 (all-to-all in its forwards) and
    # sums their counts: the two nearly identical models give nearly the same recall.
    for step in (10, STEPS):
        for key in ("copy_r10_common", "copy_r10_all", "new_r10"):
            assert 0.0 <= a[step][key] <= 1.0 and abs(a[step][key] - b[step][key]) <= 0.05, (step, key)


@pytest.mark.parametrize("name", ["A", "B"])
def test_zero1_and_zero2_train_log_and_checkpoint(runs, name):
    run = runs[name]
    records = metrics(run)
    first, last = records[1], records[STEPS]
    assert last["loss"] < first["loss"] - 0.3  # learning, not noise (first ~ln(vocab) = 5.2)
    assert records[STEPS]["val_loss"] < records[10]["val_loss"]
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]), rel=1e-9)
    for record in records.values():
        assert len(record["expert_load"]) == 1 and len(record["expert_load"][0]) == 4  # tiny: 1 MoE layer, 4 experts
        assert sum(record["expert_load"][0]) == pytest.approx(1.0)
        assert record["expert_load_std"] >= 0 and record["tokens_per_s"] > 0 and 0 < record["mfu"] < 1
    # cosine schedule with warmup 2: step 1 at lr/2, peak at step 2..3, floor 0.1 * lr approached at the end
    assert records[1]["lr"] == pytest.approx(records[3]["lr"] / 2)
    assert records[STEPS]["lr"] < 0.15 * records[3]["lr"]
    # keep-last 2 of the checkpoints at 5, 10, 15, 20; `latest` names the final one.
    assert sorted(p.name for p in run.glob("global_step*")) == ["global_step15", "global_step20"]
    assert (run / "latest").read_text().strip() == "global_step20"
    tag = run / "global_step20"
    assert (tag / "mp_rank_00_model_states.pt").is_file()
    assert sorted(p.name for p in tag.glob("layer_0_expert_*_mp_rank_00_model_states.pt")) == [
        f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)]
    assert sorted(p.name for p in tag.glob("train_state_rank*.pt")) == ["train_state_rank0.pt",
                                                                        "train_state_rank1.pt"]


def test_sigkill_then_resume_reproduces_uninterrupted_losses(runs):
    run_d = runs["root"] / "D"
    args = train_args(runs["data"], run_d, "--deepspeed", "zero2_ep.json")
    proc = subprocess.Popen(deepspeed_command(2, args), env=subprocess_env(), cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_d / "latest").is_file():  # first complete checkpoint (step 5): kill the whole job now
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = max(metrics(run_d, torn_tail_ok=True))
    resumed_from = int((run_d / "latest").read_text().strip().removeprefix("global_step"))
    assert resumed_from < STEPS and killed_at < STEPS, "the run finished before it could be killed"
    # What a kill in the middle of an append leaves (whether this one did depends on timing): a record cut short.
    with (run_d / "metrics.jsonl").open("a") as handle:
        handle.write('{"aux_loss": 1.00')

    result = run_deepspeed(2, args + ["--resume"], TIMEOUT)
    check(result)
    assert "metrics.jsonl line" in result.stderr and "torn last record" in result.stderr
    b, d = metrics(runs["B"]), metrics(run_d)
    assert sorted(d) == list(range(1, STEPS + 1))  # records after the checkpoint were replaced, not duplicated
    for step in range(resumed_from + 1, STEPS + 1):
        # Same model, optimizer, scheduler, RNG and data position: identical arithmetic, so exact up to 1e-6.
        assert d[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6), step
        assert d[step]["lr"] == pytest.approx(b[step]["lr"], abs=1e-12), step
    assert d[STEPS]["val_loss"] == pytest.approx(b[STEPS]["val_loss"], abs=1e-6)


def hf_validation_loss(hf_dir, data_dir) -> float:
    """Validation loss of an exported model through AutoModelForCausalLM, packed like the trainer packs, computed
    here from the logits (log-softmax of the logit at t picked at the label at t + 1), not by the trainer's loss."""
    import sparseehr  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM

    from sparseehr.launch.data import all_validation_rows, load_data_tokenizer, load_windows_split

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    assert model.config.expert_parallel_size == 1
    val = load_windows_split(data_dir, schema.SPLIT_VALIDATION)
    batch = all_validation_rows(val, 128, load_data_tokenizer(data_dir).pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    total, count = 0.0, 0
    for row, ids in enumerate(batch["labels"][:, 1:].tolist()):
        for t, label in enumerate(ids):
            if label >= 0:   # -100: a window's first token, or padding
                total -= log_probs[row, t, label].item()
                count += 1
    return total / count


def eval_only_val_loss(run_dir) -> float:
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("eval_only")]
    assert len(records) == 1
    return records[0]["val_loss"]


def test_export_from_ep2_reproduces_validation_loss_and_loads_at_ep1(runs):
    from sparseehr.launch.export import main as export

    hf_dir = runs["root"] / "hf_B"
    assert export(["--run", str(runs["B"]), "--out", str(hf_dir)]) == 0
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "tokenizer.json").is_file()
    engine_val = metrics(runs["B"])[STEPS]["val_loss"]
    assert hf_validation_loss(hf_dir, runs["data"]) == pytest.approx(engine_val, abs=1e-5)

    # Back into a (one-process, ep=1) training set-up: `sparseehr train --init-from`, no launcher.
    run_e = runs["root"] / "E1"
    result = subprocess.run([sys.executable, "-m", "sparseehr", "train", "--init-from", str(hf_dir), "--eval-only",
                             *train_args(runs["data"], run_e)], env=subprocess_env(), capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    check(result)
    assert eval_only_val_loss(run_e) == pytest.approx(engine_val, abs=1e-5)


def test_export_from_ep1_loads_into_ep2_training_setup(runs):
    from sparseehr.launch.export import main as export

    hf_dir = runs["root"] / "hf_A"
    assert export(["--run", str(runs["A"]), "--out", str(hf_dir)]) == 0
    run_e = runs["root"] / "E2"
    check(run_deepspeed(2, ["--init-from", str(hf_dir), "--eval-only", "--deepspeed", "zero2_ep.json",
                            *train_args(runs["data"], run_e)], TIMEOUT))
    assert eval_only_val_loss(run_e) == pytest.approx(metrics(runs["A"])[STEPS]["val_loss"], abs=1e-5)


def test_bad_configuration_fails_clearly_from_the_command_line(runs, tmp_path):
    zero3 = tmp_path / "zero3.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    result = subprocess.run([sys.executable, "-m", "sparseehr", "train", "--deepspeed", str(zero3),
                             *train_args(runs["data"], tmp_path / "run")], env=subprocess_env(),
                            capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert "ZeRO stage 3 cannot shard DeepSpeed's native MoE layers" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_sigterm_checkpoints_at_the_next_step_and_exits_cleanly(runs, tmp_path):
    run_dir = tmp_path / "term"
    command = [sys.executable, "-m", "sparseehr", "train", *train_args(runs["data"], run_dir),
               "--max-steps", "100000", "--ckpt-interval", "0", "--eval-interval", "0"]
    proc = subprocess.Popen(command, env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and len(read_jsonl(run_dir / "metrics.jsonl", True)) >= 2:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    last = max(metrics(run_dir))
    assert 2 <= last < 100000
    assert (run_dir / "latest").read_text().strip() == f"global_step{last}"  # saved at the step it stopped on
    assert f"SIGTERM: checkpointed at step {last}; continue with --resume" in stdout
