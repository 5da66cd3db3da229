"""MEDS input: the demo converted to MEDS gives the same timelines as the MIMIC tables; calendar-day visits;
subject_splits honoured."""
from __future__ import annotations

import csv
import gzip
import json
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.schema import SPLITS

MEDS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                         ("numeric_value", pa.float32()), ("hadm_id", pa.int64())])


def _raw(hosp, name):
    with gzip.open(hosp / f"{name}.csv.gz", "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def _ts(text):
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S" if " " in text else "%Y-%m-%d")


def demo_to_meds(hosp, root):
    """The MIMIC-MEDS convention, written independently of the reader: static rows, MEDS_BIRTH on January 1st of
    anchor_year - anchor_age, admissions, diagnoses at discharge time, procedures/HCPCS at their chart dates (in
    seq_num order), discharges, a death row and a lab row that must not become a token."""
    rows = []
    admissions = {row["hadm_id"]: row for row in _raw(hosp, "admissions")}
    for p in _raw(hosp, "patients"):
        rows.append((int(p["subject_id"]), None, f"GENDER//{p['gender']}", None, None))
        rows.append((int(p["subject_id"]), datetime(int(p["anchor_year"]) - int(p["anchor_age"]), 1, 1), "MEDS_BIRTH",
                     None, None))
        if p["dod"]:
            rows.append((int(p["subject_id"]), _ts(p["dod"]), "MEDS_DEATH", None, None))
    for a in admissions.values():
        rows.append((int(a["subject_id"]), _ts(a["admittime"]), f"HOSPITAL_ADMISSION//{a['admission_type']}", None,
                     int(a["hadm_id"])))
        rows.append((int(a["subject_id"]), _ts(a["dischtime"]), "HOSPITAL_DISCHARGE//HOME", None, int(a["hadm_id"])))
        rows.append((int(a["subject_id"]), _ts(a["admittime"]), "LAB//50912//mg/dL", 1.1, None))
    for d in sorted(_raw(hosp, "diagnoses_icd"), key=lambda r: (r["hadm_id"], int(r["seq_num"]))):
        rows.append((int(d["subject_id"]), _ts(admissions[d["hadm_id"]]["dischtime"]),
                     f"DIAGNOSIS//ICD//{d['icd_version']}//{d['icd_code']}", None, int(d["hadm_id"])))
    for d in sorted(_raw(hosp, "procedures_icd"), key=lambda r: (r["hadm_id"], int(r["seq_num"]))):
        rows.append((int(d["subject_id"]), _ts(d["chartdate"]), f"PROCEDURE//ICD//{d['icd_version']}//{d['icd_code']}",
                     None, int(d["hadm_id"])))
    for d in sorted(_raw(hosp, "hcpcsevents"), key=lambda r: (r["hadm_id"], int(r["seq_num"]))):
        rows.append((int(d["subject_id"]), _ts(d["chartdate"]), f"HCPCS//{d['hcpcs_cd']}", None, int(d["hadm_id"])))
    # MEDS shards are sorted by subject and time; Python's sort is stable, so seq_num order survives within a time
    rows.sort(key=lambda r: (r[0], r[1] or datetime.min))
    for shard, parity in (("train/0.parquet", 0), ("held_out/0.parquet", 1)):
        part = [r for r in rows if r[0] % 2 == parity]
        (root / "data" / shard).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([dict(zip(MEDS_SCHEMA.names, r)) for r in part], MEDS_SCHEMA),
                       root / "data" / shard)
    (root / "metadata").mkdir()
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "demo", "meds_version": "0.4"}))
    return root


@pytest.fixture(scope="module")
def both(tmp_path_factory, mimic_demo_hosp):
    base = tmp_path_factory.mktemp("meds")
    meds = demo_to_meds(mimic_demo_hosp, base / "meds")
    for name, flag, source in (("from_mimic", "--mimic", mimic_demo_hosp), ("from_meds", "--meds", meds)):
        assert main([flag, str(source), "--out", str(base / name), "--max-len", "64", "--no-progress"]) == 0
    return base / "from_mimic", base / "from_meds"


