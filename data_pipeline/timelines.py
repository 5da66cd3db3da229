"""Events -> per-patient typed-token timelines, vectorised with arrow/numpy.

Layout of one patient's timeline (the vocabulary's ids are assembled later, in tokenization.py; here visit codes
are ids into the partition's own token table, `Timelines.token_strings`, and the prefix is strings):
    <bos> AGE:<bucket at first visit> SEX:<F|M|<unk>> [REGION:<name>]
    then per visit, in time order:  GAP:<bin since previous visit> VISIT:open DX:.. PX:.. CPT:.. VISIT:close
    <eor>
Within a visit: diagnoses, then procedures, then CPT/HCPCS, each in recorded order = event time, then seq_num,
then source row order (MIMIC diagnoses share the admission time, so seq_num decides; MIMIC procedures follow
their chart dates, as they do in MIMIC-MEDS); a code repeated within a visit appears once (first occurrence).
Age buckets are 5 years wide (0-4 .. 85-89) plus 90+; MIMIC caps ages at 91, so finer tails would be noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparseehr.data_pipeline.arrays import distinct, keep_first, pack, run_starts
from sparseehr.data_pipeline.harmonize import ORDER, TOKEN, TOKEN_STRING, HarmonizedEvents
from sparseehr.data_pipeline.readers.common import dictionary_codes
from sparseehr.data_pipeline.schema import (
    AGE_BUCKET_YEARS, AGE_PREFIX, AGE_TOKENS, CODE, CODE_SYSTEMS, COL_PREFIX_TOKENS, COL_VISIT_DX_CODES,
    COL_VISIT_TIMES, COL_VISIT_TOKENS, EVENT_KINDS, GAP_BINS, GAP_FIRST_TOKEN, GAP_PREFIX, GAP_TOKENS, KIND, KIND_DX,
    REGION_PREFIX, SEQ_NUM, SEX_PREFIX, SEX_TOKENS, SEX_UNK_TOKEN, SEX_VALUES, SUBJECT_ID, SYSTEM, SYSTEM_BIRTH,
    SYSTEM_REGION, SYSTEM_SEX, TIME, UNK_VALUE, VISIT_ID,
)

AGE_MAX_PLAUSIBLE = 125   # older than any recorded human: a date error, not a 90+ patient
SECONDS_PER_DAY = 86_400
SEQ_MAX = (1 << 16) - 1               # seq_num beyond this (or missing) sorts last
OFFSET_MINUTES_MAX = (1 << 24) - 1    # event time within its visit, minutes, centred: +-16 years
DAYS_PER_YEAR = 365.25


def gap_token_index(delta_seconds: np.ndarray) -> np.ndarray:
    """Index into GAP_TOKENS[1:] of each (non-negative) gap.

    >>> [GAP_TOKENS[1 + i] for i in gap_token_index(np.array([0, 86_400 * 45, 86_400 * 4000]))]
    ['GAP:<1D', 'GAP:1-3M', 'GAP:5Y+']
    """
    bounds = np.array([b for b, _ in GAP_BINS[:-1]], np.float64) * SECONDS_PER_DAY
    return np.searchsorted(bounds, delta_seconds, side="right")


def age_tokens(age_years: np.ndarray) -> pa.Array:
    """AGE token per age (NaN or negative -> AGE:<unk>).

    >>> age_tokens(np.array([47.9, 0.0, 93.0, np.nan])).to_pylist()
    ['AGE:45-49', 'AGE:0-4', 'AGE:90+', 'AGE:<unk>']
    """
    unknown = len(AGE_TOKENS) - 1
    valid = np.isfinite(age_years) & (age_years >= 0)
    bucket = np.where(valid, np.minimum(np.floor(np.nan_to_num(age_years) / AGE_BUCKET_YEARS), unknown - 1), unknown)
    return pa.array(AGE_TOKENS).take(pa.array(bucket.astype(np.int64)))


@dataclass
class Timelines:
    """Per-patient staging table (strings) and the per-event arrays the vocabulary and code counts need."""

    table: pa.Table                 # subject_id, prefix_tokens, visit_times, visit_tokens (int32 rows of
                                    # token_strings), visit_dx_codes
    event_patient: np.ndarray       # patient row of each kept code event
    event_token: np.ndarray         # its token id, a row of token_strings
    token_strings: pa.Array         # distinct token strings (e.g. DX:E11)
    region_tokens: pa.Array         # per patient REGION token or null
    counts: dict[str, int] = field(default_factory=dict)


def _dense_rank(sorted_unique: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    position = np.minimum(np.searchsorted(sorted_unique, values), max(len(sorted_unique) - 1, 0))
    return position, sorted_unique[position] == values if len(sorted_unique) else np.zeros(len(values), bool)


def _first_per_patient(subjects: np.ndarray, rows: np.ndarray, patient_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each patient, the first of `rows` (event row numbers) whose subject is that patient; -1 if none."""
    position, found = _dense_rank(patient_ids, subjects)
    first = np.full(len(patient_ids), -1, np.int64)
    order = np.flatnonzero(found)[::-1]  # reversed so the earliest row writes last and wins
    first[position[order]] = rows[order]
    return first, first >= 0


