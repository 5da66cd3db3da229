"""The `sparseehr` dispatcher: every listed command resolves to a real main(argv)."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from sparseehr import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_resolves_to_a_callable(command):
    module_name, func_name = cli.COMMANDS[command][0].split(":")
    assert callable(getattr(importlib.import_module(module_name), func_name))


@pytest.mark.parametrize("bench", sorted(cli.BENCHES))
def test_every_bench_resolves_to_a_callable(bench):
    module_name, func_name = cli.BENCHES[bench].split(":")
    assert callable(getattr(importlib.import_module(module_name), func_name))


def test_unknown_command_exits_2_with_usage(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_runs_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "sparseehr", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "prepare" in done.stdout and "train" in done.stdout
