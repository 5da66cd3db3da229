"""Shared test settings: one CPU thread, DeepSpeed on CPU, paths to the shared real data."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# DeepSpeed JIT-builds its CPU shm op into TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions, shared by every
# environment of the user). Another environment with other DeepSpeed releases (the drift checks' .venv-latest /
# .venv-oldest) rebuilds it there and breaks the others' DeepSpeed starts, and a process killed mid-build leaves a
# lock every later run waits on forever; one folder per environment avoids both.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSEEHR_SHARED", REPO_ROOT.parent / "shared"))
MIMIC_DEMO_HOSP = SHARED / "data" / "mimic-iv-demo-2.2" / "hosp"
ICD_GEMS = SHARED / "data" / "icd-gems"
DEMO_TABLES = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents")


@pytest.fixture(scope="session")
def mimic_demo_hosp() -> Path:
    if not MIMIC_DEMO_HOSP.is_dir():
        pytest.fail(f"the real MIMIC-IV demo is expected at {MIMIC_DEMO_HOSP} (set SPARSEEHR_SHARED)")
    return MIMIC_DEMO_HOSP


@pytest.fixture
def hosp(tmp_path, mimic_demo_hosp) -> Path:
    """A private copy of the demo's five tables, to be broken one way per test."""
    folder = tmp_path / "hosp"
    folder.mkdir()
    for name in DEMO_TABLES:
        shutil.copy(mimic_demo_hosp / f"{name}.csv.gz", folder)
    return folder


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
