"""The checkpoint manager: save AND restore of everything a resumed run needs, and the invariants between them.

What a checkpoint holds (torchtitan's CheckpointManager registers the same kinds of state):
- the DeepSpeed engine: weights (non-expert + one file per expert), ZeRO optimizer partitions, LR scheduler;
- the run state (TrainState: step, tokens seen) and the run's invariants (world size, ep size, seq_len, batch,
  seed), in the engine's client state on rank 0's main file;
- per rank, in RUN_DIR/TAG/train_state_rank{R}.pt: the RNG streams (python, numpy, torch) and the data position.

Invariants (file names: launch/rundir.py):
- `latest` moves last: every rank's files are on disk (barrier) before rank 0 rewrites it atomically, so a run
  killed while saving resumes from the previous complete tag; nothing reads a tag except through `latest`.
- keep-last-N: after `latest` moved, older tags beyond N are deleted, never the one `latest` names.
- restore refuses a checkpoint written with other invariants (the message names the setting), restores every
  registered state, deletes tags newer than `latest` (an interrupted attempt's uncommitted saves, which would
  otherwise count towards keep-last-N) and cuts metrics.jsonl back to the restored step.
- SIGTERM / SIGINT only set a flag (PreemptionFlag); the loop votes on it across ranks and the manager saves at
  the next step boundary.
"""
from __future__ import annotations

import random
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sparseehr.launch import rundir

