"""The README's import table, enforced: import-linter's contracts in setup.cfg over the installed layout.

setup.cfg's package_dir maps top-level folders (model/, launch/, ...) into the one `sparseehr` package. import-linter
finds modules by walking the package's folder, which in this checkout holds only sparseehr/, so the test lays the
sources out as a wheel would (copies of the .py files under tmp/sparseehr/...) and lints that tree.
"""
from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_CFG = REPO_ROOT / "setup.cfg"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def installed_layout(out: Path) -> Path:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    for line in config["options"]["package_dir"].strip().splitlines():
        package, folder = (part.strip() for part in line.split("="))
        target = out.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (REPO_ROOT / folder).glob("*.py"):
            shutil.copy2(source, target / source.name)
    return out


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT, str(SETUP_CFG), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def test_every_import_contract_is_kept(tmp_path):
    result = lint(installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("data_pipeline/leak.py", "from sparseehr.model import presets\n",
     "sparseehr.data_pipeline is not allowed to import sparseehr.model"),
    ("eval/leak.py", "from sparseehr.launch import rundir\n",
     "sparseehr.eval is not allowed to import sparseehr.launch"),
    ("model/leak.py", "from sparseehr.data_pipeline import schema\n",
     "sparseehr.model is not allowed to import sparseehr.data_pipeline"),
    ("launch/leak.py", "from sparseehr import demo\n", "sparseehr.launch is not allowed to import sparseehr.demo"),
    ("launch/checkpoint.py", "from sparseehr.launch import loop\n", "No cycles are allowed in sparseehr.launch"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    tree = installed_layout(tmp_path)
    path = tree / "sparseehr" / module  # each of these folders is the package of the same name
    path.write_text((path.read_text() if path.exists() else "") + line)
    result = lint(tree)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout[-4000:]
