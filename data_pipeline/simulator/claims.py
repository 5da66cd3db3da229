"""The `claims` system: outpatient and inpatient facility claims written as MEDS v0.4 (the pretraining stand-in).

Layout: OUT/data/{train,tuning,held_out}/NNNN.parquet (subject_id int64, time timestamp[us], code string,
numeric_value float32), OUT/metadata/subject_splits.parquet, OUT/metadata/dataset.json, OUT/truth/*.parquet.
Codes: MEDS_BIRTH, GENDER//F|M and REGION//<census region> (static, null time), DIAGNOSIS//ICD//10//<code>,
PROCEDURE//ICD//10//<pcs>, HCPCS//<cpt>, MEDS_DEATH. No hadm_id column: a visit is a calendar day (all codes of a
visit share its midnight; an inpatient stay's facility claim sits on its admission day).

Most visits are outpatient: few diagnoses, chronic conditions coded mainly at follow-ups, outpatient reasons
(URI, back pain, ...), preventive visits, lab/E&M CPT codes. A minority are inpatient stays at the published
national rate by age (national.py; more for multimorbid patients), coded as a facility claim is: a principal
diagnosis, up to 25 secondary ones (chronic comorbidities at every stay) and ICD-10-PCS procedures. ICD-10 only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import clinical, engine, national
from .codes import CodeBook
from .mimic import HOSPITAL_SEVERITY, seq_num, truth_patients_schema, truth_patients_table, truth_visit_lists
from .writers import ParquetStream

US_PER_DAY = 86_400_000_000
EPOCH_2016 = int(np.datetime64("2016-01-01", "D").astype(np.int64))       # days since 1970-01-01
LAST_DAY = int(np.datetime64("2024-12-31", "D").astype(np.int64))
REGIONS = ("Northeast", "Midwest", "South", "West")
REGION_WEIGHTS = (0.17, 0.21, 0.38, 0.24)
# Region log-hazard shifts (condition -> shift per region): the South's higher obesity/diabetes/hypertension.
REGION_SHIFTS = {"South": {"obesity": 0.2, "t2_diabetes": 0.15, "hypertension": 0.15},
                 "West": {"obesity": -0.15, "tobacco": -0.2}, "Midwest": {"tobacco": 0.15}}
SPLITS = ("train", "tuning", "held_out")
DISTRIBUTION = "sparseehr"


def etl_version() -> str:
    """The installed distribution's version, for MEDS metadata. Read from the package metadata rather than
    `sparseehr.__version__`: importing the top package would load the model package into data_pipeline."""
    try:
        return importlib_metadata.version(DISTRIBUTION)
    except importlib_metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown"

SPLIT_WEIGHTS = (0.8, 0.1, 0.1)

MEDS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                         ("numeric_value", pa.float32())])
SPLITS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("split", pa.string())])
TRUTH_VISITS_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("visit_kind", pa.string()),
    ("episode", pa.string()), ("icd10_codes", pa.list_(pa.string())), ("conditions", pa.list_(pa.string()))])


@dataclass(frozen=True)
class ClaimsSettings:
    """Tunable rates of the claims system."""

    base_visits_per_year: float = 1.6
    visits_per_condition: float = 0.6       # extra visits per year per chronic condition present at enrolment
    max_years: float = 8.0
    followup_weight: float = 9.0            # weight of a routine follow-up against the acute reasons
    wellness_share: float = 0.08            # of non-acute visits
    personal_tail_mean: float = 6.0         # latent minor conditions (engine.personal_tail_means), as in mimic
    personal_recur: float = 0.3             # an outpatient visit codes few of them
    noise_dx_mean: float = 0.35
    # Inpatient facility claims: the national stays-per-1,000 rate by age times this, coded as a hospital codes an
    # admission (the same coding intensities as the mimic system: a facility claim carries the hospital's own
    # billing codes), but at most `stay_max_secondary_dx` secondary diagnoses (the UB-04 claim form's 25 fields).
    stay_rate_scale: float = 1.0
    stay_morbidity_effect: float = 0.35    # log rate ratio per chronic condition present (sicker people stay more)
    stay_chronic_coding: float = 1.3
    stay_personal_recur: float = 0.7
    stay_noise_dx_mean: float = 2.0
    stay_noise_px_mean: float = 1.6
    stay_max_secondary_dx: int = 25

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                raise ValueError(f"ClaimsSettings.{name} must be > 0, got {value}")
        if self.wellness_share >= 1:
            raise ValueError("ClaimsSettings.wellness_share must be < 1")


class ClaimsChunkWriter:
    def __init__(self, out: Path, book: CodeBook, settings: ClaimsSettings):
        self.out = out
        self.book = book
        self.settings = settings
        (out / "data").mkdir(parents=True)
        (out / "metadata").mkdir(parents=True)
        self.splits = ParquetStream(out / "metadata" / "subject_splits.parquet", SPLITS_SCHEMA)
        self.truth_visits = ParquetStream(out / "truth" / "visits.parquet", TRUTH_VISITS_SCHEMA)
        self.truth_patients = ParquetStream(out / "truth" / "patients.parquet", truth_patients_schema())
        self.dx_table, self.dx_priority = engine.dx_table(book, "claims")
        self.cpt_table = engine.cpt_table("claims")
        self.stay_dx_table, self.stay_dx_priority = engine.dx_table(book, "mimic")
        self.px_table = engine.px_table(book)
        self.episode_dx = np.array([book.dx_id(e.icd10) for e in clinical.EPISODES])
        self.region_shift = np.zeros((len(REGIONS), len(clinical.CONDITIONS)), dtype=np.float32)
        for r, region in enumerate(REGIONS):
            for name, value in REGION_SHIFTS.get(region, {}).items():
                self.region_shift[r, clinical.CONDITION_NAMES.index(name)] = value
        self.chunk_index = 0

    def close(self, dataset_name: str, seed: int, n_patients: int) -> None:
        self.splits.close()
        self.truth_visits.close()
        self.truth_patients.close()
        metadata = {"dataset_name": dataset_name, "dataset_version": f"seed{seed}-n{n_patients}",
                    "etl_name": "sparseehr synth --system claims", "etl_version": etl_version(), "meds_version": "0.4",
                    "description": "synthetic outpatient claims (SparseEHR simulator); REGION//<name> is a static "
                                   "row added by this ETL"}
        (self.out / "metadata" / "dataset.json").write_text(json.dumps(metadata, indent=2) + "\n")

    def write_chunk(self, rng: np.random.Generator, first_index: int, n: int) -> None:
        s, book = self.settings, self.book
        subject_id = 1_000_000 + first_index + np.arange(n, dtype=np.int64)
        male = rng.random(n) < 0.48
        region = rng.choice(len(REGIONS), size=n, p=REGION_WEIGHTS)
        split = rng.choice(len(SPLITS), size=n, p=SPLIT_WEIGHTS)
        age0 = np.clip(rng.normal(50, 17, size=n), 18, 90)
        start_day = EPOCH_2016 + rng.integers(0, 4 * 365, size=n)
        years = rng.uniform(1.0, s.max_years, size=n)
        end_day = np.minimum(start_day + (years * 365.25).astype(np.int64), LAST_DAY)
        years = (end_day - start_day) / 365.25
        birth_day = start_day - (age0 * 365.25).astype(np.int64)
        end_age = (age0 + years).astype(np.float32)
        onset = engine.simulate_onsets(rng, male, end_age, hazard_shift=self.region_shift[region])

        # ---- visits: Poisson count over the enrolment, rate rising with the conditions present at enrolment ----
        n_start = (onset <= age0[:, None]).sum(axis=1)
        rate = s.base_visits_per_year + s.visits_per_condition * n_start + 0.02 * np.clip(age0 - 40, 0, None)
        n_vis = np.minimum(np.maximum(rng.poisson(rate * years), 1), 200)
        patient = np.repeat(np.arange(n), n_vis)
        day = start_day[patient] + (rng.random(patient.size) * (end_day - start_day)[patient]).astype(np.int64)
        order = np.lexsort((day, patient))
        patient, day = patient[order], day[order]
        distinct = np.r_[True, (patient[1:] != patient[:-1]) | (day[1:] != day[:-1])]   # one visit per day
        patient, day = patient[distinct], day[distinct]
        n_visits = patient.size
        visit_age = (age0[patient] + (day - start_day[patient]) / 365.25).astype(np.float32)
        active = engine.active_conditions(onset, patient, visit_age)
        episode = engine.draw_episodes(rng, "claims", active, visit_age, male[patient],
                                       none_weight=s.followup_weight * (1 + 0.15 * active.sum(axis=1)))
        wellness = (episode < 0) & (rng.random(n_visits) < s.wellness_share)
        kinds = clinical.VISIT_KINDS
        visit_kind = np.where(episode >= 0, kinds.index(clinical.VISIT_ACUTE),
                              np.where(wellness, kinds.index(clinical.VISIT_WELLNESS),
                                       kinds.index(clinical.VISIT_FOLLOWUP)))
        coding_scale = np.array([1.2, 0.7, 0.6, 1.0])[visit_kind]
        feats = engine.feature_matrix(active, episode, visit_kind)

        # ---- diagnoses and CPT -------------------------------------------------------------------------------------
        v_rows, r_rows = engine.emit(rng, feats, self.dx_table, scale=coding_scale)
        personal = engine.personal_tail(rng, book, n, engine.personal_tail_means(s.personal_tail_mean, age0))
        v_tail, c_tail, p_tail = engine.tail_entries(rng, book, patient, personal, s.personal_recur,
                                                     np.full(n_visits, s.noise_dx_mean))
        has_ep = np.flatnonzero(episode >= 0)
        dx_visit = np.concatenate([has_ep, v_rows, v_tail])
        dx_code = np.concatenate([self.episode_dx[episode[has_ep]], self.dx_table.output[r_rows], c_tail])
        dx_prio = np.concatenate([np.zeros(has_ep.size, np.int64), self.dx_priority[r_rows], p_tail])
        dx_visit, dx_code = engine.order_and_dedup(dx_visit, dx_prio, dx_code, book.dx_icd10.size)
        cv, cr = engine.emit(rng, feats, self.cpt_table)
        cpt_row = self.cpt_table.output[cr]
        cv, cpt_row = engine.order_and_dedup(cv, np.zeros(cv.size, np.int64), cpt_row, len(clinical.CPT_ROWS))

        # A visit at which nothing was coded leaves no claim line: drop it (and its CPT codes).
        coded = np.zeros(n_visits, dtype=bool)
        coded[dx_visit] = True
        new_index = np.cumsum(coded) - 1
        dx_visit = new_index[dx_visit]
        cv, cpt_row = new_index[cv[coded[cv]]], cpt_row[coded[cv]]
        patient, day, visit_kind, episode, active = (a[coded] for a in (patient, day, visit_kind, episode, active))

        # ---- inpatient stays (facility claims), merged into the visit list --------------------------------------
        stays = self._stays(rng, age0, start_day, end_day, onset, male, personal)
        (patient, day, visit_kind, episode, active, dx_visit, dx_code, cv, cpt_row, px_visit, px_code) = _merge(
            (patient, day, visit_kind, episode, active, dx_visit, dx_code, cv, cpt_row), stays)

        # ---- death: some old or multimorbid patients die at the end of their enrolment -----------------------------
        n_end = (onset <= end_age[:, None]).sum(axis=1)
        died = rng.random(n) < 1 / (1 + np.exp(-(-6.5 + 0.07 * (end_age - 50) + 0.25 * n_end)))
        died &= end_day < LAST_DAY

        self._write_meds(subject_id, male, region, split, birth_day, end_day, died, patient, day, dx_visit,
                         dx_code, cv, cpt_row, px_visit, px_code)
        self.splits.write(pa.table([subject_id, pa.array(np.array(SPLITS, dtype=object)[split], pa.string())],
                                   schema=SPLITS_SCHEMA))
        self.truth_patients.write(truth_patients_table(subject_id, male, age0, onset))
        self._write_truth(subject_id[patient], day, visit_kind, episode, active, dx_visit, dx_code)
        self.chunk_index += 1

    def _stays(self, rng, age0, start_day, end_day, onset, male, personal) -> tuple:
        """Inpatient stays of the chunk's patients: (patient, day, visit_kind, episode, active, dx_visit, dx_code,
        px_visit, px_code), visits sorted by (patient, day), entries grouped by visit."""
        s, book = self.settings, self.book
        years = (end_day - start_day) / 365.25
        mid_age = age0 + years / 2
        n_start = (onset <= age0[:, None]).sum(axis=1)
        published = national.inpatient_rate(mid_age)
        morbidity = np.exp(s.stay_morbidity_effect * n_start)
        # Rescale so the chunk's mean rate stays the published age-mixed one: morbidity moves stays between people.
        morbidity *= published.mean() / max((published * morbidity).mean(), 1e-12)
        n_stays = np.minimum(rng.poisson(s.stay_rate_scale * published * morbidity * years), 30)
        patient = np.repeat(np.arange(age0.size), n_stays)
        day = start_day[patient] + (rng.random(patient.size) * (end_day - start_day)[patient]).astype(np.int64)
        order = np.lexsort((day, patient))
        patient, day = patient[order], day[order]
        distinct = np.r_[True, (patient[1:] != patient[:-1]) | (day[1:] != day[:-1])] if patient.size else \
            np.zeros(0, bool)
        patient, day = patient[distinct], day[distinct]
        n_visits = patient.size
        visit_age = (age0[patient] + (day - start_day[patient]) / 365.25).astype(np.float32)
        active = engine.active_conditions(onset, patient, visit_age)
        episode = engine.draw_episodes(rng, "mimic", active, visit_age, male[patient])
        severity = np.array([HOSPITAL_SEVERITY.get(e.name, 0.9) for e in clinical.EPISODES])[episode] * \
            rng.lognormal(0, 0.35, size=n_visits) * (1 + 0.04 * active.sum(axis=1))
        visit_kind = np.full(n_visits, clinical.VISIT_KINDS.index(clinical.VISIT_INPATIENT), dtype=np.int64)
        feats = engine.feature_matrix(active, episode, visit_kind)
        v_rows, r_rows = engine.emit(rng, feats, self.stay_dx_table, scale=np.full(n_visits, s.stay_chronic_coding))
        v_tail, c_tail, p_tail = engine.tail_entries(rng, book, patient, personal, s.stay_personal_recur,
                                                     s.stay_noise_dx_mean * severity * rng.gamma(2.0, 0.5, n_visits))
        dx_visit = np.concatenate([np.arange(n_visits), v_rows, v_tail])
        dx_code = np.concatenate([self.episode_dx[episode], self.stay_dx_table.output[r_rows], c_tail])
        dx_prio = np.concatenate([np.zeros(n_visits, np.int64), self.stay_dx_priority[r_rows], p_tail])
        dx_visit, dx_code = engine.order_and_dedup(dx_visit, dx_prio, dx_code, book.dx_icd10.size)
        keep = seq_num(dx_visit) <= 1 + s.stay_max_secondary_dx          # principal + the claim form's fields
        dx_visit, dx_code = dx_visit[keep], dx_code[keep]
        pv, pr = engine.emit(rng, feats, self.px_table)
        n_tail_px = rng.poisson(s.stay_noise_px_mean * severity * rng.gamma(0.6, 1 / 0.6, size=n_visits))
        tv = np.repeat(np.arange(n_visits), n_tail_px)
        tc = book.n_named_px + engine.draw_zipf(rng, book.pcs_tail_cdf, tv.size)
        px_visit, px_code = engine.order_and_dedup(np.concatenate([pv, tv]), np.zeros(pv.size + tv.size, np.int64),
                                                   np.concatenate([self.px_table.output[pr], tc]),
                                                   book.pcs_codes.size)
        return patient, day, visit_kind, episode, active, dx_visit, dx_code, px_visit, px_code

    def _write_meds(self, subject_id, male, region, split, birth_day, end_day, died, patient, day, dx_visit,
                    dx_code, cpt_visit, cpt_row, px_visit, px_code) -> None:
        n = subject_id.size
        dx_strings = np.array(["DIAGNOSIS//ICD//10//" + c for c in self.book.dx_icd10], dtype=object)
        px_strings = np.array(["PROCEDURE//ICD//10//" + c for c in self.book.pcs_codes], dtype=object)
        cpt_strings = np.array(["HCPCS//" + r[1] for r in clinical.CPT_ROWS], dtype=object)
        static = np.array(["GENDER//F", "GENDER//M"] + [f"REGION//{r}" for r in REGIONS] +
                          ["MEDS_BIRTH", "MEDS_DEATH"], dtype=object)
        dead = np.flatnonzero(died)
        # Rows: (patient, time in days (static rows first), rank, code). lexsort is stable, so diagnoses keep their
        # recorded order within a day.
        row_patient = np.concatenate([np.arange(n), np.arange(n), np.arange(n), patient[dx_visit],
                                      patient[px_visit], patient[cpt_visit], dead])
        row_day = np.concatenate([np.full(n, -1), np.full(n, -1), birth_day, day[dx_visit], day[px_visit],
                                  day[cpt_visit], end_day[dead]])
        row_rank = np.concatenate([np.zeros(n), np.ones(n), np.full(n, 2), np.full(dx_visit.size, 3),
                                   np.full(px_visit.size, 4), np.full(cpt_visit.size, 5), np.full(dead.size, 6)])
        row_code = np.concatenate([static[male.astype(np.int64)], static[2 + region], np.full(n, static[6]),
                                   dx_strings[dx_code], px_strings[px_code], cpt_strings[cpt_row],
                                   np.full(dead.size, static[7])])
        is_static = np.arange(row_day.size) < 2 * n
        order = np.lexsort((row_rank, np.where(is_static, np.iinfo(np.int64).min, row_day), row_patient))
        row_patient, row_day, row_code, is_static = (a[order] for a in (row_patient, row_day, row_code, is_static))
        time = pa.array(row_day * US_PER_DAY, pa.timestamp("us"), mask=is_static)
        table = pa.table([subject_id[row_patient], time, pa.array(row_code, pa.string()),
                          pa.nulls(row_patient.size, pa.float32())], schema=MEDS_SCHEMA)
        row_split = split[row_patient]
        for s_index, s_name in enumerate(SPLITS):
            rows = np.flatnonzero(row_split == s_index)
            if rows.size:
                path = self.out / "data" / s_name / f"{self.chunk_index:04d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table.take(rows), path, compression="zstd")

    def _write_truth(self, subject, day, visit_kind, episode, active, dx_visit, dx_code) -> None:
        codes, conds = truth_visit_lists(self.book, subject.size, active, dx_visit, dx_code)
        episode_names = np.array(clinical.EPISODE_NAMES + ("",), dtype=object)   # -1 -> ""
        kinds = np.array(clinical.VISIT_KINDS, dtype=object)
        self.truth_visits.write(pa.table([
            subject, pa.array(day * US_PER_DAY, pa.timestamp("us")), pa.array(kinds[visit_kind], pa.string()),
            pa.array(episode_names[episode], pa.string()), codes, conds], schema=TRUTH_VISITS_SCHEMA))


def _merge(outpatient: tuple, stays: tuple) -> tuple:
    """One visit list from the outpatient visits and the stays, sorted by (patient, day), entries regrouped.

    outpatient = (patient, day, visit_kind, episode, active, dx_visit, dx_code, cpt_visit, cpt_row);
    stays = (patient, day, visit_kind, episode, active, dx_visit, dx_code, px_visit, px_code).
    Returns (patient, day, visit_kind, episode, active, dx_visit, dx_code, cpt_visit, cpt_row, px_visit, px_code).
    """
    o_patient, o_day, o_kind, o_episode, o_active, o_dxv, o_dxc, o_cv, o_cr = outpatient
    s_patient, s_day, s_kind, s_episode, s_active, s_dxv, s_dxc, s_pv, s_pc = stays
    # A patient in hospital has no office visit that day: the stay replaces an outpatient visit on its day (so a
    # calendar day stays one visit).
    keep = ~np.isin(o_patient.astype(np.int64) * 10_000_000 + o_day, s_patient.astype(np.int64) * 10_000_000 + s_day)
    renumber = np.cumsum(keep) - 1
    o_dxc, o_dxv = o_dxc[keep[o_dxv]], renumber[o_dxv[keep[o_dxv]]]
    o_cr, o_cv = o_cr[keep[o_cv]], renumber[o_cv[keep[o_cv]]]
    o_patient, o_day, o_kind, o_episode, o_active = (a[keep] for a in (o_patient, o_day, o_kind, o_episode, o_active))
    n_out = o_patient.size
    patient, day = np.concatenate([o_patient, s_patient]), np.concatenate([o_day, s_day])
    is_stay = np.r_[np.zeros(n_out, bool), np.ones(s_patient.size, bool)]
    order = np.lexsort((is_stay, day, patient))
    new_of_old = np.empty_like(order)
    new_of_old[order] = np.arange(order.size)

    def regroup(visit: np.ndarray, *values: np.ndarray) -> tuple:
        o = np.argsort(visit, kind="stable")
        return (visit[o],) + tuple(v[o] for v in values)

    dx_visit, dx_code = regroup(new_of_old[np.concatenate([o_dxv, n_out + s_dxv])], np.concatenate([o_dxc, s_dxc]))
    cv, cr = regroup(new_of_old[o_cv], o_cr)
    pv, pc = regroup(new_of_old[n_out + s_pv], s_pc)
    kind = np.concatenate([o_kind.astype(np.int64), s_kind])[order]
    episode = np.concatenate([o_episode, s_episode.astype(o_episode.dtype)])[order]
    active = np.concatenate([o_active, s_active])[order]
    return patient[order], day[order], kind, episode, active, dx_visit, dx_code, cv, cr, pv, pc