def _visit_rows(visits: pa.Table, visit_subject: np.ndarray, patient_ids: np.ndarray, code_events: pa.Table
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row in `visits` of each code event (by subject and visit id), and whether it has one."""
    event_subject = code_events[SUBJECT_ID].to_numpy()
    visit_ids = visits[VISIT_ID].to_numpy()
    if len(distinct(visit_ids)) == len(visit_ids):
        # fast path (MIMIC hadm_id, unique across subjects): one hash lookup, then check the subject
        row = pc.index_in(code_events[VISIT_ID], value_set=visits[VISIT_ID])
        row = pc.fill_null(row, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        found = row >= 0
        found[found] = visit_subject[row[found]] == event_subject[found]
        return row[found], found
    # general path (ids repeat across subjects, e.g. calendar days): composite dense key
    visit_ids_sorted = distinct(visit_ids)
    visit_key = np.searchsorted(patient_ids, visit_subject) * len(visit_ids_sorted) + np.searchsorted(
        visit_ids_sorted, visit_ids)
    key_order = np.argsort(visit_key, kind="stable")
    subj_rank, subj_found = _dense_rank(patient_ids, event_subject)
    vid_rank, vid_found = _dense_rank(visit_ids_sorted, code_events[VISIT_ID].to_numpy(zero_copy_only=False))
    event_key = subj_rank * len(visit_ids_sorted) + vid_rank
    position = np.minimum(np.searchsorted(visit_key[key_order], event_key), max(len(visit_ids) - 1, 0))
    found = subj_found & vid_found & (visit_key[key_order][position] == event_key) if len(visit_ids) else \
        np.zeros(len(event_subject), bool)
    return key_order[position][found], found


def build_timelines(harmonized: HarmonizedEvents, visits: pa.Table) -> Timelines:
    """Group harmonized events into per-patient timelines (patients without any visit are left out)."""
    counts: dict[str, int] = {}
    visits = visits.sort_by([(SUBJECT_ID, "ascending"), (TIME, "ascending"), (VISIT_ID, "ascending")])
    visit_subject = visits[SUBJECT_ID].to_numpy()
    visit_time_us = visits[TIME].cast(pa.int64()).to_numpy()
    # visits are sorted by subject, so each patient is one run of equal subject ids
    run_start = run_starts(visit_subject)
    patient_ids, patient_first_visit = visit_subject[run_start], run_start
    visits_per_patient = np.diff(np.concatenate([run_start, [len(visit_subject)]]))
    n_patients, n_visits = len(patient_ids), visits.num_rows
    counts.update(patients=n_patients, visits=n_visits,
                  consecutive_visit_pairs=int(n_visits - n_patients))
    patient_visit_offsets = np.concatenate([[0], np.cumsum(visits_per_patient)]).astype(np.int32)

    # ---- code events -> visit row ----
    code_events = harmonized.code_events
    event_visit, in_visit = _visit_rows(visits, visit_subject, patient_ids, code_events)
    counts["code_events_without_visit"] = int((~in_visit).sum())
    if not in_visit.all():
        code_events = code_events.filter(pa.array(in_visit))

    # ---- order within visit: kind (dx, px, cpt), event time, seq_num, source order; then de-duplicate ----
    # Events arrive in source order within each kind, so a STABLE sort keeps source order among ties.
    event_kind = dictionary_codes(code_events[KIND])
    seq = np.clip(pc.fill_null(code_events[SEQ_NUM], SEQ_MAX).to_numpy(zero_copy_only=False), 0, SEQ_MAX)
    event_time = pc.fill_null(code_events[TIME].cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    minutes = (event_time - visit_time_us[event_visit]) // 60_000_000 + OFFSET_MINUTES_MAX // 2
    minutes = np.clip(minutes, 0, OFFSET_MINUTES_MAX)
    packed = pack([(event_visit, max(n_visits - 1, 1)), (event_kind, len(EVENT_KINDS)), (minutes, OFFSET_MINUTES_MAX),
                   (seq, SEQ_MAX)])
    order = np.argsort(packed, kind="stable") if packed is not None else np.lexsort(
        (code_events[ORDER].to_numpy(), seq, event_time, event_kind, event_visit))
    token_id = code_events[TOKEN].to_numpy()[order].astype(np.int64)
    event_visit, event_kind = event_visit[order], event_kind[order]
    n_tokens = max(harmonized.tokens.num_rows, 1)
    keep = keep_first(event_visit * n_tokens + token_id)
    counts["duplicate_codes_in_visit_collapsed"] = int(len(order) - keep.sum())
    token_id, event_visit, event_kind = token_id[keep], event_visit[keep], event_kind[keep]
    token_strings = harmonized.tokens[TOKEN_STRING].combine_chunks()
    # ids, not strings: tokenize maps each distinct token to the vocabulary once instead of every occurrence
    tokens = pa.array(token_id.astype(np.int32))

    visit_token_offsets = np.concatenate([[0], np.cumsum(np.bincount(event_visit, minlength=n_visits))])
    visit_tokens = pa.ListArray.from_arrays(pa.array(visit_token_offsets.astype(np.int32)), tokens)
    is_dx = event_kind == EVENT_KINDS.index(KIND_DX)
    dx_offsets = np.concatenate([[0], np.cumsum(np.bincount(event_visit[is_dx], minlength=n_visits))])
    dx_codes = harmonized.tokens[CODE].combine_chunks().take(pa.array(token_id[is_dx]))
    visit_dx = pa.ListArray.from_arrays(pa.array(dx_offsets.astype(np.int32)), dx_codes)
    pvo = pa.array(patient_visit_offsets)

    # ---- demographics prefix ----
    demo = harmonized.demographics
    systems = dictionary_codes(demo[SYSTEM])
    demo_subject = demo[SUBJECT_ID].to_numpy()
    rows = np.arange(demo.num_rows)
    first_visit_us = visit_time_us[patient_first_visit]

    birth_row, has_birth = _first_per_patient(demo_subject[systems == CODE_SYSTEMS.index(SYSTEM_BIRTH)],
                                              rows[systems == CODE_SYSTEMS.index(SYSTEM_BIRTH)], patient_ids)
    birth_us = demo[TIME].cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) if demo.num_rows \
        else np.zeros(0)
    age = np.full(n_patients, np.nan)
    age[has_birth] = (first_visit_us[has_birth] - birth_us[birth_row[has_birth]]) / 1e6 / SECONDS_PER_DAY / DAYS_PER_YEAR
    # A birth after the first visit (a late MEDS_BIRTH, a negative anchor_age, a mistyped year such as 1650) or an
    # age beyond AGE_MAX_PLAUSIBLE cannot be bucketed: it becomes AGE:<unk> and is counted by reason.
    birth_after_visit = np.isfinite(age) & (age < 0)
    implausible_age = np.isfinite(age) & (age > AGE_MAX_PLAUSIBLE)
    age[birth_after_visit | implausible_age] = np.nan
    age_token = age_tokens(age)

    sex_row, has_sex = _first_per_patient(demo_subject[systems == CODE_SYSTEMS.index(SYSTEM_SEX)],
                                          rows[systems == CODE_SYSTEMS.index(SYSTEM_SEX)], patient_ids)
    # patients without a row index row 0 (masked below); a source with no demographic row at all needs one to exist
    demo_codes = demo[CODE].combine_chunks() if demo.num_rows else pa.array([""], pa.string())
    sex_value = pc.utf8_upper(pc.utf8_trim_whitespace(demo_codes.take(pa.array(np.maximum(sex_row, 0)))))
    sex_known = has_sex & pc.fill_null(pc.is_in(sex_value, value_set=pa.array(SEX_VALUES)), False).to_numpy(
        zero_copy_only=False)
    sex_token = pc.if_else(pa.array(sex_known), pc.binary_join_element_wise(SEX_PREFIX, sex_value, ""),
                           SEX_UNK_TOKEN)

    region_row, has_region = _first_per_patient(demo_subject[systems == CODE_SYSTEMS.index(SYSTEM_REGION)],
                                                rows[systems == CODE_SYSTEMS.index(SYSTEM_REGION)], patient_ids)
    region_value = pc.utf8_trim_whitespace(demo_codes.take(pa.array(np.maximum(region_row, 0))))
    region_token = pc.if_else(pa.array(has_region), pc.binary_join_element_wise(REGION_PREFIX, region_value, ""),
                              pa.scalar(None, pa.string()))

    # interleave AGE, SEX and (when present) REGION per patient
    per_patient = 2 + has_region.astype(np.int64)
    prefix_offsets = np.concatenate([[0], np.cumsum(per_patient)])
    flat = pa.concat_arrays([age_token, sex_token.cast(pa.string()), region_token.cast(pa.string()).filter(
        pa.array(has_region))])
    take = np.empty(prefix_offsets[-1], np.int64)
    take[prefix_offsets[:-1]] = np.arange(n_patients)
    take[prefix_offsets[:-1] + 1] = n_patients + np.arange(n_patients)
    take[prefix_offsets[:-1][has_region] + 2] = 2 * n_patients + np.arange(int(has_region.sum()))
    prefix_tokens = pa.ListArray.from_arrays(pa.array(prefix_offsets.astype(np.int32)), flat.take(pa.array(take)))

    visit_times = pa.ListArray.from_arrays(pvo, pa.array(visit_time_us // 1_000_000, pa.int64()))
    table = pa.table({
        SUBJECT_ID: pa.array(patient_ids, pa.int64()),
        COL_PREFIX_TOKENS: prefix_tokens,
        COL_VISIT_TIMES: visit_times,
        COL_VISIT_TOKENS: pa.ListArray.from_arrays(pvo, visit_tokens),
        COL_VISIT_DX_CODES: pa.ListArray.from_arrays(pvo, visit_dx),
    })
    event_patient = np.searchsorted(patient_visit_offsets, event_visit, side="right") - 1
    counts.update(age_unknown=int((~np.isfinite(age)).sum()), age_unknown_no_birth=int((~has_birth).sum()),
                  age_unknown_birth_after_first_visit=int(birth_after_visit.sum()),
                  age_unknown_over_max=int(implausible_age.sum()), sex_unknown=int((~sex_known).sum()),
                  patients_with_region=int(has_region.sum()), code_tokens=len(token_id))
    return Timelines(table, event_patient, token_id, token_strings, region_token.cast(pa.string()), counts)