CLIENT_STATE_KEY = "sparseehr"   # our section of DeepSpeed's client state


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run (the message names the file or setting)."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """Where the run is: optimizer steps done and real tokens trained on (summed over ranks)."""

    step: int = 0
    tokens_seen: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "tokens_seen": self.tokens_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])


class RNGState:
    """The process-global random streams training draws from (router noise, DeepSpeed's token selection)."""

    def state_dict(self) -> dict[str, Any]:
        return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[str]:
    """Delete all but the newest keep_last tags (never the one `latest` names). Returns the deleted tags."""
    latest = rundir.read_latest_tag(run_dir)
    tags = rundir.list_tags(run_dir)
    doomed = [t for t in tags[: max(len(tags) - keep_last, 0)] if t != latest]
    for tag in doomed:
        shutil.rmtree(rundir.tag_dir(run_dir, tag))
    return doomed


def drop_uncommitted_tags(run_dir: str | Path, latest: str) -> list[str]:
    """Delete tags newer than `latest`: saves an interrupted attempt never committed (possibly torn)."""
    newest = rundir.step_of_tag(latest)
    doomed = [t for t in rundir.list_tags(run_dir) if rundir.step_of_tag(t) > newest]
    for tag in doomed:
        shutil.rmtree(rundir.tag_dir(run_dir, tag))
    return doomed


class PreemptionFlag:
    """SIGTERM / SIGINT set a flag (a context manager installs and removes the handlers); the loop checkpoints at
    the next step boundary and exits cleanly."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionFlag":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def raised(self) -> bool:
        return self.signal_name is not None


class CheckpointManager:
    """Saves and restores one run's checkpoints in RUN_DIR (collective: every rank calls save and load).

    Args:
        run_dir: RUN_DIR.
        engine: the DeepSpeed engine (model, optimizer and scheduler state are its files).
        train_state: the run state, saved in the client state and restored into this object.
        rank_states: per-rank Stateful objects by name (e.g. {"data_position": loader, "rng": RNGState()}).
        invariants: settings a resumed run must share with the writer; `may_change` names those that may differ
            (e.g. total_steps, when --max-steps is raised on resume).
        rank: this process's global rank.
        keep_last / interval: keep-last-N, and the save interval in steps (0: only at the end or on preemption).
    """

    def __init__(self, run_dir: str | Path, engine, train_state: TrainState, rank_states: dict[str, Stateful],
                 invariants: dict[str, Any], rank: int, keep_last: int, interval: int,
                 may_change: tuple[str, ...] = ("total_steps",)) -> None:
        self.run_dir = Path(run_dir)
        self.engine = engine
        self.train_state = train_state
        self.rank_states = rank_states
        self.invariants = invariants
        self.may_change = may_change
        self.rank = rank
        self.keep_last = keep_last
        self.interval = interval
        self.preemption = PreemptionFlag()

    # ---- save ------------------------------------------------------------------------------------------------
    def should_save(self, step: int, last_step: int, preempted: bool) -> bool:
        return preempted or step == last_step or bool(self.interval and step % self.interval == 0)

    def save(self) -> str:
        """Checkpoint the current step; returns the tag once `latest` names it."""
        import deepspeed.comm as dist

        step = self.train_state.step
        tag = rundir.tag_for_step(step)
        client_state = {CLIENT_STATE_KEY: {**self.train_state.state_dict(), **self.invariants}}
        self.engine.save_checkpoint(str(self.run_dir), tag=tag, client_state=client_state, save_latest=False)
        rank_state = {"step": step, **{name: obj.state_dict() for name, obj in self.rank_states.items()}}
        torch.save(rank_state, rundir.rank_state_path(self.run_dir, tag, self.rank))
        dist.barrier()  # every rank's files are on disk before `latest` moves
        if self.rank == 0:
            rundir.write_latest_tag(self.run_dir, tag)
            prune_checkpoints(self.run_dir, self.keep_last)
        dist.barrier()
        return tag

    # ---- restore ---------------------------------------------------------------------------------------------
    def load(self, tag: str, eval_only: bool = False) -> None:
        """Restore engine, run state, RNG and data position. eval_only restores the weights without optimizer and
        scheduler, and leaves any newer (uncommitted) tags alone since nothing will overwrite them."""
        import deepspeed.comm as dist

        saved = self._saved_run_state(tag)
        self.engine.load_checkpoint(str(self.run_dir), tag=tag, load_optimizer_states=not eval_only,
                                    load_lr_scheduler_states=not eval_only)
        rank_state = self._rank_state(tag)
        if int(rank_state["step"]) != int(saved["step"]):
            raise CheckpointError(f"{rundir.rank_state_path(self.run_dir, tag, self.rank)}: step "
                                  f"{rank_state['step']}, but the engine checkpoint is at step {saved['step']}")
        for name, obj in self.rank_states.items():
            if name not in rank_state:
                raise CheckpointError(f"{rundir.rank_state_path(self.run_dir, tag, self.rank)}: no {name!r} state")
            obj.load_state_dict(rank_state[name])
        self.train_state.load_state_dict(saved)
        if self.rank == 0 and not eval_only:
            for dropped in drop_uncommitted_tags(self.run_dir, tag):
                print(f"[sparseehr] removed {dropped}: saved after {tag} by the interrupted attempt, never "
                      f"committed to `latest`", flush=True)
        if self.rank == 0:
            rundir.truncate_metrics(self.run_dir, self.train_state.step)
        dist.barrier()

    def _saved_run_state(self, tag: str) -> dict[str, Any]:
        # Read before the engine loads, so a mismatch is a clear message rather than a DeepSpeed shape error.
        path = rundir.tag_dir(self.run_dir, tag) / rundir.MAIN_STATES_FILE
        saved = torch.load(path, map_location="cpu", weights_only=False).get(CLIENT_STATE_KEY)
        if saved is None:
            raise CheckpointError(f"{path}: not written by sparseehr train (no '{CLIENT_STATE_KEY}' client state)")
        for key, value in self.invariants.items():
            if key in self.may_change or key not in saved or saved[key] == value:
                continue
            advice = (" (optimizer state does not survive an ep change: `sparseehr export` the run and start a new "
                      "one with --init-from)") if key == "ep_size" else ""
            raise CheckpointError(f"cannot resume {path.parent}: it was written with {key}={saved[key]}, this run "
                                  f"has {key}={value}{advice}")
        return saved

    def _rank_state(self, tag: str) -> dict[str, Any]:
        path = rundir.rank_state_path(self.run_dir, tag, self.rank)
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the checkpoint {tag} was written by fewer ranks than this run "
                                  f"has (resume needs the same world size)")
        return torch.load(path, map_location="cpu", weights_only=False)
