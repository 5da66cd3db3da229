"""The synthetic `claims` system (MEDS v0.4) and the clinical relations both systems share."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from sparseehr.data_pipeline.simulator.cli import generate

N_PATIENTS = 1500


@pytest.fixture(scope="module")
def claims_out(tmp_path_factory) -> Path:
    return generate("claims", N_PATIENTS, seed=11, out=tmp_path_factory.mktemp("sim") / "c", chunk_size=600)


@pytest.fixture(scope="module")
def events(claims_out: Path):
    return pads.dataset(claims_out / "data", format="parquet").to_table().to_pandas()


def test_meds_layout_and_types(claims_out: Path, events) -> None:
    table = pads.dataset(claims_out / "data", format="parquet").to_table()
    assert table.schema.field("subject_id").type == pa.int64()
    assert table.schema.field("time").type == pa.timestamp("us")
    assert table.schema.field("code").type == pa.string()
    assert table.schema.field("numeric_value").type == pa.float32()
    assert "hadm_id" not in table.schema.names
    meta = json.loads((claims_out / "metadata" / "dataset.json").read_text())
    assert meta["meds_version"] == "0.4" and meta["dataset_name"] and meta["etl_name"]
    splits = pq.read_table(claims_out / "metadata" / "subject_splits.parquet").to_pandas()
    assert splits.subject_id.is_unique and len(splits) == N_PATIENTS
    assert set(splits.split) == {"train", "tuning", "held_out"}
    # each shard folder holds exactly the patients of its split
    for split, group in splits.groupby("split"):
        shard = pads.dataset(claims_out / "data" / split, format="parquet").to_table(columns=["subject_id"])
        assert set(np.unique(shard["subject_id"].to_numpy())) == set(group.subject_id)


def test_codes_follow_the_meds_conventions(claims_out: Path, events) -> None:
    static = events[events.time.isna()]
    timed = events[events.time.notna()]
    per_subject = static.groupby("subject_id").code.apply(sorted)
    assert len(per_subject) == N_PATIENTS
    for codes in per_subject:
        assert len(codes) == 2 and codes[0] in ("GENDER//F", "GENDER//M") and codes[1].startswith("REGION//")
    assert (timed.groupby("subject_id").code.apply(lambda c: (c == "MEDS_BIRTH").sum()) == 1).all()
    prefixes = timed.code.str.extract(r"^([A-Z_]+)")[0]
    assert set(prefixes) <= {"MEDS_BIRTH", "MEDS_DEATH", "DIAGNOSIS", "PROCEDURE", "HCPCS"}
    assert timed[prefixes == "PROCEDURE"].code.str.match(r"^PROCEDURE//ICD//10//[0-9A-HJ-NP-Z]{7}$").all()
    assert timed[prefixes == "DIAGNOSIS"].code.str.match(r"^DIAGNOSIS//ICD//10//[A-Z][0-9][0-9A-Z]{1,5}$").all()
    assert timed[prefixes == "HCPCS"].code.str.match(r"^HCPCS//[0-9A-Z]{5}$").all()
    # day-level visits: every timed clinical row is at midnight; rows are sorted by subject then time
    clinical_rows = timed[prefixes.isin(["DIAGNOSIS", "PROCEDURE", "HCPCS"])]
    assert (clinical_rows.time == clinical_rows.time.dt.normalize()).all()
    for shard in (claims_out / "data").rglob("*.parquet"):
        assert _sorted_by_subject_then_time(pq.read_table(shard).to_pandas())
    # outpatient: many visits per patient, a few diagnoses per visit
    dx = clinical_rows[clinical_rows.code.str.startswith("DIAGNOSIS")]
    per_visit = dx.groupby(["subject_id", "time"]).size()
    assert 2 <= per_visit.mean() <= 7
    assert per_visit.groupby(level=0).size().median() >= 5


def _sorted_by_subject_then_time(frame) -> bool:
    """Subject ids ascending; within a subject static rows (null time) first, then time ascending."""
    subject = frame.subject_id.to_numpy()
    t = frame.time.to_numpy().astype("datetime64[us]").astype(np.int64)
    t = np.where(frame.time.isna().to_numpy(), np.iinfo(np.int64).min, t)
    same = subject[1:] == subject[:-1]
    return bool((subject[1:] >= subject[:-1]).all() and (t[1:][same] >= t[:-1][same]).all())


def test_same_seed_same_bytes(claims_out: Path, tmp_path: Path) -> None:
    again = generate("claims", N_PATIENTS, seed=11, out=tmp_path / "again", chunk_size=600)
    files = sorted(p.relative_to(claims_out) for p in claims_out.rglob("*") if p.is_file())
    assert any(str(f).startswith("data/") for f in files)
    for rel in files:
        assert (claims_out / rel).read_bytes() == (again / rel).read_bytes(), rel


def _first_visit_index(per_visit: list[set[str]], category: str) -> int | None:
    for i, codes in enumerate(per_visit):
        if category in codes:
            return i
    return None


def test_diabetes_onset_follows_its_precursors_in_the_coded_data(events) -> None:
    """Among patients with no E11 in the first half of their visits, those whose first half carries a precursor
    code (prediabetes R73 / obesity E66) get a first E11 in the second half far more often."""
    dx = events[events.code.str.startswith("DIAGNOSIS//", na=False)]
    category = dx.code.str.slice(20, 23)
    visits = dx.assign(cat=category).groupby(["subject_id", "time"]).cat.agg(set)
    with_precursor = [0, 0]   # [patients, new diabetes]
    without = [0, 0]
    for _, per_visit in visits.groupby(level=0):
        codes = list(per_visit)
        if len(codes) < 4:
            continue
        half = len(codes) // 2
        first = set().union(*codes[:half])
        if "E11" in first:
            continue
        later = "E11" in set().union(*codes[half:])
        bucket = with_precursor if first & {"R73", "E66"} else without
        bucket[0] += 1
        bucket[1] += later
    rate_with, rate_without = with_precursor[1] / with_precursor[0], without[1] / without[0]
    assert with_precursor[0] >= 100 and without[0] >= 300
    print(f"new E11: {rate_with:.3f} with a precursor code (n={with_precursor[0]}), {rate_without:.3f} without "
          f"(n={without[0]})")
    assert rate_with > 2.5 * rate_without, (rate_with, rate_without)
    assert rate_without > 0          # diabetes also starts without a coded precursor: not trivially predictable


def test_truth_onsets_show_the_comorbidity_links(claims_out: Path) -> None:
    truth = pq.read_table(claims_out / "truth" / "patients.parquet").to_pandas()
    diabetes = truth.onset_age_t2_diabetes.notna()
    prediabetes_first = truth.onset_age_prediabetes.notna() & (
        truth.onset_age_prediabetes < truth.onset_age_t2_diabetes.fillna(np.inf))
    assert diabetes[prediabetes_first].mean() > 2 * diabetes[~prediabetes_first].mean()
    ckd = truth.onset_age_ckd.notna()
    assert ckd[diabetes].mean() > 1.5 * ckd[~diabetes].mean()
    visits = pq.read_table(claims_out / "truth" / "visits.parquet").to_pandas()
    assert set(visits.visit_kind) == {"visit_followup", "visit_wellness", "visit_acute", "visit_inpatient"}

def test_truth_visits_match_the_written_diagnoses(claims_out: Path, events) -> None:
    visits = pq.read_table(claims_out / "truth" / "visits.parquet").to_pandas()
    dx = events[events.code.str.startswith("DIAGNOSIS//", na=False)]
    written = dx.groupby(["subject_id", "time"]).code.agg(list)
    assert len(written) == len(visits)
    for row in visits.head(300).itertuples():
        assert written.loc[(row.subject_id, row.time)] == ["DIAGNOSIS//ICD//10//" + c for c in row.icd10_codes]


def _stays_of(n: int, age: float, years: float, onset: np.ndarray | None = None, seed: int = 0):
    from sparseehr.data_pipeline.simulator.claims import ClaimsChunkWriter, ClaimsSettings
    from sparseehr.data_pipeline.simulator.codes import build_codebook
    from sparseehr.data_pipeline.simulator import engine
    import tempfile

    book = build_codebook()
    with tempfile.TemporaryDirectory() as tmp:
        writer = ClaimsChunkWriter(Path(tmp) / "c", book, ClaimsSettings())
        rng = np.random.default_rng(seed)
        start = np.full(n, 17000)
        end = start + int(years * 365.25)
        if onset is None:
            onset = np.full((n, len(engine._BASE)), np.inf, dtype=np.float32)
        personal = engine.personal_tail(rng, book, n, np.full(n, 3.0))
        stays = writer._stays(rng, np.full(n, age), start, end, onset, np.zeros(n, bool), personal)
        writer.close("t", 0, n)
    return book, stays


@pytest.mark.parametrize("age, per_1000", [(30.0, 55.0), (70.0, 253.4)])
def test_inpatient_stays_follow_the_published_rate_by_age(age: float, per_1000: float) -> None:
    # Nobody has a condition, so the morbidity effect is flat: the stay count is Poisson(rate x years) per person,
    # at the HCUP rate of the age band of the enrolment's midpoint (national.INPATIENT_STAYS_PER_1000).
    n, years = 20000, 2.0
    _, stays = _stays_of(n, age, years)
    expected = n * years * per_1000 / 1000
    assert abs(stays[0].size - expected) < 4 * np.sqrt(expected)


def test_inpatient_stays_are_coded_as_facility_claims() -> None:
    from sparseehr.data_pipeline.simulator import clinical

    n = 3000
    onset = np.full((n, len(clinical.CONDITIONS)), np.inf, dtype=np.float32)
    diabetic = np.arange(n) < n // 2
    onset[diabetic, clinical.CONDITION_NAMES.index("t2_diabetes")] = 40.0
    book, (patient, _, _, episode, _, dx_visit, dx_code, px_visit, _) = _stays_of(n, 70.0, 4.0, onset, seed=3)
    per_stay = np.bincount(dx_visit, minlength=patient.size)
    assert per_stay.max() <= 26 and per_stay.min() >= 1           # principal + at most 25 secondary
    first = np.r_[True, dx_visit[1:] != dx_visit[:-1]]
    principal = np.array([book.dx_id(e.icd10) for e in clinical.EPISODES])[episode]
    assert (dx_code[first] == principal[dx_visit[first]]).all()   # the episode's code is the principal diagnosis
    # Morbidity raises the stay rate: diabetics stay more often than the healthy half.
    assert np.isin(patient, np.flatnonzero(diabetic)).mean() > 0.55
    # The chronic comorbidity is coded at most of a diabetic's stays (mimic's 0.85 x 1.3, capped at 1).
    e11 = book.dx_id("E119")
    diabetic_stays = np.flatnonzero(diabetic[patient])
    coded = np.isin(diabetic_stays, dx_visit[dx_code == e11])
    assert coded.mean() > 0.9
    assert np.unique(px_visit).size > 0.4 * patient.size          # most stays carry an ICD-10-PCS procedure
