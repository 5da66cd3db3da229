"""The RUN_DIR contract: every file name a training run writes, and the only code that reads or writes them.

    train_config.json      the TrainConfig of the run (ep size and seq_len resolved)          write_/read_train_config
    ds_config.json         the dictionary handed to deepspeed.initialize                       write_/read_ds_config
    model_config/          SparseEHRConfig.save_pretrained of the model trained                save_/load_model_config
    tokenizer/             copy of DATA_DIR/tokenizer                                          save_/load_tokenizer
    metrics.jsonl          one JSON object per logged step, appended by rank 0                 append_/read_metrics
    latest                 text: the newest COMPLETE checkpoint tag                            write_/read_latest_tag
    global_step{N}/        one checkpoint (launch/checkpoint.py writes and restores it):
        mp_rank_00_model_states.pt                        non-expert weights + DeepSpeed client state
        layer_{L}_expert_{G}_mp_rank_00_model_states.pt   one per MoE layer L and global expert G
        *optim_states.pt                                  ZeRO optimizer partitions (one per rank)
        train_state_rank{R}.pt                            per-rank state: RNG streams, data position, step

What a kill can leave behind, and how each file survives it:
- JSON and text files (train_config.json, ds_config.json, latest) are written to a temporary file in the same folder
  and renamed over the old one (os.replace is atomic), so a reader sees the old content or the new, never half.
- metrics.jsonl is appended one record per write(2); a record is committed by its newline. A kill during an
  append (or a full disk) can leave a last line without one: readers drop it with a TornRecordWarning naming the
  file and line, and the next writer cuts it off before appending, so it never ends up mid-file.
- a checkpoint folder is only ever read through `latest`, which moves after every rank finished writing it.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

TRAIN_CONFIG_FILE = "train_config.json"
DS_CONFIG_FILE = "ds_config.json"
MODEL_CONFIG_DIR = "model_config"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
LATEST_FILE = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")
MAIN_STATES_FILE = "mp_rank_00_model_states.pt"   # DeepSpeed's name (one model-parallel rank)
EXPERT_FILE_PATTERN = re.compile(r"^layer_(\d+)_expert_(\d+)_mp_rank_00_model_states\.pt$")
RANK_STATE_FILE = "train_state_rank{rank}.pt"


class RunDirError(RuntimeError):
    """A RUN_DIR file that is missing or unreadable; the message names the file (and line)."""


class TornRecordWarning(UserWarning):
    """The last line of metrics.jsonl was cut by a kill during an append; it was ignored."""


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------
def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` so that no reader ever sees a partial file (temp file + fsync + os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, values: Any) -> None:
    write_text_atomic(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise RunDirError(f"{path}: missing; is {path.parent} a training RUN_DIR ({what})?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


# ----------------------------------------------------------------------------------------------------------
# Settings of the run
# ----------------------------------------------------------------------------------------------------------
def write_train_config(run_dir: str | Path, cfg) -> None:
    write_json_atomic(Path(run_dir) / TRAIN_CONFIG_FILE, cfg.to_dict())


def read_train_config(run_dir: str | Path):
    """The run's TrainConfig (validated; unknown fields are refused)."""
    from sparseehr.launch.config import TrainConfig

    path = Path(run_dir) / TRAIN_CONFIG_FILE
    return TrainConfig.from_dict(read_json(path, "no train_config.json"), str(path))


def write_ds_config(run_dir: str | Path, ds_config: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / DS_CONFIG_FILE, ds_config)


def read_ds_config(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / DS_CONFIG_FILE, "no ds_config.json")


def save_model_config(run_dir: str | Path, model_config) -> None:
    model_config.save_pretrained(str(Path(run_dir) / MODEL_CONFIG_DIR))


def load_model_config(run_dir: str | Path):
    """The SparseEHRConfig the run trained (RUN_DIR/model_config/config.json)."""
    from sparseehr.model import SparseEHRConfig

    path = Path(run_dir) / MODEL_CONFIG_DIR
    if not (path / "config.json").is_file():
        raise RunDirError(f"{path / 'config.json'}: missing; is {run_dir} a training RUN_DIR?")
    return SparseEHRConfig.from_pretrained(str(path))


