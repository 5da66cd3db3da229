"""`sparseehr prepare` reads both synthetic systems (the contract between SIM and DATA)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest

from sparseehr.data_pipeline.schema import PREPARE_REPORT_FILE
from sparseehr.data_pipeline.simulator.cli import generate


@pytest.mark.slow
def test_prepare_reads_the_synthetic_mimic_system(tmp_path: Path) -> None:
    from sparseehr.data_pipeline.cli import main as prepare

    raw = generate("mimic", 300, seed=5, out=tmp_path / "mimic")
    assert prepare(["--mimic", str(raw / "hosp"), "--out", str(tmp_path / "data"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "data" / PREPARE_REPORT_FILE).read_text())
    admissions = pacsv.read_csv(raw / "hosp" / "admissions.csv.gz").num_rows
    assert report["patients"] == 300
    assert report["visits"] == admissions
    assert report["dx_unmapped"] == 0 and report["dx_icd9_rows"] > 0


@pytest.mark.slow
def test_prepare_reads_the_synthetic_claims_system(tmp_path: Path) -> None:
    from sparseehr.data_pipeline.cli import main as prepare

    raw = generate("claims", 300, seed=5, out=tmp_path / "claims")
    assert prepare(["--meds", str(raw), "--out", str(tmp_path / "data"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "data" / PREPARE_REPORT_FILE).read_text())
    events = pads.dataset(raw / "data", format="parquet").to_table().to_pandas()
    clinical_rows = events[events.code.str.startswith(("DIAGNOSIS//", "HCPCS//"))]
    visit_days = clinical_rows.groupby(["subject_id", "time"]).ngroups
    assert report["visits"] == visit_days          # one visit per subject and calendar day
    # an enrollee whose visits all went uncoded has no claim lines, hence no visit
    assert report["patients"] == clinical_rows.subject_id.nunique()
    assert report["patients"] + report["patients_without_visits"] == 300