def test_meds_gives_the_same_timelines_as_mimic(both):
    from_mimic, from_meds = both
    assert datadir.load_tokenizer(from_mimic).get_vocab() == datadir.load_tokenizer(from_meds).get_vocab()
    for split in SPLITS:
        a, b = datadir.load_patients(from_mimic, split), datadir.load_patients(from_meds, split)
        assert len(a) > 0
        assert sorted(a.to_list(), key=lambda r: r["subject_id"]) == sorted(b.to_list(), key=lambda r: r["subject_id"])
        wa, wb = datadir.load_windows(from_mimic, split), datadir.load_windows(from_meds, split)
        key = lambda r: (r["subject_id"], r["window_index"])  # noqa: E731
        assert sorted(wa.to_list(), key=key) == sorted(wb.to_list(), key=key)
    report_a, report_b = datadir.read_prepare_report(from_mimic), datadir.read_prepare_report(from_meds)
    for name in ("patients", "visits", "consecutive_visit_pairs", "dx_icd9_rows", "dx_icd9_mapped", "dx_unmapped"):
        assert report_a[name] == report_b[name]
    # death, labs, admission and discharge rows are counted, not tokenized
    assert report_b["dropped"]["meds_rows_not_tokenized"] > 275


def _write_meds(root, rows, splits=None, with_hadm=False):
    names = ["subject_id", "time", "code"] + (["hadm_id"] if with_hadm else [])
    schema = pa.schema([f for f in MEDS_SCHEMA if f.name in names])
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([dict(zip(names, r)) for r in rows], schema), root / "data" / "0.parquet")
    if splits is not None:
        (root / "metadata").mkdir()
        pq.write_table(pa.table({"subject_id": pa.array(list(splits), pa.int64()), "split": list(splits.values())}),
                       root / "metadata" / "subject_splits.parquet")
    return root


def test_calendar_day_visits_and_region(tmp_path):
    rows = [(1, None, "GENDER//M"), (1, None, "REGION//South"), (1, datetime(1960, 6, 1), "MEDS_BIRTH"),
            (1, datetime(2020, 3, 1, 15), "DIAGNOSIS//ICD//10//E11.9"), (1, datetime(2020, 3, 1, 8), "HCPCS//99213"),
            (1, datetime(2020, 3, 2, 9), "DIAGNOSIS//ICD//10//I10"), (1, datetime(2021, 3, 2, 9), "MEDS_DEATH")]
    meds = _write_meds(tmp_path / "meds", rows)
    out = tmp_path / "out"
    # everyone in train, and a floor of 1 so the one patient's codes are in the vocabulary
    assert main(["--meds", str(meds), "--out", str(out), "--split-ratios", "1", "0", "0", "--min-count", "1",
                 "--min-patients", "1", "--no-progress"]) == 0
    row = datadir.load_patients(out, "train")[0]
    tokens = datadir.load_tokenizer(out).convert_ids_to_tokens(row["input_ids"])
    # 2020-03-01 (two rows, 08:00 and 15:00) is one visit starting 08:00; 2020-03-02 09:00 is the next, 25 h later
    assert tokens == ["<bos>", "AGE:55-59", "SEX:M", "REGION:South", "GAP:first", "VISIT:open", "DX:E11", "CPT:99213",
                      "VISIT:close", "GAP:1-7D", "VISIT:open", "DX:I10", "VISIT:close", "<eor>"]
    assert row["visit_times"] == [int(datetime(2020, 3, 1, 8).timestamp() - datetime(1970, 1, 1).timestamp()),
                                  int(datetime(2020, 3, 2, 9).timestamp() - datetime(1970, 1, 1).timestamp())]
    assert row["visit_dx_codes"] == [["E11"], ["I10"]]


def test_subject_splits_are_honoured(tmp_path):
    rows = []
    for subject in range(1, 7):
        rows += [(subject, None, "GENDER//F"), (subject, datetime(1980, 1, 1), "MEDS_BIRTH"),
                 (subject, datetime(2020, 1, subject), "DIAGNOSIS//ICD//10//I10")]
    splits = {1: "train", 2: "train", 3: "tuning", 4: "held_out", 5: "held_out", 6: "train"}
    meds = _write_meds(tmp_path / "meds", rows, splits)
    assert main(["--meds", str(meds), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    got = {split: sorted(datadir.load_patients(tmp_path / "out", split)["subject_id"]) for split in SPLITS}
    assert got == {"train": [1, 2, 6], "validation": [3], "test": [4, 5]}
    assert datadir.read_prepare_report(tmp_path / "out")["split_source"] == "meds"


def test_a_subject_splits_row_without_a_split_names_file_column_and_row(tmp_path, capsys):
    rows = [(subject, datetime(2020, 1, subject), "DIAGNOSIS//ICD//10//I10") for subject in (1, 2, 3)]
    meds = _write_meds(tmp_path / "meds", rows, {1: "train", 2: None, 3: "held_out"})
    out = tmp_path / "out"
    assert main(["--meds", str(meds), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "subject_splits.parquet" in err and "split" in err and "row" in err
    assert not out.exists()
