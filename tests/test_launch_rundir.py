"""The RUN_DIR contract under faults: a torn metrics.jsonl, `latest` under concurrent rewrite, and a training
process killed by the kernel in the middle of an append, then resumed."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import REPO_ROOT, build_tiny_datadir, read_jsonl, subprocess_env
from sparseehr.data_pipeline import schema
from sparseehr.launch import rundir

RECORDS = ['{"loss": 5.0, "step": 1}\n', '{"loss": 4.5, "step": 2}\n', '{"loss": 4.25, "step": 3}\n']


def test_torn_last_record_is_dropped_with_a_warning_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(RECORDS) + '{"loss": 4.1, "st')  # what a kill during the 4th append leaves
    with pytest.warns(rundir.TornRecordWarning, match=rf"{path} line 4: torn last record \(17 bytes"):
        assert rundir.read_metrics(tmp_path) == [{"loss": 5.0, "step": 1}, {"loss": 4.5, "step": 2},
                                                 {"loss": 4.25, "step": 3}]
    # A whole JSON object without its newline was not committed either (the newline is the commit marker).
    path.write_text("".join(RECORDS) + '{"loss": 4.1, "step": 4}')
    with pytest.warns(rundir.TornRecordWarning, match="line 4"):
        assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3]


def test_appends_after_a_torn_tail_start_on_a_fresh_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(RECORDS) + '{"loss": 4.1, "st')
    with pytest.warns(rundir.TornRecordWarning):
        assert rundir.repair_metrics(tmp_path) is True
    assert path.read_text() == "".join(RECORDS)
    rundir.append_metrics(tmp_path, {"step": 4, "loss": 4.0})
    assert path.read_text() == "".join(RECORDS) + '{"loss": 4.0, "step": 4}\n'
    assert rundir.repair_metrics(tmp_path) is False


def test_truncate_keeps_records_up_to_the_checkpoint_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(RECORDS) + '{"loss": 4.1, "st')
    with pytest.warns(rundir.TornRecordWarning):
        rundir.truncate_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(RECORDS[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left behind


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(RECORDS[0] + '{"loss": 4.5, "st\n' + RECORDS[2])
    with pytest.raises(rundir.RunDirError, match=r"metrics.jsonl line 2: not a JSON record"):
        rundir.read_metrics(tmp_path)


def test_latest_is_never_seen_half_written_while_another_process_rewrites_it(tmp_path):
    (tmp_path / "global_step0").mkdir()
    rundir.write_latest_tag(tmp_path, "global_step0")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom pathlib import Path\nfrom sparseehr.launch import rundir\n"
        "run = Path(sys.argv[1])\n"
        "for i in range(1, 1_000_000):\n"
        "    tag = 'global_step%d' % (10 ** (i % 6))\n"  # names of different lengths: a torn one would show
        "    (run / tag).mkdir(exist_ok=True)\n"
        "    rundir.write_latest_tag(run, tag)\n"), str(tmp_path)])
    seen = set()
    try:
        deadline = time.monotonic() + 120  # the writer's start-up (imports) first, then 2 s of rewrites
        while time.monotonic() < deadline:
            seen.add(rundir.read_latest_tag(tmp_path))  # raises on anything but a whole tag naming a folder
            if len(seen) == 2:
                deadline = min(deadline, time.monotonic() + 2.0)
    finally:
        writer.send_signal(signal.SIGKILL)  # killed mid-rewrite: `latest` still holds a whole tag
        writer.wait()
    assert len(seen) > 1, "the writer never got to rewrite `latest`"
    assert rundir.read_latest_tag(tmp_path) in {f"global_step{10 ** k}" for k in range(6)} | {"global_step0"}


def test_latest_holding_something_else_is_refused(tmp_path):
    (tmp_path / "latest").write_text("global_st")
    with pytest.raises(rundir.RunDirError, match="not a checkpoint tag"):
        rundir.read_latest_tag(tmp_path)
    (tmp_path / "latest").write_text("global_step7\n")
    with pytest.raises(rundir.RunDirError, match="not a directory"):
        rundir.read_latest_tag(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# A training process killed by the kernel in the middle of an append, then --resume.
# ----------------------------------------------------------------------------------------------------------------
STEPS = 12


def train_command(data, out, *extra):
    return ["-m", "sparseehr", "train", "--preset", "tiny", "--data", str(data), "--out", str(out),
            "--max-steps", str(STEPS), "--ckpt-interval", "4", "--keep-last", "5", "--eval-interval", "0",
            "--log-interval", "1", *extra]


def run_train(args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, *args], env={**subprocess_env(), "PYTHONDONTWRITEBYTECODE": "1"},
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, **kwargs)


@pytest.mark.slow
def test_kill_during_a_metrics_append_then_resume_continues_exactly(tmp_path):
    data = build_tiny_datadir(tmp_path / "data")
    uninterrupted, killed = tmp_path / "U", tmp_path / "K"
    result = run_train(train_command(data, uninterrupted))
    assert result.returncode == 0, result.stderr[-3000:]
    reference = {r["step"]: r for r in read_jsonl(uninterrupted / "metrics.jsonl")}
    assert sorted(reference) == list(range(1, STEPS + 1))
    # The rest of the contract, read back: the resolved settings and the engine dictionary actually used.
    saved = rundir.read_train_config(uninterrupted)
    import datasets

    longest = max(len(ids) for split in (schema.SPLIT_TRAIN, schema.SPLIT_VALIDATION)
                  for ids in datasets.load_from_disk(str(data / schema.DATA_WINDOWS_DIR / split))[schema.COL_INPUT_IDS])
    assert (saved.max_steps, saved.ep_size, saved.seq_len) == (STEPS, 1, longest)  # seq_len: the longest window
    assert rundir.read_ds_config(uninterrupted)["train_batch_size"] == 4 * 1 * 1  # micro-batch x accum x ranks
    assert rundir.load_model_config(uninterrupted).vocab_size >= len(rundir.load_tokenizer(uninterrupted))

    # K: the state a run killed after its step-4 checkpoint leaves (later saves never reached `latest`).
    shutil.copytree(uninterrupted, killed)
    rundir.write_latest_tag(killed, "global_step4")
    lines = (uninterrupted / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept_size = sum(len(line.encode()) for line in lines[:4])
    record_size = sum(len(line.encode()) for line in lines) / len(lines)

    # Resume with a file-size limit half-way into the second record it appends: the kernel makes that write(2)
    # short and kills the process (SIGXFSZ, default action; Python ignores it unless told otherwise) during the
    # append, with no handler or `finally` running, as abruptly as SIGKILL. The limit is set after joining the
    # one-rank job, whose set-up may build DeepSpeed's CPU communication op (files far larger than the limit).
    limit = int(kept_size + 1.5 * record_size)
    launcher = ("import resource, signal, sys\n"
                "from sparseehr.launch.engine import init_distributed\n"
                "from sparseehr.launch.train import main\n"
                "init_distributed()\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
                "sys.exit(main(sys.argv[2:]))\n")
    result = run_train(["-c", launcher, str(limit), *train_command(data, killed, "--resume")[3:]])
    assert result.returncode == -signal.SIGXFSZ, (result.returncode, result.stderr[-3000:])
    torn = (killed / "metrics.jsonl").read_bytes()
    assert len(torn) == limit and not torn.endswith(b"\n")       # killed inside the append of step 6
    assert [json.loads(line)["step"] for line in torn.decode().splitlines()[:-1]] == [1, 2, 3, 4, 5]
    assert rundir.list_tags(killed) == ["global_step4"]          # uncommitted 8 and 12 were removed on resume

    result = run_train(train_command(data, killed, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{killed / 'metrics.jsonl'} line 6: torn last record" in result.stderr
    resumed = read_jsonl(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # one record per step, the torn one gone
    for record in resumed[4:]:
        # Same weights, optimizer, schedule, RNG and data position as the uninterrupted run at step 4.
        assert record["loss"] == pytest.approx(reference[record["step"]]["loss"], abs=1e-6), record["step"]
        assert record["lr"] == reference[record["step"]]["lr"]
        assert record["tokens"] == reference[record["step"]]["tokens"]
    assert rundir.read_latest_tag(killed) == f"global_step{STEPS}"
