"""Resumable, timed pipeline stages shared by `sparseehr demo` and `sparseehr ablate`.

A stage writes into its own output folder and, when it succeeds, a `.done` marker beside the folder's contents;
a re-run with `--resume` skips stages whose marker exists, so an interrupted 15-minute job restarts where it
stopped instead of from scratch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DONE_MARKER = ".done"


class StageError(RuntimeError):
    """A stage failed; the message names the stage and how to see why."""


@dataclass
class StageRunner:
    """Runs named stages in order, printing progress and recording wall time per stage."""

    root: Path
    resume: bool = False
    total: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    _index: int = 0

    def run(self, name: str, output: Path, action: Callable[[], int | None]) -> Path:
        """Run `action` unless `output` is already complete (with --resume); return `output`."""
        self._index += 1
        label = f"[{self._index}/{self.total}] {name}"
        marker = output / DONE_MARKER
        if self.resume and marker.is_file():
            print(f"{label}: done earlier ({output}), skipped", flush=True)
            self.timings[name] = json.loads(marker.read_text()).get("seconds", 0.0)
            return output
        print(f"{label} ...", flush=True)
        start = time.perf_counter()
        code = action()
        seconds = time.perf_counter() - start
        if code not in (0, None):
            raise StageError(f"stage {name!r} failed with exit code {code}; its output above says why")
        output.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"stage": name, "seconds": seconds}))
        self.timings[name] = seconds
        print(f"{label}: {seconds:.1f} s", flush=True)
        return output


def run_subprocess(argv: list[str], log_file: Path | None = None, append: bool = False) -> int:
    """Run a command with the current interpreter's environment, streaming its output (and teeing to a log).

    Training runs in its own process: DeepSpeed's distributed state and expert groups are process-global and
    must not leak into the evaluation that follows. append=True adds to an existing log (under a header line
    naming the attempt), so a resumed run keeps the log of the attempt that was killed.
    """
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    print("  $ " + " ".join(argv), flush=True)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                          bufsize=1) as proc:
        # Line-buffered: a sweep killed with SIGKILL keeps every line its trainer printed so far.
        log = open(log_file, "a" if append else "w", buffering=1) if log_file else None
        if log and append:
            log.write(f"===== {time.strftime('%Y-%m-%dT%H:%M:%S')} $ {' '.join(argv)}\n")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                if log:
                    log.write(line)
        finally:
            if log:
                log.close()
        return proc.wait()


def train_command(ranks: int, train_args: list[str]) -> list[str]:
    """`sparseehr train` in one process, or the `deepspeed` launcher for several ranks on this machine."""
    if ranks == 1:
        return [sys.executable, "-m", "sparseehr", "train", *train_args]
    from sparseehr.launch.launcher import deepspeed_command

    return deepspeed_command(ranks, train_args)


def read_json(path: Path) -> dict:
    with open(path) as handle:
        return json.load(handle)
