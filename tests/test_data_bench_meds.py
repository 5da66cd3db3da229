"""The MEDS stress set of `sparseehr bench prepare --meds`, built tiny: shape, MEDS order, caching, and that
prepare skips exactly its lab rows."""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.bench import _simulate
from sparseehr.data_pipeline.bench_meds import build_meds_stress, plain_scan
from sparseehr.data_pipeline.build import PrepareConfig, prepare


@pytest.mark.slow   # end to end: the simulator, the stress-set builder, a prepare
def test_tiny_stress_set(tmp_path):
    subjects, rows, shards = 100, 30_000, 3
    root = build_meds_stress(tmp_path, subjects, rows, shards, simulate=lambda n: _simulate(n, tmp_path, False),
                             log=lambda *a, **k: None)
    files = sorted((root / "data").glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    assert len(files) == shards
    assert abs(sum(t.num_rows for t in tables) - rows) <= shards   # outpatient labs are rounded per shard
    seen = [set(t["subject_id"].to_pylist()) for t in tables]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == subjects      # one shard per subject
    for table in tables:   # MEDS order: subject, then time with static (null-time) rows first
        subject = table["subject_id"].to_numpy()
        time = table["time"].cast("int64").fill_null(-(2**62)).to_numpy()
        assert (np.diff(subject) >= 0).all()
        same = np.diff(subject) == 0
        assert (np.diff(time)[same] >= 0).all()
    everything = pq.read_table(root / "data")
    lab = pc.starts_with(everything["code"], "LAB//")
    assert pc.sum(lab).as_py() > 0.8 * rows
    assert everything["numeric_value"].filter(lab).null_count == 0
    assert plain_scan(root)[1] == everything.num_rows

    mtime = files[0].stat().st_mtime_ns   # cached: a second call rebuilds nothing
    assert build_meds_stress(tmp_path, subjects, rows, shards, simulate=None) == root
    assert files[0].stat().st_mtime_ns == mtime

    report = prepare(PrepareConfig(out=str(tmp_path / "out"), meds=str(root), progress=False))
    skipped = report["meds_rows_skipped"]
    assert skipped["LAB"] == pc.sum(lab).as_py()
    assert skipped.get("MEDS_DEATH", 0) == pc.sum(pc.equal(everything["code"], "MEDS_DEATH")).as_py()
    admitted = set(everything["subject_id"].filter(pc.starts_with(everything["code"], "HOSPITAL_ADMISSION//")).to_pylist())
    assert report["patients"] == len(admitted) and report["patients_declared"] == subjects
    assert len(datadir.load_patients(tmp_path / "out", "train")) > 0
