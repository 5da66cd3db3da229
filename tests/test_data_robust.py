"""`sparseehr prepare` never destroys what a user owns, and odd-but-real input gets a clear answer.

Data loss first (the input, a folder containing it, a folder that is not a DATA_DIR, a plain file), then CSV
edge cases (a 5 MB field, a broken quote, an extra field, a non-UTF-8 byte), --vocab-from damage and conflicts,
duplicate table files, age edge cases counted in the report, and MEDS subject_splits duplicates.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.artifacts import (DATA_DIR, MEDS_INPUT, MIMIC_INPUT, artifact_kind)
from sparseehr.data_pipeline.cli import main

SMALL = ["--no-progress", "--min-count", "1", "--min-patients", "1"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_rows(folder, name):
    with gzip.open(folder / f"{name}.csv.gz", "rt", newline="") as handle:
        return list(csv.reader(handle))


def write_rows(folder, name, rows, gz=True):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    if gz:
        (folder / f"{name}.csv.gz").write_bytes(gzip.compress(buffer.getvalue().encode()))
    else:
        (folder / f"{name}.csv").write_text(buffer.getvalue())


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ------------------------------------------------------------------------------------------------------------
# data loss
# ------------------------------------------------------------------------------------------------------------
def test_overwrite_never_deletes_the_input_or_a_folder_containing_it(tmp_path, hosp, capsys):
    before = snapshot(tmp_path)
    assert main(["--mimic", str(hosp), "--out", str(hosp), "--overwrite", *SMALL]) == 2
    one_line_error(capsys, f"--out {hosp} is the --mimic input")
    assert main(["--mimic", str(hosp), "--out", str(tmp_path), "--overwrite", *SMALL]) == 2
    one_line_error(capsys, "contains the --mimic input")
    assert snapshot(tmp_path) == before
    assert artifact_kind(hosp) == MIMIC_INPUT and artifact_kind(tmp_path) == MIMIC_INPUT  # the root via hosp/


def test_overwrite_only_replaces_a_previous_data_dir(tmp_path, mimic_demo_hosp, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(mine), *SMALL]) == 2
    one_line_error(capsys, "exists and is not empty", "--overwrite")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(mine), "--overwrite", *SMALL]) == 2
    one_line_error(capsys, "is not a DATA_DIR", "only replaces a previous DATA_DIR")
    assert (mine / "notes.txt").read_text() == "a user's file"

    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(plain), "--overwrite", *SMALL]) == 2
    one_line_error(capsys, "is an existing file")
    assert plain.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "plain.txt"]  # no .plain.txt.old-* / .tmp-*

    data = tmp_path / "data"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(data), *SMALL]) == 0
    assert artifact_kind(data) == DATA_DIR
    first = json.loads((data / "prepare_report.json").read_text())
    (data / "stale.txt").write_text("from the old DATA_DIR")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(data), "--overwrite", *SMALL]) == 0
    assert not (data / "stale.txt").exists()
    assert json.loads((data / "prepare_report.json").read_text())["patients"] == first["patients"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine", "plain.txt"]


def test_an_empty_existing_folder_is_a_fine_output(tmp_path, mimic_demo_hosp):
    out = tmp_path / "made_by_mkdir"
    out.mkdir()
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), *SMALL]) == 0
    assert artifact_kind(out) == DATA_DIR


def test_out_under_a_file_is_refused_in_one_line(tmp_path, mimic_demo_hosp, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(blocker / "sub" / "data"), *SMALL]) == 2
    one_line_error(capsys, f"{blocker} is a file")


# ------------------------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------------------------
def test_a_valid_csv_with_a_5mb_field_is_read(tmp_path, hosp, mimic_demo_hosp):
    reference = tmp_path / "reference"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(reference), *SMALL]) == 0
    rows = read_rows(hosp, "admissions")
    column = rows[0].index("discharge_location")
    rows[3][column] = "x" * (5 << 20) + ',"quoted", and\nmultiline'   # valid CSV: quoted, with commas and newline
    write_rows(hosp, "admissions", rows)
    out = tmp_path / "out"
    assert main(["--mimic", str(hosp), "--out", str(out), *SMALL]) == 0
    got, want = datadir.read_prepare_report(out), datadir.read_prepare_report(reference)
    assert (got["patients"], got["visits"], got["tokens_total"]) == (want["patients"], want["visits"],
                                                                     want["tokens_total"])


def test_an_unclosed_quote_is_named_by_file_line_and_column(tmp_path, hosp, capsys):
    rows = read_rows(hosp, "diagnoses_icd")
    text = "\n".join(",".join(r) for r in rows) + "\n"
    lines = text.splitlines(keepends=True)
    parts = lines[4].rstrip("\n").split(",")
    parts[3] = '"' + parts[3]                    # icd_code of line 5 opens a quote that never closes
    lines[4] = ",".join(parts) + "\n"
    (hosp / "diagnoses_icd.csv.gz").write_bytes(gzip.compress("".join(lines).encode()))
    assert main(["--mimic", str(hosp), "--out", str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, "diagnoses_icd.csv.gz", "row 5", "column 'icd_code'", "never closes")


def test_a_row_with_an_extra_field_is_named_by_line(tmp_path, hosp, capsys):
    rows = read_rows(hosp, "procedures_icd")
    rows[6] = rows[6] + ["surplus"]
    write_rows(hosp, "procedures_icd", rows)
    assert main(["--mimic", str(hosp), "--out", str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, "procedures_icd.csv.gz", "row 7", f"{len(rows[0]) + 1} fields where the header has")


def test_a_non_utf8_byte_is_reported_at_its_line(tmp_path, hosp, capsys):
    rows = read_rows(hosp, "patients")
    data = "\n".join(",".join(r) for r in rows).encode() + b"\n"
    lines = data.split(b"\n")
    fields = lines[1].split(b",")
    fields[1] = b"F\xe9"                        # latin-1 e-acute inside the gender field of line 2
    lines[1] = b",".join(fields)
    (hosp / "patients.csv.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    assert main(["--mimic", str(hosp), "--out", str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, "patients.csv.gz", "row 2", "column 'gender'", "0xe9 is not UTF-8")


def test_a_table_beside_its_archive_is_refused(tmp_path, hosp, capsys):
    write_rows(hosp, "patients", read_rows(hosp, "patients")[:5], gz=False)
    assert main(["--mimic", str(hosp), "--out", str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, "patients.csv.gz and patients.csv both exist")


def test_the_mimic_root_instead_of_hosp_gets_a_hint(tmp_path, hosp, capsys):
    root = tmp_path / "mimic-iv"
    root.mkdir()
    shutil.move(str(hosp), root / "hosp")
    assert main(["--mimic", str(root), "--out", str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, f"pass --mimic {root / 'hosp'}")


# ------------------------------------------------------------------------------------------------------------
# --vocab-from
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture
def vocab_source(tmp_path, mimic_demo_hosp):
    source = tmp_path / "source"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(source), "--px-prefix-len", "4", *SMALL]) == 0
    return source


def test_vocab_from_with_a_corrupt_harmonization_file_names_it(tmp_path, vocab_source, mimic_demo_hosp, capsys):
    (vocab_source / "harmonization.json").write_text('{"dx_prefix_len": 3, "px_pre')
    assert main(["--mimic", str(mimic_demo_hosp), "--vocab-from", str(vocab_source), "--out",
                 str(tmp_path / "out"), *SMALL]) == 1
    one_line_error(capsys, str(vocab_source / "harmonization.json"), "cannot read the harmonization settings")


def test_vocab_from_without_harmonization_reads_the_prefixes_off_the_vocabulary(tmp_path, vocab_source,
                                                                                mimic_demo_hosp, capsys):
    (vocab_source / "harmonization.json").unlink()
    out = tmp_path / "out"
    assert main(["--mimic", str(mimic_demo_hosp), "--vocab-from", str(vocab_source), "--out", str(out),
                 "--px-prefix-len", "3", *SMALL]) == 2
    one_line_error(capsys, "--px-prefix-len 3 conflicts with the reused vocabulary's 4", "tokenizer.json")
    assert not out.exists()
    assert main(["--mimic", str(mimic_demo_hosp), "--vocab-from", str(vocab_source), "--out", str(out), *SMALL]) == 0
    assert datadir.read_harmonization(out)["px_prefix_len"] == 4   # inherited, so procedures keep their tokens


def test_vocab_from_with_a_conflicting_flag_is_refused(tmp_path, vocab_source, mimic_demo_hosp, capsys):
    assert main(["--mimic", str(mimic_demo_hosp), "--vocab-from", str(vocab_source), "--out",
                 str(tmp_path / "out"), "--px-prefix-len", "7", *SMALL]) == 2
    one_line_error(capsys, "--px-prefix-len 7 conflicts with the reused vocabulary's 4", "harmonization.json")


# ------------------------------------------------------------------------------------------------------------
# reports count what they did: ages
# ------------------------------------------------------------------------------------------------------------
def test_impossible_ages_become_unknown_and_are_counted(tmp_path, hosp):
    patients = read_rows(hosp, "patients")
    header = patients[0]
    age, subject = header.index("anchor_age"), header.index("subject_id")
    patients[1][age] = "-50"                        # birth decades after every admission
    negative_subject = patients[1][subject]
    write_rows(hosp, "patients", patients)
    admissions = read_rows(hosp, "admissions")
    a_header = admissions[0]
    other_subject = patients[2][subject]
    for row in admissions[1:]:
        if row[a_header.index("subject_id")] == other_subject:
            row[a_header.index("admittime")] = "1650-01-01 10:00:00"   # a mistyped year
    write_rows(hosp, "admissions", admissions)
    out = tmp_path / "out"
    assert main(["--mimic", str(hosp), "--out", str(out), *SMALL]) == 0
    counts = datadir.read_prepare_report(out)["harmonization_counts"]
    assert counts["age_unknown"] == 2 and counts["age_unknown_birth_after_first_visit"] == 2
    assert counts["age_unknown_no_birth"] == 0
    tokenizer = datadir.load_tokenizer(out)
    unknown = 0
    for split in ("train", "validation", "test"):
        for row in datadir.load_patients(out, split):
            if str(row["subject_id"]) in (negative_subject, other_subject):
                assert tokenizer.convert_ids_to_tokens(row["input_ids"][1]) == "AGE:<unk>"
                unknown += 1
    assert unknown == 2


MEDS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string())])


def write_meds(root, rows, splits=None):
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([dict(zip(MEDS_SCHEMA.names, r)) for r in rows], MEDS_SCHEMA),
                   root / "data" / "0.parquet")
    if splits is not None:
        (root / "metadata").mkdir()
        pq.write_table(pa.table({"subject_id": pa.array([s for s, _ in splits], pa.int64()),
                                 "split": [n for _, n in splits]}), root / "metadata" / "subject_splits.parquet")
    return root


def test_meds_missing_late_and_ancient_births_are_counted(tmp_path):
    rows = [(1, datetime(1960, 1, 1), "MEDS_BIRTH"), (1, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10"),
            (2, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10"),                          # no MEDS_BIRTH
            (3, datetime(2021, 1, 1), "MEDS_BIRTH"), (3, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10"),  # late
            (4, datetime(1750, 1, 1), "MEDS_BIRTH"), (4, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10")]  # 270 y
    meds = write_meds(tmp_path / "meds", rows)
    assert artifact_kind(meds) == MEDS_INPUT
    out = tmp_path / "out"
    assert main(["--meds", str(meds), "--out", str(out), "--split-ratios", "1", "0", "0", *SMALL]) == 0
    counts = datadir.read_prepare_report(out)["harmonization_counts"]
    assert (counts["age_unknown"], counts["age_unknown_no_birth"], counts["age_unknown_birth_after_first_visit"],
            counts["age_unknown_over_max"]) == (3, 1, 1, 1)
    tokenizer = datadir.load_tokenizer(out)
    ages = {row["subject_id"]: tokenizer.convert_ids_to_tokens(row["input_ids"][1])
            for row in datadir.load_patients(out, "train")}
    assert ages == {1: "AGE:60-64", 2: "AGE:<unk>", 3: "AGE:<unk>", 4: "AGE:<unk>"}


def test_subject_splits_duplicates_kept_once_or_refused_when_they_disagree(tmp_path, capsys):
    rows = [(s, datetime(2020, 1, s), "DIAGNOSIS//ICD//10//I10") for s in (1, 2, 3)]
    same = write_meds(tmp_path / "same", rows, [(1, "train"), (2, "held_out"), (1, "train"), (3, "tuning")])
    assert main(["--meds", str(same), "--out", str(tmp_path / "ok"), *SMALL]) == 0
    got = {split: list(datadir.load_patients(tmp_path / "ok", split)["subject_id"])
           for split in ("train", "validation", "test")}
    assert got == {"train": [1], "validation": [3], "test": [2]}

    clash = write_meds(tmp_path / "clash", rows, [(1, "train"), (2, "held_out"), (1, "held_out")])
    assert main(["--meds", str(clash), "--out", str(tmp_path / "no"), *SMALL]) == 1
    one_line_error(capsys, "subject_splits.parquet", "row 2", "subject 1 is listed in split 'test' here and in "
                                                              "'train' at row 0")
    assert not (tmp_path / "no").exists()
