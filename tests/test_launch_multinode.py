"""Multi-node on one machine: two `deepspeed --hostfile F --no_ssh --node_rank 0|1` launchers (one per "node")
form one 2-rank ep=2 job; and launch/slurm_train.sh itself runs, with `srun` and `scontrol` replaced by small
scripts on PATH that start the two node ranks here (so the script users submit is executed, not only parsed).

Independent expectation: the two-node job has the same world (2 ranks, ep=2) as `deepspeed --num_gpus 2`, so its
losses must equal that single-node job's step for step; its export must reproduce its validation loss.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch_helpers import REPO_ROOT, build_tiny_datadir, read_jsonl, run_deepspeed, subprocess_env

from sparseehr.launch.launcher import free_port
from sparseehr.data_pipeline import schema

pytestmark = pytest.mark.slow

STEPS = 6
TIMEOUT = 600   # per launcher call; a loaded 2-core machine needs minutes for two ranks
COMMON = ["--preset", "tiny", "--max-steps", str(STEPS), "--eval-interval", "3", "--ckpt-interval", "3",
          "--log-interval", "1", "--deepspeed", "zero2_ep.json"]
NODES = ("localhost", "127.0.0.1")   # two names for this machine: a hostfile may not list one host twice


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_datadir(tmp_path_factory.mktemp("multinode") / "data")


def metrics(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r}


def check(result, label: str) -> None:
    assert result.returncode == 0, f"{label}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def two_node_job(data: Path, run: Path, hostfile: Path) -> list[subprocess.CompletedProcess]:
    hostfile.write_text("".join(f"{host} slots=1\n" for host in NODES))
    port = free_port()
    procs = []
    for node_rank in range(len(NODES)):
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   str(REPO_ROOT / "launch" / "train.py"), "--data", str(data), "--out", str(run), *COMMON]
        procs.append(subprocess.Popen(command, env=subprocess_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def hf_validation_loss(hf_dir: Path, data_dir: Path, seq_len: int) -> float:
    import sparseehr  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForCausalLM

    from sparseehr.launch.data import all_validation_rows, load_data_tokenizer, load_windows_split
    from sparseehr.model.loss import next_token_nll

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    batch = all_validation_rows(load_windows_split(data_dir, schema.SPLIT_VALIDATION), seq_len,
                                load_data_tokenizer(data_dir).pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    nll, count = next_token_nll(logits, batch["labels"])
    return float(nll) / int(count)


def assert_two_rank_ep2_run(run: Path) -> None:
    records = metrics(run)
    assert sorted(records) == list(range(1, STEPS + 1))
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["ep_size"] == 2
    tag = run / f"global_step{STEPS}"
    assert (run / "latest").read_text().strip() == tag.name
    # one train state per rank (two ranks), and every expert file of the single MoE layer of `tiny`
    assert sorted(p.name for p in tag.glob("train_state_rank*.pt")) == ["train_state_rank0.pt", "train_state_rank1.pt"]
    assert len(list(tag.glob("layer_0_expert_*_mp_rank_00_model_states.pt"))) == 4


def test_two_deepspeed_launchers_form_one_ep2_job_and_export_reproduces_val_loss(tiny_data, tmp_path):
    from sparseehr.launch.export import main as export

    run = tmp_path / "two_nodes"
    for node_rank, result in enumerate(two_node_job(tiny_data, run, tmp_path / "hostfile")):
        check(result, f"node {node_rank}")
    assert_two_rank_ep2_run(run)

    single = tmp_path / "one_node"
    check(run_deepspeed(2, ["--data", str(tiny_data), "--out", str(single), *COMMON], TIMEOUT), "num_gpus 2")
    two, one = metrics(run), metrics(single)
    for step in range(1, STEPS + 1):  # same world, same seed, same data: the same arithmetic
        assert two[step]["loss"] == pytest.approx(one[step]["loss"], abs=1e-6), step
    assert two[STEPS]["val_loss"] == pytest.approx(one[STEPS]["val_loss"], abs=1e-6)

    hf_dir = tmp_path / "hf"
    assert export(["--run", str(run), "--out", str(hf_dir)]) == 0
    seq_len = json.loads((run / "train_config.json").read_text())["seq_len"]
    assert hf_validation_loss(hf_dir, tiny_data, seq_len) == pytest.approx(two[STEPS]["val_loss"], abs=1e-5)


SRUN_SHIM = """#!/usr/bin/env bash
# Test stand-in for SLURM's srun: start the command once per node of SLURM_JOB_NODELIST, on this machine, with
# that node's SLURM_NODEID; fail when any node's command fails (what --kill-on-bad-exit asks for).
echo "srun $*" >> "$SHIM_LOG"
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
IFS=, read -ra nodes <<< "$SLURM_JOB_NODELIST"
pids=()
for i in "${!nodes[@]}"; do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURMD_NODENAME=${nodes[$i]} "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""
SCONTROL_SHIM = """#!/usr/bin/env bash
# Test stand-in for `scontrol show hostnames LIST` (a plain comma list here; no bracket ranges needed).
echo "scontrol $*" >> "$SHIM_LOG"
[[ "$1 $2" == "show hostnames" ]] || { echo "scontrol shim: unsupported: $*" >&2; exit 1; }
tr ',' '\\n' <<< "$3"
"""


def test_slurm_script_runs_two_node_ranks(tiny_data, tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN_SHIM), ("scontrol", SCONTROL_SHIM)):
        (shims / name).write_text(text)
        (shims / name).chmod((shims / name).stat().st_mode | stat.S_IEXEC)
    run = tmp_path / "slurm_run"
    env = subprocess_env()
    env.update(PATH=os.pathsep.join([str(shims), str(Path(sys.executable).parent), env["PATH"]]),
               SLURM_JOB_NODELIST=",".join(NODES), GPUS_PER_NODE="1", MASTER_PORT=str(free_port()),
               TMPDIR=str(tmp_path), SHIM_LOG=str(tmp_path / "shim.log"))
    env.pop("SPARSEEHR_TRAIN", None)  # the script must find launch/train.py through the installed package
    result = subprocess.run(["bash", str(REPO_ROOT / "launch" / "slurm_train.sh"), "--data", str(tiny_data),
                             "--out", str(run), *COMMON], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIMEOUT)
    check(result, "slurm_train.sh")
    calls = (tmp_path / "shim.log").read_text().splitlines()
    assert any(c.startswith("srun --kill-on-bad-exit=1") for c in calls), calls
    assert sum(c.startswith("scontrol show hostnames") for c in calls) == 2
    assert_two_rank_ep2_run(run)
    # the script always adds --resume: submitting it again (a requeue) continues the finished run, no new steps
    again = subprocess.run(["bash", str(REPO_ROOT / "launch" / "slurm_train.sh"), "--data", str(tiny_data),
                            "--out", str(run), *COMMON], env={**env, "MASTER_PORT": str(free_port())}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=TIMEOUT)
    check(again, "requeued slurm_train.sh")
    assert f"resumed global_step{STEPS}" in again.stdout + again.stderr
    assert sorted(metrics(run)) == list(range(1, STEPS + 1))
