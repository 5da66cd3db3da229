"""Bad input: each case ends with a message naming file, column and row, a non-zero exit, and no DATA_DIR."""
from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline.cli import main



def _rewrite(folder, name, edit):
    path = folder / f"{name}.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    rows = edit(rows)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))


def _fails(tmp_path, capsys, argv, *expected):
    out = tmp_path / "out"
    code = main(argv + ["--out", str(out), "--no-progress"])
    message = capsys.readouterr().err
    assert code != 0
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left either
    return message


def test_truncated_gzip(tmp_path, capsys, hosp):
    path = hosp / "diagnoses_icd.csv.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "diagnoses_icd.csv.gz", "truncated", "row after line")


def test_missing_column(tmp_path, capsys, hosp):
    _rewrite(hosp, "admissions", lambda rows: [r[:2] + r[3:] for r in rows])   # drop admittime
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "admissions.csv.gz", "'admittime'", "row 1", "missing")


def test_missing_file(tmp_path, capsys, hosp):
    (hosp / "patients.csv.gz").unlink()
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "patients.csv.gz", "missing")


def test_unparsable_date(tmp_path, capsys, hosp):
    def edit(rows):
        rows[5][2] = "2196-13-45 25:00:00"   # data row 5 = CSV line 6
        return rows
    _rewrite(hosp, "admissions", edit)
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "admissions.csv.gz", "'admittime'", "row 6", "2196-13-45")


def test_unknown_icd_version(tmp_path, capsys, hosp):
    def edit(rows):
        rows[10][4] = "11"                    # icd_version of CSV line 11
        return rows
    _rewrite(hosp, "diagnoses_icd", edit)
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "diagnoses_icd.csv.gz", "'icd_version'", "row 11",
           "unknown ICD version 11")


def test_empty_table(tmp_path, capsys, hosp):
    _rewrite(hosp, "diagnoses_icd", lambda rows: rows[:1])
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "diagnoses_icd.csv.gz", "no data rows")


def test_diagnosis_subject_not_in_patients(tmp_path, capsys, hosp):
    def edit(rows):
        rows[3][0] = "99999999"
        return rows
    _rewrite(hosp, "diagnoses_icd", edit)
    _fails(tmp_path, capsys, ["--mimic", str(hosp)], "diagnoses_icd.csv.gz", "'subject_id'", "row 4",
           "99999999 is not in patients")


def test_meds_unknown_icd_version(tmp_path, capsys):
    root = tmp_path / "meds"
    (root / "data").mkdir(parents=True)
    rows = [(1, datetime(1970, 1, 1), "MEDS_BIRTH"), (1, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10"),
            (1, datetime(2020, 1, 1), "DIAGNOSIS//ICD//11//BA00")]
    pq.write_table(pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                             "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                             "code": [r[2] for r in rows]}), root / "data" / "0.parquet")
    _fails(tmp_path, capsys, ["--meds", str(root)], "0.parquet", "'code'", "row 2", "unknown ICD version '11'")


def test_existing_data_dir_needs_overwrite(tmp_path, mimic_demo_hosp):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # through the console entry point, as a user runs it
    result = subprocess.run([sys.executable, "-m", "sparseehr", "prepare", "--mimic", str(mimic_demo_hosp),
                             "--out", str(out), "--no-progress"], capture_output=True, text=True)
    assert result.returncode != 0
    assert str(out) in result.stderr and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite only replaces a previous DATA_DIR: a folder of the user's own files is never deleted
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--overwrite", "--no-progress"]) == 2
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--no-progress"]) == 0  # empty: fine
    (out / "keep.txt").write_text("stale")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "keep.txt").exists() and (out / "prepare_report.json").is_file()
