"""Partitioned prepare: many tiny partitions (and a reader streaming many tiny blocks) give exactly the DATA_DIR of
one partition, from MIMIC tables and from MEDS; errors in a late block still name their true CSV line."""
from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
from test_data_meds import demo_to_meds

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.partitions import PartitionPlan
from sparseehr.data_pipeline.readers import streaming
from sparseehr.data_pipeline.schema import SPLITS

# report fields that describe the run, not the data
RUN_FIELDS = ("input", "elapsed_s", "timings_s", "partitions", "num_proc")
TINY = 7    # patients per partition: the demo's 100 patients become 15 partitions


def _prepare(out, source_flag, source, *extra) -> dict:
    assert main([source_flag, str(source), "--out", str(out), "--max-len", "48", "--no-progress", *extra]) == 0
    return datadir.read_prepare_report(out)


def _assert_same(a, b) -> None:
    assert (a / "tokenizer" / "tokenizer.json").read_text() == (b / "tokenizer" / "tokenizer.json").read_text()
    for split in SPLITS:
        for load in (datadir.load_patients, datadir.load_windows):
            left, right = load(a, split), load(b, split)
            assert left.features == right.features
            assert left.to_list() == right.to_list()
    for name in ("train_code_counts.json", "harmonization.json"):
        assert (a / name).read_text() == (b / name).read_text()
    report_a, report_b = datadir.read_prepare_report(a), datadir.read_prepare_report(b)
    assert {k: v for k, v in report_a.items() if k not in RUN_FIELDS} == \
        {k: v for k, v in report_b.items() if k not in RUN_FIELDS}


@pytest.fixture
def tiny_blocks(monkeypatch):
    """CSV tables streamed in 4 KiB blocks (the demo's diagnoses become ~60 blocks), parquet in 50-row batches."""
    monkeypatch.setattr(streaming, "CSV_CHUNK_BYTES", 4096)
    monkeypatch.setattr(streaming, "CSV_PARSE_BLOCK_BYTES", 1024)
    monkeypatch.setattr(streaming, "STREAM_ROWS", 50)


@pytest.fixture(scope="module")
def one_partition(tmp_path_factory, mimic_demo_hosp):
    out = tmp_path_factory.mktemp("partitions") / "one"
    report = _prepare(out, "--mimic", mimic_demo_hosp, "--partition-patients", "1000000")
    assert report["partitions"] == 1
    return out


def test_tiny_partitions_and_blocks_give_the_one_partition_data_dir(tmp_path, one_partition, mimic_demo_hosp,
                                                                     tiny_blocks):
    out = tmp_path / "tiny"
    report = _prepare(out, "--mimic", mimic_demo_hosp, "--partition-patients", str(TINY), "--batch-size", "3",
                      "--num-proc", "1")
    assert report["partitions"] == math.ceil(report["patients"] / TINY)
    assert (report["patients"], report["visits"]) == (100, 275)
    _assert_same(one_partition, out)


def test_tiny_partitions_in_parallel_workers(tmp_path, one_partition, mimic_demo_hosp):
    out = tmp_path / "workers"
    report = _prepare(out, "--mimic", mimic_demo_hosp, "--partition-patients", str(TINY), "--num-proc", "2")
    assert report["num_proc"] == 2
    _assert_same(one_partition, out)


def test_an_error_inside_a_worker_process_reaches_the_user_and_leaves_nothing(tmp_path, mimic_demo_hosp, capsys,
                                                                               monkeypatch):
    from sparseehr.data_pipeline import build
    from sparseehr.data_pipeline.errors import PrepareError

    real = build.build_timelines

    def failing(harmonized, visits):   # forked workers inherit this patch; only the third partition fails
        subjects = visits.column(0).to_pylist()
        if subjects and min(subjects) == third_partition_first:
            raise PrepareError("diagnoses_icd.csv.gz", "made-up bad value", column="icd_code", row=17)
        return real(harmonized, visits)

    import pyarrow.csv as pacsv
    subjects = sorted(set(pacsv.read_csv(mimic_demo_hosp / "admissions.csv.gz")["subject_id"].to_pylist()))
    # the third partition's first patient (2 workers: the partition count is rounded up to an even one)
    third_partition_first = int(PartitionPlan.from_subjects(np.array(subjects), TINY, multiple_of=2).starts[2])
    monkeypatch.setattr(build, "build_timelines", failing)
    out = tmp_path / "out"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--partition-patients", str(TINY),
                 "--num-proc", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diagnoses_icd.csv.gz" in err and "column 'icd_code'" in err and "row 17" in err, err
    assert "made-up bad value" in err
    assert list(tmp_path.iterdir()) == []     # neither DATA_DIR nor its temporary folder is left behind


def test_meds_in_tiny_partitions_gives_the_mimic_data_dir(tmp_path, one_partition, mimic_demo_hosp, tiny_blocks):
    root = demo_to_meds(mimic_demo_hosp, tmp_path / "meds")
    out = tmp_path / "meds-out"
    report = _prepare(out, "--meds", root, "--partition-patients", str(TINY))
    workers = report["num_proc"]      # the default: the cores; the count is rounded up to a multiple of it
    assert report["partitions"] == math.ceil(math.ceil(100 / TINY) / workers) * workers
    reference = datadir.read_prepare_report(one_partition)
    for split in SPLITS:
        assert datadir.load_patients(out, split).to_list() == datadir.load_patients(one_partition, split).to_list()
    assert report["vocab_size"] == reference["vocab_size"]


def test_an_error_in_a_late_block_names_its_true_line(tmp_path, hosp, capsys, tiny_blocks):
    path = hosp / "diagnoses_icd.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    bad_line = len(lines) - 3                       # 1-based line number, far past the first 4 KiB block
    fields = lines[bad_line - 1].split(",")
    fields[4] = "11" + fields[4][len(fields[4].rstrip("\r\n")):]    # icd_version, line ending kept
    lines[bad_line - 1] = ",".join(fields)
    with gzip.open(path, "wt", newline="") as handle:
        handle.write("".join(lines))
    out = tmp_path / "out"
    assert main(["--mimic", str(hosp), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "diagnoses_icd.csv.gz" in err and f"row {bad_line}" in err and "unknown ICD version 11" in err, err
    assert not out.exists()


def test_partition_plan_cuts_distinct_subjects_in_order():
    plan = PartitionPlan.from_subjects(np.array([30, 10, 10, 20, 50, 40]), 2)
    assert plan.starts.tolist() == [10, 30, 50]
    # below the first start -> partition 0; between starts -> the lower one; above the last -> the last
    assert plan.partition_of(np.array([5, 10, 29, 30, 45, 50, 99])).tolist() == [0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        PartitionPlan.from_subjects(np.array([1]), 0)


def test_partition_count_rounds_up_to_a_multiple_of_the_workers():
    subjects = np.arange(100, 1000, 100)          # 9 distinct ids
    assert len(PartitionPlan.from_subjects(subjects, 2)) == 5
    balanced = PartitionPlan.from_subjects(subjects, 2, multiple_of=2)
    assert balanced.starts.tolist() == [100, 200, 400, 500, 700, 800]    # cuts at 9 * k // 6 = 0, 1, 3, 4, 6, 7
    # every partition holds at most the asked-for patients, and every id is in exactly one
    counts = np.bincount(balanced.partition_of(subjects), minlength=len(balanced))
    assert counts.max() <= 2 and counts.sum() == 9
    assert len(PartitionPlan.from_subjects(subjects, 100, multiple_of=4)) == 1   # one partition stays one
