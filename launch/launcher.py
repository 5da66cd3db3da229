"""Starting training processes: a free rendezvous port and the `deepspeed` launcher command line.

Every caller that starts a multi-rank job on this machine (the demo and the ablation through sparseehr/stages.py,
`sparseehr bench train`, the tests) builds its command here, so the launcher flags are spelled once.
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

TRAIN_MODULE = "sparseehr.launch.train"
TRAIN_SCRIPT = Path(__file__).with_name("train.py")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deepspeed_command(num_ranks: int, train_args: list[str], master_port: int | None = None,
                      as_script: bool = False) -> list[str]:
    """`deepspeed --num_gpus N --master_port P (launch/train.py | --module sparseehr.launch.train) ARGS` through
    this interpreter (so the job runs in the same environment as its caller).

    as_script runs launch/train.py by path, the form the docs show users; the module form needs no source tree.
    """
    entry = [str(TRAIN_SCRIPT)] if as_script else ["--module", TRAIN_MODULE]
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_ranks),
            "--master_port", str(master_port or free_port()), *entry, *train_args]
