"""Dependency drift check: build a separate environment on other releases than the lock's, run the suite there,
and print which packages moved and what failed.

  --mode latest  the newest release every setup.cfg range admits, and for transformers, deepspeed and datasets
                 the newest release beyond the range (what a user gets next month); catches a breaking release
                 before users meet it.
  --mode oldest  the oldest release each direct dependency's lower bound admits (uv's lowest-direct
                 resolution): proves the floors setup.cfg advertises.

Used by `make test-latest` / `make test-oldest`; standard library only (it runs with the project venv's python,
uv does the resolving). Exit status: the suite's, or 3 when the environment could not be resolved or built.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEYOND_RANGE = ("transformers", "deepspeed", "datasets")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def read_pins(text: str) -> dict[str, str]:
    """{normalised name: version} of every `name==version` line of a lock file's text."""
    matches = (PIN.match(line.strip()) for line in text.splitlines())
    return {re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2) for m in matches if m}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, text=True, **kwargs)


def newest_release(uv: str, name: str, python_version: str) -> str:
    """The newest release of `name` on the index, whatever our ranges say (uv resolves the bare name)."""
    done = run([uv, "pip", "compile", "-", "--no-deps", "--no-header", "--python-version", python_version],
               input=name + "\n", capture_output=True)
    pins = read_pins(done.stdout)
    if done.returncode or name not in pins:
        raise SystemExit(f"drift: could not find the newest {name}: {done.stderr.strip()[-500:]}")
    return pins[name]


def lock_python(lock: Path) -> str:
    match = re.search(r"--python-version (\d+\.\d+)", lock.read_text(encoding="utf-8"))
    return match.group(1) if match else "%d.%d" % sys.version_info[:2]


def resolve(args, work: Path, python_version: str) -> Path:
    """Write the drift lock for the mode; return its path."""
    overrides = work / "overrides.txt"
    lines = [(REPO / "lock-overrides.txt").read_text(encoding="utf-8")]
    if args.mode == "latest":
        for name in BEYOND_RANGE:
            version = newest_release(args.uv, name, python_version)
            lines.append(f"{name}=={version}\n")
            print(f"drift: newest {name} on the index: {version}")
    overrides.write_text("".join(lines), encoding="utf-8")
    out = work / "drift.lock"
    mode_flags = ["--upgrade"] if args.mode == "latest" else ["--resolution", "lowest-direct"]
    done = run([args.uv, "pip", "compile", str(REPO / "setup.cfg"), "--extra", "test", "--python-version",
                python_version, *mode_flags, "--override", str(overrides), "--output-file", str(out)],
               capture_output=True)
    if done.returncode:
        print(done.stderr[-3000:])
        raise SystemExit(3)
    return out


def print_moves(locked: dict[str, str], drifted: dict[str, str]) -> list[str]:
    moves = [f"  {name}: {locked.get(name, '-')} -> {drifted.get(name, '-')}"
             for name in sorted(set(locked) | set(drifted)) if locked.get(name) != drifted.get(name)]
    print(f"drift: {len(moves)} package(s) differ from the lock" + (":" if moves else ""))
    print("\n".join(moves))
    return moves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("latest", "oldest"), required=True)
    parser.add_argument("--torch-spec", default="torch==2.13.0")
    parser.add_argument("--uv", default="uv", help="the uv executable")
    parser.add_argument("--lock", default=str(REPO / "requirements.lock"))
    parser.add_argument("--venv", help="environment folder (default .venv-MODE); rebuilt from scratch")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)
    lock = Path(args.lock)
    venv = Path(args.venv or REPO / f".venv-{args.mode}")
    python_version = lock_python(lock)
    started = time.monotonic()

    if venv.exists():
        shutil.rmtree(venv)  # always a fresh environment: leftovers would hide a missing install step
    venv.mkdir(parents=True)
    drift_lock = resolve(args, venv, python_version)
    moves = print_moves(read_pins(lock.read_text(encoding="utf-8")),
                        read_pins(drift_lock.read_text(encoding="utf-8")))
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    steps = [[py, "-m", "pip", "install", "-q", *shlex.split(args.torch_spec)],
             [args.uv, "pip", "install", "-q", "--python", py, "-r", str(drift_lock)],
             [py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)]]
    for step in steps:
        if run(step).returncode:
            print(f"drift ({args.mode}): building the environment failed at: {shlex.join(step)}")
            return 3
    setup_s = time.monotonic() - started
    env = {"DS_ACCELERATOR": "cpu", "SPARSEEHR_LOCK_FILE": str(drift_lock)}
    # Stream the suite's output (it runs for minutes) and keep it for the summary and the log file.
    cmd = [py, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *args.pytest_args]
    print("+", shlex.join(cmd), flush=True)
    with subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as suite:
        output = []
        for line in suite.stdout:
            print(line, end="", flush=True)
            output.append(line.rstrip("\n"))
    (venv / "pytest.log").write_text("\n".join(output) + "\n", encoding="utf-8")
    failures = [line for line in output if line.startswith(("FAILED", "ERROR"))]
    summary = next((line for line in reversed(output) if line.strip()), "no output")
    print(f"\ndrift ({args.mode}) summary: environment built in {setup_s:.0f} s; "
          f"{len(moves)} package(s) moved against {lock.name}")
    print("\n".join(moves))
    print(f"suite: {summary}  (full log: {venv / 'pytest.log'})")
    for line in failures:
        print("  " + line)
    return suite.returncode


if __name__ == "__main__":
    raise SystemExit(main())
