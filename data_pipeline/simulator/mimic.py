"""The `mimic` system: inpatient admissions written as MIMIC-IV `hosp` tables (the zero-shot transfer target).

Layout: OUT/hosp/{patients,admissions,diagnoses_icd,procedures_icd,hcpcsevents}.csv.gz (column names, order and
pyarrow-inferred types of the real release) and OUT/truth/{patients,visits}.parquet (never read by the pipeline).

MIMIC-IV conventions reproduced: dates shifted by a per-patient whole number of years (100-190) into the future;
anchor_age is the age in anchor_year; anchor_year_group is the REAL 3-year range containing anchor_year; ages
over 89 are written 91; dod only within a year after the last discharge. ICD-9-CM is used for admissions before the
real 2015-10-01 switch (a per-patient shifted date) and ICD-10 after; ICD-9 diagnoses come from the ICD-10 truth
through the reverse GEM, ICD-9 procedures from the paired table (tail procedures are drawn per system).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import clinical, engine
from .codes import CodeBook
from .writers import CsvGzWriter, ParquetStream

SECONDS_PER_DAY = 86400
ICD10_SWITCH = np.datetime64("2015-10-01", "s").astype(np.int64)       # real calendar, seconds since epoch
ANCHOR_GROUPS = np.array([2008, 2011, 2014, 2017])
ANCHOR_GROUP_WEIGHTS = np.array([0.15, 0.28, 0.32, 0.25])

PATIENTS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("gender", pa.string()), ("anchor_age", pa.int64()),
                             ("anchor_year", pa.int64()), ("anchor_year_group", pa.string()),
                             ("dod", pa.date32())])
ADMISSIONS_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("admittime", pa.timestamp("s")),
    ("dischtime", pa.timestamp("s")), ("deathtime", pa.timestamp("s")), ("admission_type", pa.string()),
    ("admit_provider_id", pa.string()), ("admission_location", pa.string()), ("discharge_location", pa.string()),
    ("insurance", pa.string()), ("language", pa.string()), ("marital_status", pa.string()), ("race", pa.string()),
    ("edregtime", pa.timestamp("s")), ("edouttime", pa.timestamp("s")), ("hospital_expire_flag", pa.int64())])
DIAGNOSES_SCHEMA = pa.schema([("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("seq_num", pa.int64()),
                              ("icd_code", pa.string()), ("icd_version", pa.int64())])
PROCEDURES_SCHEMA = pa.schema([("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("seq_num", pa.int64()),
                               ("chartdate", pa.date32()), ("icd_code", pa.string()), ("icd_version", pa.int64())])
HCPCS_SCHEMA = pa.schema([("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("chartdate", pa.date32()),
                          ("hcpcs_cd", pa.string()), ("seq_num", pa.int64()), ("short_description", pa.string())])
TABLES = {"patients": PATIENTS_SCHEMA, "admissions": ADMISSIONS_SCHEMA, "diagnoses_icd": DIAGNOSES_SCHEMA,
          "procedures_icd": PROCEDURES_SCHEMA, "hcpcsevents": HCPCS_SCHEMA}
TRUTH_VISITS_SCHEMA = pa.schema([
    ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("admittime", pa.timestamp("s")),
    ("icd_version", pa.int64()), ("episode", pa.string()), ("icd10_codes", pa.list_(pa.string())),
    ("conditions", pa.list_(pa.string()))])

# Categorical columns that carry no clinical signal: (values, probabilities). Not codes, so named here.
EMERGENCY_TYPES = (("EW EMER.", "URGENT", "DIRECT EMER.", "OBSERVATION ADMIT", "EU OBSERVATION",
                    "DIRECT OBSERVATION", "AMBULATORY OBSERVATION"), (0.42, 0.16, 0.06, 0.17, 0.12, 0.04, 0.03))
OBSERVATION_TYPES = {"OBSERVATION ADMIT", "EU OBSERVATION", "DIRECT OBSERVATION", "AMBULATORY OBSERVATION"}
ELECTIVE_TYPES = (("ELECTIVE", "SURGICAL SAME DAY ADMISSION"), (0.45, 0.55))
EMERGENCY_LOCATIONS = (("EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL", "CLINIC REFERRAL",
                        "TRANSFER FROM SKILLED NURSING FACILITY", "PHYSICIAN REFERRAL"),
                       (0.62, 0.17, 0.04, 0.04, 0.03, 0.10))
ELECTIVE_LOCATIONS = (("PHYSICIAN REFERRAL", "PROCEDURE SITE", "CLINIC REFERRAL"), (0.8, 0.12, 0.08))
DISCHARGE_LOCATIONS = (("HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB",
                        "CHRONIC/LONG TERM ACUTE CARE", "HOSPICE", "AGAINST ADVICE", None),
                       (0.30, 0.30, 0.15, 0.06, 0.03, 0.02, 0.02, 0.12))
LANGUAGES = (("ENGLISH", "?"), (0.92, 0.08))
MARITAL = (("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None), (0.38, 0.32, 0.15, 0.1, 0.05))
RACES = (("WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO - PUERTO RICAN", "ASIAN", "OTHER", "UNKNOWN",
          "UNABLE TO OBTAIN", "WHITE - OTHER EUROPEAN", "BLACK/CAPE VERDEAN", "HISPANIC OR LATINO"),
         (0.62, 0.15, 0.04, 0.04, 0.04, 0.05, 0.01, 0.02, 0.015, 0.015))
HOSPITAL_SEVERITY = {"sepsis": 1.6, "ami": 1.2, "stroke": 1.3, "pneumonia": 1.2, "gi_bleed": 1.1, "aki": 1.1,
                     "hf_exacerbation": 1.1, "copd_exacerbation": 1.0, "hip_fracture": 1.2}


@dataclass(frozen=True)
class MimicSettings:
    """Tunable rates of the mimic system (defaults tuned against the real demo: docs/simulator.md)."""

    mean_extra_admissions: float = 2.0     # admissions per patient = 1 + NegBin(mean this, dispersion below)
    admissions_dispersion: float = 0.35
    gap_median_days: float = 70.0           # discharge -> next admission, log-normal
    gap_sigma: float = 1.5
    los_median_days: float = 4.5
    personal_tail_mean: float = 6.0         # latent minor conditions (engine.personal_tail_means), as in claims
    personal_recur: float = 0.7             # an admission codes most of them
    noise_dx_mean: float = 2.0              # one-off tail diagnoses per admission (times severity)
    noise_px_mean: float = 1.6              # tail procedures per admission (times severity)
    chronic_coding: float = 1.3             # multiplies the chronic-code probabilities of clinical.DX_ROWS

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                raise ValueError(f"MimicSettings.{name} must be > 0, got {value}")


def _choice(rng: np.random.Generator, spec: tuple, n: int) -> np.ndarray:
    values = np.array(spec[0], dtype=object)
    p = np.array(spec[1], dtype=np.float64)
    return values[rng.choice(len(values), size=n, p=p / p.sum())]


def _provider_pool() -> np.ndarray:
    rng = np.random.default_rng(7)
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    chars = alphabet[rng.integers(0, alphabet.size, size=(1200, 5))]
    return np.array(["P" + "".join(row) for row in chars], dtype=object)


_PROVIDERS = _provider_pool()
_CPT_DESCRIPTIONS = np.array([r[4] for r in clinical.CPT_ROWS], dtype=object)
_CPT_CODES = np.array([r[1] for r in clinical.CPT_ROWS], dtype=object)


def _years_to_seconds(years: np.ndarray) -> np.ndarray:
    """January 1st of each (integer) year, in seconds since the Unix epoch."""
    return (np.asarray(years) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)


class MimicChunkWriter:
    """Generates chunks of patients and appends them to the open tables."""

    def __init__(self, out: Path, book: CodeBook, settings: MimicSettings):
        self.book = book
        self.settings = settings
        hosp = out / "hosp"
        hosp.mkdir(parents=True)
        self.tables = {name: CsvGzWriter(hosp / f"{name}.csv.gz", schema) for name, schema in TABLES.items()}
        self.truth_visits = ParquetStream(out / "truth" / "visits.parquet", TRUTH_VISITS_SCHEMA)
        self.truth_patients = ParquetStream(out / "truth" / "patients.parquet", truth_patients_schema())
        self.dx_table, self.dx_priority = engine.dx_table(book, "mimic")
        self.px_table = engine.px_table(book)
        self.cpt_table = engine.cpt_table("mimic")
        self.episode_dx = np.array([book.dx_id(e.icd10) for e in clinical.EPISODES])
        self.n_admissions = 0

    def close(self) -> None:
        for writer in self.tables.values():
            writer.close()
        self.truth_visits.close()
        self.truth_patients.close()

    def write_chunk(self, rng: np.random.Generator, first_index: int, n: int) -> None:
        s, book = self.settings, self.book
        subject_id = 10_000_000 + first_index + np.arange(n, dtype=np.int64)
        male = rng.random(n) < 0.53
        group = rng.choice(ANCHOR_GROUPS.size, size=n, p=ANCHOR_GROUP_WEIGHTS)
        real_anchor_year = ANCHOR_GROUPS[group] + rng.integers(0, 3, size=n)
        shift_years = rng.integers(100, 191, size=n)
        age0 = np.where(rng.random(n) < 0.85, rng.normal(65, 15, size=n), rng.uniform(18, 60, size=n))
        age0 = np.clip(age0, 18, 95)

        # ---- admissions timeline (real calendar, seconds since epoch) -------------------------------------------
        n_adm = 1 + rng.negative_binomial(s.admissions_dispersion,
                                          s.admissions_dispersion / (s.admissions_dispersion + s.mean_extra_admissions),
                                          size=n)
        n_adm = np.minimum(n_adm, 40)
        patient = np.repeat(np.arange(n), n_adm)                          # [V]
        n_visits = patient.size
        first_of = np.concatenate([[0], np.cumsum(n_adm)[:-1]])
        k = np.arange(n_visits) - first_of[patient]                       # admission number within patient
        anchor_start = _years_to_seconds(real_anchor_year)
        los_days = rng.lognormal(np.log(s.los_median_days), 0.8, size=n_visits)
        gap_days = rng.lognormal(np.log(s.gap_median_days), s.gap_sigma, size=n_visits)
        # admit_k = first admit + sum_{j<k} (los_j + gap_j): a cumulative sum restarted per patient
        step = np.where(k == 0, 0.0, np.roll(los_days + gap_days, 1))
        offset_days = np.cumsum(step)
        offset_days -= offset_days[first_of][patient]
        first_day = rng.uniform(0, 365, size=n)
        admit_real = (anchor_start[patient] + ((first_day[patient] + offset_days) * SECONDS_PER_DAY)).astype(np.int64)
        admit_real = admit_real // 60 * 60                                 # whole minutes, as in MIMIC
        visit_age = (age0[patient] + (admit_real - anchor_start[patient]) / (365.25 * SECONDS_PER_DAY))

        # ---- latent conditions, episodes, death -----------------------------------------------------------------
        end_age = np.zeros(n)
        np.maximum.at(end_age, patient, visit_age)
        onset = engine.simulate_onsets(rng, male, end_age.astype(np.float32))
        active = engine.active_conditions(onset, patient, visit_age.astype(np.float32))
        episode = engine.draw_episodes(rng, "mimic", active, visit_age, male[patient])
        severity_by_episode = np.array([HOSPITAL_SEVERITY.get(e.name, 0.9) for e in clinical.EPISODES])
        elective_episode = np.array([e.elective for e in clinical.EPISODES])
        is_elective = elective_episode[episode]
        severity = severity_by_episode[episode] * rng.lognormal(0, 0.35, size=n_visits) * \
            (1 + 0.04 * active.sum(axis=1)) * np.where(is_elective, 0.6, 1.0)
        n_active = active.sum(axis=1)
        death_logit = -4.6 + 0.035 * (visit_age - 65) + 0.15 * n_active + 1.4 * (severity - 1)
        died = rng.random(n_visits) < 1 / (1 + np.exp(-death_logit))
        # Nobody is admitted after dying: drop admissions that follow an in-hospital death.
        died_before = np.cumsum(died) - died
        died_before -= died_before[first_of][patient]
        keep = died_before == 0
        (patient, k, admit_real, visit_age, active, episode, severity, died, los_days, is_elective) = (
            a[keep] for a in (patient, k, admit_real, visit_age, active, episode, severity, died, los_days,
                              is_elective))
        n_visits = patient.size
        los_days = los_days * np.where(is_elective, 0.6, 1.0) * np.sqrt(severity)

        # ---- admission table fields ---------------------------------------------------------------------------
        adm_type = np.where(is_elective, _choice(rng, ELECTIVE_TYPES, n_visits), _choice(rng, EMERGENCY_TYPES, n_visits))
        observation = np.isin(adm_type, list(OBSERVATION_TYPES))
        los_days = np.where(observation, rng.lognormal(np.log(1.3), 0.6, size=n_visits), los_days)
        disch_real = admit_real + (np.maximum(los_days, 0.04) * SECONDS_PER_DAY).astype(np.int64) // 60 * 60
        location = np.where(is_elective, _choice(rng, ELECTIVE_LOCATIONS, n_visits),
                            _choice(rng, EMERGENCY_LOCATIONS, n_visits))
        discharge = np.where(died, "DIED", _choice(rng, DISCHARGE_LOCATIONS, n_visits)).astype(object)
        from_ed = location == "EMERGENCY ROOM"
        edreg = admit_real - (rng.uniform(0.5, 9, size=n_visits) * 3600).astype(np.int64) // 60 * 60
        edout = admit_real + (rng.uniform(0.1, 2, size=n_visits) * 3600).astype(np.int64) // 60 * 60

        shift_s = _years_to_seconds(real_anchor_year + shift_years) - anchor_start     # per patient
        shift_v = shift_s[patient]
        icd_version = np.where(admit_real < ICD10_SWITCH, 9, 10)
        hadm_id = 20_000_000 + ((self.n_admissions + np.arange(n_visits, dtype=np.int64)) * 7919 + 1234567) \
            % 10_000_000
        self.n_admissions += n_visits

        insurance = np.where(visit_age >= 65, _choice(rng, (("Medicare", "Other", "Medicaid"), (0.78, 0.17, 0.05)),
                                                       n_visits),
                             _choice(rng, (("Other", "Medicaid", "Medicare"), (0.7, 0.24, 0.06)), n_visits))
        lang, marital, race = (_choice(rng, spec, n) for spec in (LANGUAGES, MARITAL, RACES))

        def ts(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
            return pa.array(values, pa.timestamp("s"), mask=mask)

        self.tables["admissions"].write(pa.table([
            subject_id[patient], hadm_id, ts(admit_real + shift_v), ts(disch_real + shift_v),
            ts(disch_real + shift_v, mask=~died), pa.array(adm_type, pa.string()),
            pa.array(_PROVIDERS[rng.integers(0, _PROVIDERS.size, size=n_visits)], pa.string()),
            pa.array(location, pa.string()), pa.array(discharge, pa.string()), pa.array(insurance, pa.string()),
            pa.array(lang[patient], pa.string()), pa.array(marital[patient], pa.string()),
            pa.array(race[patient], pa.string()), ts(edreg + shift_v, mask=~from_ed), ts(edout + shift_v,
                                                                                         mask=~from_ed),
            died.astype(np.int64)], schema=ADMISSIONS_SCHEMA))

        # ---- patients ---------------------------------------------------------------------------------------------
        last_disch = np.zeros(n, dtype=np.int64)
        np.maximum.at(last_disch, patient, disch_real)
        in_hospital_death = np.zeros(n, dtype=bool)
        in_hospital_death[patient[died]] = True
        later_death = (~in_hospital_death) & (rng.random(n) < 0.06 + 0.004 * np.clip(age0 - 50, 0, None))
        dod_real = np.where(in_hospital_death, last_disch,
                            last_disch + (rng.uniform(1, 365, size=n) * SECONDS_PER_DAY).astype(np.int64))
        dod_days = (dod_real + shift_s) // SECONDS_PER_DAY
        anchor_age = np.where(age0 >= 90, 91, np.floor(age0)).astype(np.int64)
        group_label = np.array([f"{y} - {y + 2}" for y in ANCHOR_GROUPS], dtype=object)[group]
        self.tables["patients"].write(pa.table([
            subject_id, pa.array(np.where(male, "M", "F"), pa.string()), anchor_age,
            (real_anchor_year + shift_years).astype(np.int64), pa.array(group_label, pa.string()),
            pa.array(dod_days.astype(np.int32), pa.date32(), mask=~(in_hospital_death | later_death))],
            schema=PATIENTS_SCHEMA))
        self.truth_patients.write(truth_patients_table(subject_id, male, age0, onset))

        # ---- diagnoses ---------------------------------------------------------------------------------------------
        visit_kind = np.where(observation, clinical.VISIT_KINDS.index(clinical.VISIT_OBSERVATION),
                              clinical.VISIT_KINDS.index(clinical.VISIT_ACUTE))
        feats = engine.feature_matrix(active, episode, visit_kind)
        v_rows, r_rows = engine.emit(rng, feats, self.dx_table, scale=np.full(n_visits, s.chronic_coding))
        personal = engine.personal_tail(rng, book, n, engine.personal_tail_means(s.personal_tail_mean, age0))
        v_tail, c_tail, p_tail = engine.tail_entries(rng, book, patient, personal, s.personal_recur,
                                                     s.noise_dx_mean * severity * rng.gamma(2.0, 0.5, size=n_visits))
        dx_visit = np.concatenate([np.arange(n_visits), v_rows, v_tail])
        dx_code = np.concatenate([self.episode_dx[episode], self.dx_table.output[r_rows], c_tail])
        dx_prio = np.concatenate([np.zeros(n_visits, np.int64), self.dx_priority[r_rows], p_tail])
        dx_visit, dx_code = engine.order_and_dedup(dx_visit, dx_prio, dx_code, book.dx_icd10.size)
        self._write_truth(subject_id[patient], hadm_id, admit_real + shift_v, icd_version, episode, active,
                          dx_visit, dx_code)
        # Written code: ICD-10 truth, or its reverse-GEM ICD-9 before the switch (distinct ICD-10 codes may share
        # one ICD-9 code: keep the first).
        nine = icd_version[dx_visit] == 9
        written = np.where(nine, book.dx_icd10.size + book.dx_icd9_id[dx_code], dx_code)
        w_visit, w_code = engine.order_and_dedup(dx_visit, np.arange(dx_visit.size), written,
                                                 book.dx_icd10.size + book.icd9_codes.size)
        strings = np.concatenate([book.dx_icd10, book.icd9_codes])
        self.tables["diagnoses_icd"].write(pa.table([
            subject_id[patient][w_visit], hadm_id[w_visit], seq_num(w_visit),
            pa.array(strings[w_code], pa.string()), icd_version[w_visit].astype(np.int64)],
            schema=DIAGNOSES_SCHEMA))

        # ---- procedures -------------------------------------------------------------------------------------------
        pv, pr = engine.emit(rng, feats, self.px_table)
        # Gamma-mixed Poisson: procedure counts are over-dispersed (many admissions with none, a few with many).
        n_tail_px = rng.poisson(s.noise_px_mean * severity * np.where(observation, 0.3, 1.0)
                                * rng.gamma(0.6, 1 / 0.6, size=n_visits))
        tv = np.repeat(np.arange(n_visits), n_tail_px)
        tc = book.n_named_px + engine.draw_zipf(rng, book.pcs_tail_cdf, tv.size)
        px_visit = np.concatenate([pv, tv])
        px_code = np.concatenate([self.px_table.output[pr], tc])
        px_day = (rng.random(px_visit.size) * np.maximum(los_days[px_visit], 0.01)).astype(np.int64)
        px_visit, px_code, px_day = engine.order_and_dedup(px_visit, px_day, px_code, book.pcs_codes.size, px_day)
        px_nine = icd_version[px_visit] == 9
        px_strings = np.where(px_nine, book.icd9_px_codes[px_code], book.pcs_codes[px_code])
        chart_day = (admit_real[px_visit] + shift_v[px_visit]) // SECONDS_PER_DAY + px_day
        self.tables["procedures_icd"].write(pa.table([
            subject_id[patient][px_visit], hadm_id[px_visit], seq_num(px_visit),
            pa.array(chart_day.astype(np.int32), pa.date32()), pa.array(px_strings, pa.string()),
            icd_version[px_visit].astype(np.int64)], schema=PROCEDURES_SCHEMA))

        # ---- hcpcsevents (CPT) -------------------------------------------------------------------------------------
        cv, cr = engine.emit(rng, feats, self.cpt_table)
        cpt_row = self.cpt_table.output[cr]
        cv, cpt_row = engine.order_and_dedup(cv, np.zeros(cv.size, np.int64), cpt_row, len(clinical.CPT_ROWS))
        cpt_day = (admit_real[cv] + shift_v[cv]) // SECONDS_PER_DAY
        self.tables["hcpcsevents"].write(pa.table([
            subject_id[patient][cv], hadm_id[cv], pa.array(cpt_day.astype(np.int32), pa.date32()),
            pa.array(_CPT_CODES[cpt_row], pa.string()), seq_num(cv),
            pa.array(_CPT_DESCRIPTIONS[cpt_row], pa.string())], schema=HCPCS_SCHEMA))

    def _write_truth(self, subject, hadm_id, admit_shifted, icd_version, episode, active, dx_visit, dx_code):
        codes, conds = truth_visit_lists(self.book, subject.size, active, dx_visit, dx_code)
        names = np.array(clinical.EPISODE_NAMES, dtype=object)
        self.truth_visits.write(pa.table([subject, hadm_id, pa.array(admit_shifted, pa.timestamp("s")),
                                          icd_version.astype(np.int64), pa.array(names[episode], pa.string()),
                                          codes, conds], schema=TRUTH_VISITS_SCHEMA))


def truth_visit_lists(book: CodeBook, n_visits: int, active: np.ndarray, dx_visit: np.ndarray,
                      dx_code: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
    """Per visit: the true ICD-10 codes (entries grouped by visit) and the names of the active conditions."""
    offsets = np.searchsorted(dx_visit, np.arange(n_visits + 1))
    codes = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(book.dx_icd10[dx_code], pa.string()))
    cv, cc = np.nonzero(active)
    cond_offsets = np.searchsorted(cv, np.arange(n_visits + 1))
    conds = pa.ListArray.from_arrays(pa.array(cond_offsets, pa.int32()),
                                     pa.array(np.array(clinical.CONDITION_NAMES, dtype=object)[cc], pa.string()))
    return codes, conds


def seq_num(visit: np.ndarray) -> np.ndarray:
    """1-based position of each entry within its visit (entries are grouped by visit)."""
    if visit.size == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, visit[1:] != visit[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, visit.size]))
    return (np.arange(visit.size) - run_start + 1).astype(np.int64)


def truth_patients_schema() -> pa.Schema:
    return pa.schema([("subject_id", pa.int64()), ("male", pa.bool_()), ("age_at_start", pa.float32())]
                     + [(f"onset_age_{name}", pa.float32()) for name in clinical.CONDITION_NAMES])


def truth_patients_table(subject_id: np.ndarray, male: np.ndarray, age0: np.ndarray, onset: np.ndarray) -> pa.Table:
    """Latent truth per patient: onset age of each condition (null = no onset during the simulated life)."""
    cols = [subject_id, male, age0.astype(np.float32)]
    cols += [pa.array(onset[:, j], pa.float32(), mask=~np.isfinite(onset[:, j])) for j in range(onset.shape[1])]
    return pa.table(cols, schema=truth_patients_schema())
