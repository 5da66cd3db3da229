"""The suite runs on the locked set: a green run must mean "green on requirements.lock", never "green on whatever
this machine happened to hold" (a cached older transformers once hid a release that broke every forward pass).

`SPARSEEHR_LOCK_FILE` points the check at another lock: the drift checks (`make test-latest` / `test-oldest`)
resolve one of their own and run the suite against it, so there too the check holds.
"""
from __future__ import annotations

import configparser
import os
import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: pinned version} of a `uv pip compile` / pip-tools lock file."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path}:{number}: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def lock_path() -> Path:
    return Path(os.environ.get("SPARSEEHR_LOCK_FILE", REPO_ROOT / "requirements.lock"))


def test_read_lock_parses_pins_and_rejects_ranges(tmp_path):
    good = tmp_path / "good.lock"
    good.write_text("# header\nTransformers==5.24.0\n    # via sparseehr\nPyYAML==6.0.4 ; python_version >= '3'\n")
    assert read_lock(good) == {"transformers": "5.24.0", "pyyaml": "6.0.4"}
    bad = tmp_path / "bad.lock"
    bad.write_text("numpy>=1.26\n")
    try:
        read_lock(bad)
    except AssertionError as error:
        assert "bad.lock:1" in str(error)
    else:
        raise AssertionError("a range in a lock file must be refused")


def test_installed_packages_are_the_locked_versions():
    lock = lock_path()
    pins = read_lock(lock)
    assert "torch" not in pins, f"{lock} pins torch; torch is TORCH_SPEC's (lock-overrides.txt keeps it out)"
    wrong = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            wrong.append(f"{name} {installed} (lock {pinned})")
    assert not wrong, (f"this environment differs from {lock}: {', '.join(wrong)}. "
                       f"Run `make setup` (it installs the lock into .venv) and test with `make test`.")


def test_lock_satisfies_setup_cfg_ranges():
    """A lock left stale after a setup.cfg edit would test versions users can no longer get (or miss a
    dependency): every install_requires and test extra must be pinned, inside its range."""
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    lines = (config["options"]["install_requires"] + "\n" + config["options.extras_require"]["test"]).splitlines()
    pins = read_lock(REPO_ROOT / "requirements.lock")
    problems = []
    for line in filter(None, (raw.strip() for raw in lines)):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        if name not in pins:
            problems.append(f"{name} is not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside setup.cfg's {requirement.specifier}")
    assert not problems, "; ".join(problems) + ": run `make lock`"
