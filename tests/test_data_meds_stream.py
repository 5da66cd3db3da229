"""The streaming MEDS reader: event-table rows (labs, deaths) interleaved over many shards and batches change
nothing but the skip counts; a subject whose rows span two shards is read as one subject; errors still name the
true file row after the scan kept only the rows it needs."""
from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_data_meds import MEDS_SCHEMA, demo_to_meds

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.arrays import sort_indices_nulls_first
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.readers import meds as meds_reader
from sparseehr.data_pipeline.schema import SPLITS

# report fields that legitimately differ between the same records with and without event rows
INPUT_FIELDS = ("input", "rows_read", "events_read", "meds_rows_skipped", "elapsed_s", "timings_s", "dropped")


def _write_shards(root, tables: list[pa.Table]) -> None:
    (root / "data").mkdir(parents=True)
    for number, table in enumerate(tables):
        # small row groups, so one shard is several row groups and (with the batch size below) several batches
        pq.write_table(table, root / "data" / f"{number}.parquet", row_group_size=53)


def _by_subject(table: pa.Table, shards: int) -> list[pa.Table]:
    return [table.filter(pc.equal(pc.bit_wise_and(table["subject_id"], shards - 1), s)) for s in range(shards)]


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory, mimic_demo_hosp) -> pa.Table:
    """The demo in MIMIC-MEDS form (sorted by subject, time) without any row the pipeline skips."""
    root = demo_to_meds(mimic_demo_hosp, tmp_path_factory.mktemp("demo") / "meds")
    table = pa.concat_tables([pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet"))])
    order = sort_indices_nulls_first(table, [("subject_id", "ascending"), ("time", "ascending")])
    table = table.take(order)
    event = pc.or_(pc.starts_with(table["code"], "LAB//"), pc.equal(table["code"], "MEDS_DEATH"))
    return table.filter(pc.invert(event))


def _with_events(table: pa.Table, rng: np.random.Generator) -> tuple[pa.Table, dict[str, int]]:
    """The same rows plus lab rows (many per subject, some at a visit's exact time, some with its hadm_id) and
    infusion rows; the stable sort keeps the original rows' relative order."""
    subjects = table["subject_id"].to_numpy()
    times = table["time"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    timed = ~pc.is_null(table["time"]).to_numpy(zero_copy_only=False)
    n_lab, n_infusion = 40 * len(np.unique(subjects)), 300
    pick = rng.choice(np.flatnonzero(timed), n_lab + n_infusion)
    jitter = np.where(rng.random(len(pick)) < 0.3, 0, rng.integers(-10**12, 10**12, len(pick)))
    codes = [f"LAB//{5000 + i}//mg/dL" for i in rng.integers(0, 25, n_lab)] + ["INFUSION_START//221906"] * n_infusion
    hadm = table["hadm_id"].take(pa.array(pick))
    events = pa.table({"subject_id": pa.array(subjects[pick], pa.int64()),
                       "time": pa.array(times[pick] + jitter, pa.int64()).cast(pa.timestamp("us")),
                       "code": pa.array(codes, pa.string()),
                       "numeric_value": pa.array(rng.normal(1, 0.3, len(pick)).astype(np.float32)),
                       "hadm_id": pc.if_else(pa.array(rng.random(len(pick)) < 0.5), hadm, pa.nulls(len(pick), pa.int64()))},
                      schema=MEDS_SCHEMA)
    both = pa.concat_tables([table, events])
    both = both.take(sort_indices_nulls_first(both, [("subject_id", "ascending"), ("time", "ascending")]))
    return both, {"LAB": n_lab, "INFUSION_START": n_infusion}


def _prepare(root, out) -> dict:
    assert main(["--meds", str(root), "--out", str(out), "--max-len", "64", "--no-progress"]) == 0
    return datadir.read_prepare_report(out)


def _assert_same_data_dir(a, b) -> None:
    assert datadir.load_tokenizer(a).get_vocab() == datadir.load_tokenizer(b).get_vocab()
    for split in SPLITS:
        assert datadir.load_patients(a, split).to_list() == datadir.load_patients(b, split).to_list()
        assert datadir.load_windows(a, split).to_list() == datadir.load_windows(b, split).to_list()
    for name in ("train_code_counts.json", "harmonization.json"):
        assert (a / name).read_text() == (b / name).read_text()
    report_a, report_b = datadir.read_prepare_report(a), datadir.read_prepare_report(b)
    assert {k: v for k, v in report_a.items() if k not in INPUT_FIELDS} == \
        {k: v for k, v in report_b.items() if k not in INPUT_FIELDS}


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(meds_reader, "STREAM_BATCH_ROWS", 100)


def test_interleaved_event_rows_over_shards_change_nothing_but_the_skip_counts(tmp_path, demo_rows, small_batches):
    plain, with_events = tmp_path / "plain", tmp_path / "events"
    _write_shards(plain, _by_subject(demo_rows, 4))
    mixed, inserted = _with_events(demo_rows, np.random.default_rng(0))
    _write_shards(with_events, _by_subject(mixed, 4))
    report_plain = _prepare(plain, tmp_path / "out-plain")
    report_events = _prepare(with_events, tmp_path / "out-events")
    _assert_same_data_dir(tmp_path / "out-plain", tmp_path / "out-events")
    # the demo still prepares to its 100 patients and 275 admissions
    assert (report_events["patients"], report_events["visits"]) == (100, 275)
    assert report_plain["meds_rows_skipped"] == {}
    assert report_events["meds_rows_skipped"] == {"LAB": inserted["LAB"], "INFUSION_START": inserted["INFUSION_START"]}
    assert report_events["events_read"] == report_plain["events_read"] + sum(inserted.values())
    not_tokenized = report_events["dropped"]["meds_rows_not_tokenized"]
    assert not_tokenized == report_plain["dropped"].get("meds_rows_not_tokenized", 0) + sum(inserted.values())


def test_a_subject_spanning_two_shards_is_read_as_one_subject(tmp_path, demo_rows, small_batches):
    """Every subject's rows are cut at the middle: the first half in shard 0, the rest in shard 1."""
    reference = tmp_path / "reference"
    _write_shards(reference, _by_subject(demo_rows, 2))
    subjects = demo_rows["subject_id"].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], subjects[1:] != subjects[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(subjects)]]))
    position = np.arange(len(subjects)) - np.repeat(starts, sizes)
    first_half = pa.array(position < np.repeat(sizes // 2, sizes))
    split = tmp_path / "split"
    _write_shards(split, [demo_rows.filter(first_half), demo_rows.filter(pc.invert(first_half))])
    report = _prepare(split, tmp_path / "out-split")
    _prepare(reference, tmp_path / "out-reference")
    _assert_same_data_dir(tmp_path / "out-reference", tmp_path / "out-split")
    assert report["patients_declared"] == 100 and report["rows_read"] == {
        "data/0.parquet": int(pc.sum(first_half).as_py()), "data/1.parquet": len(subjects) - int(pc.sum(first_half).as_py())}


def test_a_bad_code_after_skipped_rows_names_its_true_file_row(tmp_path, capsys, small_batches):
    labs = [(1, datetime(2020, 1, 1, h), f"LAB//{h}//mg/dL") for h in range(24)] * 20
    rows = [(1, datetime(1970, 1, 1), "MEDS_BIRTH")] + labs + [(1, datetime(2020, 1, 2), "DIAGNOSIS//ICD//10//I10")] \
        + labs + [(1, datetime(2020, 1, 3), "DIAGNOSIS//ICD//11//BA00")]
    table = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                      "time": pa.array([r[1] for r in rows], pa.timestamp("us")), "code": [r[2] for r in rows]})
    root = tmp_path / "meds"
    _write_shards(root, [table.slice(0, 5), table])
    out = tmp_path / "out"
    assert main(["--meds", str(root), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "1.parquet" in err and f"row {len(rows) - 1}" in err and "unknown ICD version '11'" in err, err
    assert not out.exists()


def test_skip_counts_are_in_the_report_json(tmp_path, small_batches):
    rows = [(1, datetime(1980, 1, 1), "MEDS_BIRTH"), (1, datetime(2020, 1, 1), "DIAGNOSIS//ICD//10//I10"),
            (1, datetime(2020, 1, 1), "LAB//1//mg/dL"), (1, datetime(2020, 1, 1), "LAB//2//%"),
            (1, datetime(2020, 1, 2), "MEDS_DEATH"), (1, datetime(2020, 1, 1), "VITAL")]
    table = pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                      "time": pa.array([r[1] for r in rows], pa.timestamp("us")), "code": [r[2] for r in rows]})
    root = tmp_path / "meds"
    _write_shards(root, [table])
    _prepare(root, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["meds_rows_skipped"] == {"LAB": 2, "MEDS_DEATH": 1, "VITAL": 1}
    assert report["dropped"]["meds_rows_not_tokenized"] == 4