def save_tokenizer(run_dir: str | Path, tokenizer) -> None:
    tokenizer.save_pretrained(str(Path(run_dir) / TOKENIZER_DIR))


def load_tokenizer(run_dir: str | Path, missing_ok: bool = False):
    """The copy of the data's tokenizer kept with the run (None when absent and missing_ok)."""
    path = Path(run_dir) / TOKENIZER_DIR
    if not path.is_dir():
        if missing_ok:
            return None
        raise RunDirError(f"{path}: missing; is {run_dir} a training RUN_DIR?")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def holds_training_run(run_dir: str | Path) -> bool:
    """Whether RUN_DIR already holds (part of) a run: a checkpoint or logged metrics."""
    return bool(list_tags(run_dir)) or (Path(run_dir) / METRICS_FILE).exists()


# ----------------------------------------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------------------------------------
def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def _parse_metrics(path: Path, data: bytes) -> tuple[list[dict[str, Any]], int]:
    """(committed records, byte length of the committed part). Only the last line may be torn."""
    committed = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:committed].decode("utf-8", errors="replace").split("\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path} line {number}: not a JSON record ({exc.msg}, column {exc.colno}); only a "
                              f"last line can be cut by a kill, so this file was edited or damaged") from exc
    if committed < len(data):
        number = data[:committed].count(b"\n") + 1
        warnings.warn(f"{path} line {number}: torn last record ({len(data) - committed} bytes without a newline, "
                      f"left by a kill during an append); ignored", TornRecordWarning, stacklevel=3)
    return records, committed


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every committed record of RUN_DIR/metrics.jsonl ([] when the file does not exist)."""
    path = metrics_path(run_dir)
    if not path.is_file():
        return []
    return _parse_metrics(path, path.read_bytes())[0]


def repair_metrics(run_dir: str | Path) -> bool:
    """Cut a torn last record off metrics.jsonl (with the warning) so appends start on a fresh line.
    Returns whether anything was cut."""
    path = metrics_path(run_dir)
    if not path.is_file():
        return False
    data = path.read_bytes()
    _, committed = _parse_metrics(path, data)
    if committed == len(data):
        return False
    write_text_atomic(path, data[:committed].decode("utf-8"))
    return True


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record as ONE write(2) of a whole line, so a kill leaves either all of it or a torn tail."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(metrics_path(run_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:  # a short write (full disk, file-size limit) continues where it stopped, or raises
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Keep only the records up to `step` (the checkpoint a run resumes from), so metrics.jsonl has one record
    per step; a torn last record goes too."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_text_atomic(metrics_path(run_dir), "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


# ----------------------------------------------------------------------------------------------------------
# Checkpoint tags and `latest`
# ----------------------------------------------------------------------------------------------------------
def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def step_of_tag(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise RunDirError(f"{tag!r} is not a checkpoint tag (expected global_step<N>)")
    return int(match.group(1))


def tag_dir(run_dir: str | Path, tag: str) -> Path:
    return Path(run_dir) / tag


def rank_state_path(run_dir: str | Path, tag: str, rank: int) -> Path:
    return tag_dir(run_dir, tag) / RANK_STATE_FILE.format(rank=rank)


def list_tags(run_dir: str | Path) -> list[str]:
    """Checkpoint folders in RUN_DIR, oldest first (complete or not: only `latest` says which is complete)."""
    found = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child.name))
    return [name for _, name in sorted(found)]


def read_latest_tag(run_dir: str | Path) -> str | None:
    """The newest complete checkpoint tag, or None when the run has none yet."""
    path = Path(run_dir) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not TAG_PATTERN.match(tag):
        raise RunDirError(f"{path}: holds {tag[:60]!r}, not a checkpoint tag (global_step<N>)")
    if not tag_dir(run_dir, tag).is_dir():
        raise RunDirError(f"{path} points to {tag!r}, which is not a directory in {run_dir}")
    return tag


def write_latest_tag(run_dir: str | Path, tag: str) -> None:
    step_of_tag(tag)
    write_text_atomic(Path(run_dir) / LATEST_FILE, tag + "\n")
