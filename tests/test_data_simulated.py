"""The simulator's two health systems through `sparseehr prepare`, and zero-shot vocabulary transfer between them."""
from __future__ import annotations

import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.schema import REGION_PREFIX, SPLITS

PATIENTS = 300


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    from sparseehr.data_pipeline.simulator.cli import main as synth_main

    base = tmp_path_factory.mktemp("simulated")
    for system in ("claims", "mimic"):
        assert synth_main(["--system", system, "--patients", str(PATIENTS), "--seed", "0",
                           "--out", str(base / system)]) == 0
    return base


@pytest.mark.slow
def test_claims_and_mimic_prepare_and_transfer(systems, tmp_path):
    claims, mimic, transfer = tmp_path / "claims", tmp_path / "mimic", tmp_path / "mimic_zero_shot"
    assert main(["--meds", str(systems / "claims"), "--out", str(claims), "--no-progress"]) == 0
    assert main(["--mimic", str(systems / "mimic" / "hosp"), "--out", str(mimic), "--no-progress"]) == 0
    assert main(["--mimic", str(systems / "mimic" / "hosp"), "--out", str(transfer), "--vocab-from", str(claims),
                 "--no-progress"]) == 0

    report = datadir.read_prepare_report(claims)
    assert report["patients"] + report["patients_without_visits"] == PATIENTS
    assert report["split_source"] == "meds"          # the simulator writes subject_splits.parquet
    assert any(t.startswith(REGION_PREFIX) for t in datadir.load_tokenizer(claims).get_vocab())
    first = datadir.load_patients(claims, "train")[0]
    assert datadir.load_tokenizer(claims).convert_ids_to_tokens(first["input_ids"])[3].startswith(REGION_PREFIX)

    assert datadir.read_prepare_report(mimic)["patients_declared"] == PATIENTS
    # zero-shot: the MIMIC timelines encoded with the claims vocabulary, harmonization and all
    assert datadir.load_tokenizer(transfer).get_vocab() == datadir.load_tokenizer(claims).get_vocab()
    own = {r["subject_id"]: r for split in SPLITS for r in datadir.load_patients(mimic, split)}
    for split in SPLITS:
        for row in datadir.load_patients(transfer, split):
            assert row["visit_dx_codes"] == own[row["subject_id"]]["visit_dx_codes"]
            assert len(row["input_ids"]) == len(own[row["subject_id"]]["input_ids"])
