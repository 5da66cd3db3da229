"""The distribution maps the top-level folders under `sparseehr` — installed editable and not."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

MAPPED_FOLDERS = {"model": "sparseehr/model", "data_pipeline": "sparseehr/data_pipeline",
                  "launch": "sparseehr/launch", "eval": "sparseehr/eval", "sparseehr": "sparseehr",
                  "ds_configs": "sparseehr/ds_configs"}


def _source_files(repo_root: Path) -> set[str]:
    """Every .py (and ds_configs .json) file that must ship, as its path inside the wheel."""
    expected = set()
    for folder, target in MAPPED_FOLDERS.items():
        for path in (repo_root / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix == ".py" or (folder == "ds_configs" and path.suffix == ".json"):
                expected.add(f"{target}/{path.relative_to(repo_root / folder).as_posix()}")
    return expected


def test_every_subpackage_is_declared(repo_root):
    """A folder with __init__.py that setup.cfg does not list would silently vanish from a real install."""
    cfg = configparser.ConfigParser()
    cfg.read(repo_root / "setup.cfg")
    declared = set(cfg["options"]["packages"].split())
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    on_disk = set()
    for folder, target in MAPPED_FOLDERS.items():
        for init in (repo_root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(repo_root / folder)
            on_disk.add(".".join([target.replace("/", "."), *rel.parts]))
    assert on_disk <= declared, f"declare these in setup.cfg packages/package_dir: {sorted(on_disk - declared)}"
    for package in declared:
        assert package in mapping, f"{package} has no package_dir entry"


@pytest.mark.slow
def test_wheel_ships_every_file_and_imports_without_the_checkout(repo_root, tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo_root), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheel_dir)], check=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("sparseehr-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = _source_files(repo_root) - shipped
    assert not missing, f"not in the wheel: {sorted(missing)}"

    # A plain (non-editable) install into a target folder must import from there, not from the checkout.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import sparseehr, sparseehr.data_pipeline.schema as s, sparseehr.model, sparseehr.launch, "
            "sparseehr.eval; print(sparseehr.__file__); print(s.DX_PREFIX)")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(target)), out
    assert out[1] == "DX:"
