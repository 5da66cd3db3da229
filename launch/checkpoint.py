"""Checkpoints: DeepSpeed's engine state plus our per-rank state, a `latest` pointer written last, keep-last-N.

Layout of RUN_DIR (checkpoint part):
    latest                                   text: the newest COMPLETE tag (written after every rank finished)
    global_step{N}/mp_rank_00_model_states.pt            non-expert weights + DeepSpeed client state
    global_step{N}/layer_{L}_expert_{G}_mp_rank_00_model_states.pt   one per MoE layer L and global expert G
    global_step{N}/*optim_states.pt                      ZeRO optimizer partitions (one per rank)
    global_step{N}/train_state_rank{R}.pt                our per-rank state: RNG streams, data position, step
A run killed while saving leaves `latest` on the previous complete tag, so resume never reads a torn checkpoint.
"""
from __future__ import annotations

import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST_FILE = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")
MAIN_STATES_FILE = "mp_rank_00_model_states.pt"
EXPERT_FILE_PATTERN = re.compile(r"^layer_(\d+)_expert_(\d+)_mp_rank_00_model_states\.pt$")


def tag_for_step(step: int) -> str:
    return f"global_step{step}"


def rank_state_path(run_dir: str | Path, tag: str, rank: int) -> Path:
    return Path(run_dir) / tag / f"train_state_rank{rank}.pt"


def read_latest_tag(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / LATEST_FILE
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (Path(run_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} points to {tag!r}, which is not a directory in {run_dir}")
    return tag


def write_latest_tag(run_dir: str | Path, tag: str) -> None:
    path = Path(run_dir) / LATEST_FILE
    tmp = path.with_name(LATEST_FILE + ".tmp")
    tmp.write_text(tag + "\n")
    tmp.replace(path)  # atomic: readers see the old tag or the new one, never half a name


def list_tags(run_dir: str | Path) -> list[str]:
    """Checkpoint tags in RUN_DIR, oldest first."""
    found = []
    for child in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child.name))
    return [name for _, name in sorted(found)]


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[str]:
    """Delete all but the newest keep_last tags (never the one `latest` names). Returns the deleted tags."""
    latest = read_latest_tag(run_dir)
    tags = list_tags(run_dir)
    doomed = [t for t in tags[: max(len(tags) - keep_last, 0)] if t != latest]
    for tag in doomed:
        shutil.rmtree(Path(run_dir) / tag)
    return doomed


def capture_rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(engine, run_dir: str | Path, step: int, client_state: dict[str, Any],
                    rank_state: dict[str, Any], keep_last: int) -> str:
    """Collective: every rank must call it. Returns the tag."""
    import deepspeed.comm as dist

    tag = tag_for_step(step)
    engine.save_checkpoint(str(run_dir), tag=tag, client_state=client_state, save_latest=False)
    torch.save({**rank_state, "rng": capture_rng_state()}, rank_state_path(run_dir, tag, dist.get_rank()))
    dist.barrier()  # every rank's files are on disk before `latest` moves
    if dist.get_rank() == 0:
        write_latest_tag(run_dir, tag)
        prune_checkpoints(run_dir, keep_last)
    dist.barrier()
    return tag


def load_rank_state(run_dir: str | Path, tag: str, rank: int) -> dict[str, Any]:
    path = rank_state_path(run_dir, tag, rank)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the checkpoint {tag} was written by fewer ranks than this run "
                                f"has (resume needs the same world size)")
    return torch.load(path, map_location="cpu", weights_only=False)


class PreemptionFlag:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "PreemptionFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def raised(self) -> bool:
        return self.signal_name is not None
