"""The pure half of the peer benchmark (`sparseehr bench peer`): what a MEDS generative peer reads and writes,
converted to and from our instances. Nothing here imports or runs the peer, so it is tested without it.

- Vocabulary mapping. The peer is trained on the raw claims MEDS codes (full ICD-10-CM such as
  ``DIAGNOSIS//ICD//10//E119``); a target DATA_DIR holds our harmonized categories (``E11``). A category is written
  for the peer as the claims training split's most widespread full code of that category (`CodeMap`); a category
  with no claims code is left out of the peer's input (it stays a target, and a miss, as for our model).
  Generated codes come back through `peer_code_category` (ICD-10-CM truncated to our category length).
- Target MEDS. `target_meds_table` writes each target patient's record as MEDS rows: GENDER, MEDS_BIRTH (from the
  age bucket), then every visit at its own timestamp (`meds_visit_times`: visit start, made strictly increasing
  and at least `VISIT_SPACING_US` apart so that a prediction time can sit between two visits).
- Labels. `label_table`: one row per next-visit instance, ``prediction_time`` = the end of visit t (its timestamp
  plus `PREDICTION_OFFSET_US`, before visit t+1 whether the peer reads events ``<`` or ``<=`` the time).
- Rankings. `rank_trajectories`: the diagnosis categories of each trajectory's first generated visit after the
  prediction time, ranked by the share of the N trajectories that contain them, ties by first appearance.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import meds
import numpy as np
import pyarrow as pa

from sparseehr.data_pipeline import schema
from sparseehr.data_pipeline.readers.meds import (
    BIRTH_CODE, CPT_PREFIXES_MEDS, ICD_PREFIXES, MEDS_CODE, MEDS_SUBJECT, MEDS_TIME, SEX_PREFIX_MEDS,
)
from sparseehr.eval.cohort import is_diabetes_code
from sparseehr.eval.instances import Instance, PatientRecord
from sparseehr.eval.ranking import Ranking, ranking_from_scores

PREDICTION_TIME = meds.LabelSchema.prediction_time_name
BOOLEAN_VALUE = meds.LabelSchema.boolean_value_name
NUMERIC_VALUE = meds.DataSchema.numeric_value_name
ICD10 = "10//"
DX10_PREFIX = ICD_PREFIXES[schema.KIND_DX] + ICD10      # DIAGNOSIS//ICD//10//
PX10_PREFIX = ICD_PREFIXES[schema.KIND_PX] + ICD10      # PROCEDURE//ICD//10//
CPT_PREFIX_MEDS = CPT_PREFIXES_MEDS[0]                  # HCPCS//
TIMELINE_PREFIX = "TIMELINE//"                          # the peer's own codes: time deltas, start, end
TIMELINE_END = TIMELINE_PREFIX + "END"                  # the peer's end-of-record code (ends a trajectory)
US_PER_S = 1_000_000
VISIT_SPACING_US = 2 * US_PER_S      # written visits are at least 2 s apart ...
PREDICTION_OFFSET_US = US_PER_S      # ... and a prediction time sits 1 s after visit t, before visit t+1
SECONDS_PER_YEAR = 365.25 * 86_400
TIME_TYPE = pa.timestamp("us")
MEDS_TABLE_SCHEMA = pa.schema([(MEDS_SUBJECT, pa.int64()), (MEDS_TIME, TIME_TYPE), (MEDS_CODE, pa.string()),
                               (NUMERIC_VALUE, pa.float32())])
LABEL_SCHEMA = pa.schema([(MEDS_SUBJECT, pa.int64()), (PREDICTION_TIME, TIME_TYPE), (BOOLEAN_VALUE, pa.bool_())])


# ------------------------------------------------------------------------------------------------------------
# Vocabulary mapping
# ------------------------------------------------------------------------------------------------------------
def peer_code_category(code: str, dx_prefix_len: int = 3) -> str | None:
    """Our diagnosis category of a peer code; None for anything that is not an ICD-10-CM diagnosis.

    >>> peer_code_category("DIAGNOSIS//ICD//10//E119"), peer_code_category("HCPCS//99213")
    ('E11', None)
    """
    if not code.startswith(DX10_PREFIX):
        return None
    value = code[len(DX10_PREFIX):].replace(".", "").upper()
    return value[:dx_prefix_len] if len(value) >= dx_prefix_len else None


@dataclass(frozen=True)
class CodeMap:
    """Our canonical codes -> the peer's input codes (each the claims code of its class with the largest count)."""

    dx: Mapping[str, str]           # ICD-10-CM category -> DIAGNOSIS//ICD//10//<full code>
    px: Mapping[str, str]           # ICD-10-PCS prefix -> PROCEDURE//ICD//10//<full code>
    cpt: Mapping[str, str]          # CPT/HCPCS code -> HCPCS//<code>

    def peer_code(self, token: str) -> str | None:
        """The peer code of one of our tokens (DX:/PX:/CPT:), None when the claims corpus has no counterpart."""
        for prefix, table in ((schema.DX_PREFIX, self.dx), (schema.PX_PREFIX, self.px), (schema.CPT_PREFIX, self.cpt)):
            if token.startswith(prefix):
                return table.get(token[len(prefix):])
        return None


def code_map_from_counts(counts: Mapping[str, int], dx_prefix_len: int = 3, px_prefix_len: int = 3) -> CodeMap:
    """Build the CodeMap from claims code counts ({MEDS code: rows}); ties go to the lexicographically first code.

    >>> m = code_map_from_counts({"DIAGNOSIS//ICD//10//E119": 5, "DIAGNOSIS//ICD//10//E1165": 9, "HCPCS//99213": 1})
    >>> m.dx["E11"], m.cpt["99213"], m.peer_code("DX:I10")
    ('DIAGNOSIS//ICD//10//E1165', 'HCPCS//99213', None)
    """
    best: dict[tuple[str, str], tuple[int, str]] = {}

    def offer(kind: str, key: str, code: str, n: int) -> None:
        current = best.get((kind, key))
        if current is None or (-n, code) < (-current[0], current[1]):
            best[(kind, key)] = (n, code)

    for code, n in counts.items():
        if code.startswith(DX10_PREFIX) and (category := peer_code_category(code, dx_prefix_len)):
            offer("dx", category, code, n)
        elif code.startswith(PX10_PREFIX) and len(code) - len(PX10_PREFIX) >= px_prefix_len:
            offer("px", code[len(PX10_PREFIX):len(PX10_PREFIX) + px_prefix_len], code, n)
        elif code.startswith(CPT_PREFIXES_MEDS):
            offer("cpt", code.split("//", 1)[1], code, n)
    tables: dict[str, dict[str, str]] = {"dx": {}, "px": {}, "cpt": {}}
    for (kind, key), (_, code) in sorted(best.items()):
        tables[kind][key] = code
    return CodeMap(**tables)


# ------------------------------------------------------------------------------------------------------------
# Target MEDS and labels
# ------------------------------------------------------------------------------------------------------------
def meds_visit_times(visit_times_s: Sequence[int]) -> np.ndarray:
    """Visit timestamps (µs) as written for the peer: the visit start, pushed later where needed so that every
    visit is at least VISIT_SPACING_US after the previous one (two visits never share a timestamp).

    >>> meds_visit_times([10, 10, 20]).tolist()
    [10000000, 12000000, 20000000]
    """
    times = np.asarray(visit_times_s, dtype=np.int64) * US_PER_S
    for i in range(1, len(times)):
        times[i] = max(times[i], times[i - 1] + VISIT_SPACING_US)
    return times


def _age_midpoint_years(token: str) -> float | None:
    """'AGE:45-49' -> 47.5, 'AGE:90+' -> 92.5; None for an unknown age."""
    value = token[len(schema.AGE_PREFIX):]
    if value.endswith("+"):
        return float(value[:-1]) + schema.AGE_BUCKET_YEARS / 2
    low, sep, high = value.partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        return None
    return (int(low) + int(high) + 1) / 2


@dataclass
class TargetMeds:
    """A target written as MEDS for the peer: the rows, the peer subject id of each of our subjects, and counts."""

    table: pa.Table
    peer_ids: dict[int, int]
    counts: Counter = field(default_factory=Counter)


def target_meds_table(patients: Sequence[PatientRecord], id_to_token: Sequence[str], code_map: CodeMap,
                      first_peer_id: int) -> TargetMeds:
    """MEDS rows of the target patients (peer subject ids first_peer_id, first_peer_id + 1, ... in order).

    Diagnoses come from `visit_dx_codes` (every harmonized code, also those outside our vocabulary); procedures
    and CPT codes from the visit's tokens. Codes without a claims counterpart are counted and left out.
    """
    subjects: list[int] = []
    times: list[int | None] = []
    codes: list[str] = []
    counts: Counter = Counter()
    peer_ids: dict[int, int] = {}

    def add(subject: int, time: int | None, code: str) -> None:
        subjects.append(subject)
        times.append(time)
        codes.append(code)

    for offset, patient in enumerate(patients):
        peer_id = first_peer_id + offset
        if patient.subject_id in peer_ids:
            raise ValueError(f"subject_id {patient.subject_id} occurs twice in the target patients")
        peer_ids[patient.subject_id] = peer_id
        visit_us = meds_visit_times(patient.visit_times)
        for token in (id_to_token[i] for i in patient.input_ids[:patient.prefix_len]):
            if token.startswith(schema.SEX_PREFIX) and token[len(schema.SEX_PREFIX):] in schema.SEX_VALUES:
                add(peer_id, None, SEX_PREFIX_MEDS + token[len(schema.SEX_PREFIX):])
            elif token.startswith(schema.AGE_PREFIX) and len(visit_us) and (age := _age_midpoint_years(token)):
                add(peer_id, int(visit_us[0] - age * SECONDS_PER_YEAR * US_PER_S), BIRTH_CODE)
        bounds = list(patient.visit_offsets) + [len(patient.input_ids)]
        for visit, time in enumerate(visit_us):
            wanted = [schema.DX_PREFIX + code for code in patient.visit_dx_codes[visit]]
            wanted += [token for token in (id_to_token[i] for i in patient.input_ids[bounds[visit]:bounds[visit + 1]])
                       if token.startswith((schema.PX_PREFIX, schema.CPT_PREFIX))]
            for token in dict.fromkeys(wanted):
                code = code_map.peer_code(token)
                counts["codes_written" if code else "codes_without_claims_counterpart"] += 1
                if code:
                    add(peer_id, int(time), code)
    table = pa.table([pa.array(subjects, pa.int64()), pa.array(times, TIME_TYPE), pa.array(codes, pa.string()),
                      pa.nulls(len(codes), pa.float32())], schema=MEDS_TABLE_SCHEMA)
    return TargetMeds(table, peer_ids, counts)


def prediction_time_us(instance: Instance) -> int:
    """The end of visit t (the instance's last observed visit) on the peer's clock."""
    return int(meds_visit_times(instance.patient.visit_times)[instance.target_visit - 1]) + PREDICTION_OFFSET_US


def label_table(instances: Sequence[Instance], peer_ids: Mapping[int, int]) -> pa.Table:
    """The MEDS label file: one row per instance (subject_id = the peer id, prediction_time = end of visit t).
    boolean_value is a placeholder the schema asks for: generation reads only subject and time."""
    keys = [(peer_ids[inst.subject_id], prediction_time_us(inst)) for inst in instances]
    if len(set(keys)) != len(keys):
        raise ValueError("two instances share a (subject, prediction_time): their trajectories could not be told apart")
    return pa.table([pa.array([k[0] for k in keys], pa.int64()), pa.array([k[1] for k in keys], TIME_TYPE),
                     pa.array([False] * len(keys), pa.bool_())], schema=LABEL_SCHEMA)


# ------------------------------------------------------------------------------------------------------------
# Trajectories -> rankings
# ------------------------------------------------------------------------------------------------------------
def first_visit_categories(rows: Iterable[tuple[int, str]], prediction_time: int, dx_prefix_len: int = 3) -> list[str]:
    """Diagnosis categories of the first generated visit after `prediction_time`, in generated order.

    rows: one trajectory's (time µs, code) in generated order. The first visit is the rows at the first timestamp
    after the prediction time that holds a code other than a TIMELINE// one (a timestamp holding only time deltas
    is no visit); it ends where the timestamp changes again or at TIMELINE//END. Rows at or before the prediction
    time (the rest of visit t) and non-diagnosis rows (deltas, static codes, procedures) are skipped.

    >>> first_visit_categories([(5, "DIAGNOSIS//ICD//10//I10"), (7, "TIMELINE//DELTA//years"),
    ...                         (9, "TIMELINE//DELTA//years"), (9, "DIAGNOSIS//ICD//10//E119"), (9, "GENDER//F"),
    ...                         (12, "DIAGNOSIS//ICD//10//J45")], 5)
    ['E11']
    """
    visit_time = None
    categories: list[str] = []
    for time, code in rows:
        if code == TIMELINE_END:
            break
        if time is None or time <= prediction_time:
            continue
        if visit_time is not None and time != visit_time:
            break
        if code.startswith(TIMELINE_PREFIX):
            continue
        visit_time = time
        category = peer_code_category(code, dx_prefix_len)
        if category is not None and category not in categories:
            categories.append(category)
    return categories


def rank_visits(visits: Sequence[Sequence[str]], n_trajectories: int, top_n: int) -> Ranking:
    """Rank codes by the share of the N trajectories whose first visit holds them; ties by first appearance
    (trajectory order, then generated order). A trajectory that produced nothing still counts in N.

    >>> rank_visits([["B"], ["A", "B"], [], ["A"]], 4, 10).top_codes
    ('B', 'A')
    """
    if len(visits) > n_trajectories:
        raise ValueError(f"{len(visits)} trajectories but N = {n_trajectories}")
    seen: Counter = Counter()
    for visit in visits:
        seen.update(set(visit))
    order = list(dict.fromkeys(code for visit in visits for code in visit))
    scores = np.array([seen[code] / n_trajectories for code in order])
    mask = np.array([is_diabetes_code(code) for code in order], dtype=bool)
    return ranking_from_scores(order, scores, mask, top_n)


def rank_trajectories(trajectories: Sequence[pa.Table], labels: pa.Table, n_trajectories: int, top_n: int,
                      dx_prefix_len: int = 3) -> tuple[list[Ranking], Counter]:
    """One Ranking per label row (in label order) from the peer's N trajectory tables of one split.

    trajectories: the N tables (one per sample), each with subject_id, time, code, prediction_time rows in
    generated order. Returns the rankings and counts (label rows without any trajectory, empty first visits).
    """
    if len(trajectories) != n_trajectories:
        raise ValueError(f"expected {n_trajectories} trajectory files, found {len(trajectories)}")
    keys = list(zip(labels.column(MEDS_SUBJECT).to_pylist(), _as_us(labels.column(PREDICTION_TIME))))
    index = {key: i for i, key in enumerate(keys)}
    visits: list[list[list[str]]] = [[] for _ in keys]
    counts: Counter = Counter()
    for sample, table in enumerate(trajectories):
        missing = {MEDS_SUBJECT, MEDS_TIME, MEDS_CODE, PREDICTION_TIME} - set(table.column_names)
        if missing:
            raise ValueError(f"trajectory {sample}: missing column(s) {sorted(missing)}")
        grouped: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for subject, time, code, pred in zip(table.column(MEDS_SUBJECT).to_pylist(), _as_us(table.column(MEDS_TIME)),
                                             table.column(MEDS_CODE).to_pylist(),
                                             _as_us(table.column(PREDICTION_TIME))):
            grouped.setdefault((subject, pred), []).append((time, code))
        unknown = set(grouped) - set(index)
        if unknown:
            raise ValueError(f"trajectory {sample}: {len(unknown)} (subject, prediction_time) pairs not in the "
                             f"label file, e.g. {sorted(unknown)[0]}")
        for key, i in index.items():
            if key in grouped:
                visit = first_visit_categories(grouped[key], key[1], dx_prefix_len)
                counts["empty_first_visits"] += not visit
                visits[i].append(visit)
            else:
                counts["missing_trajectories"] += 1
    rankings = [rank_visits(v, n_trajectories, top_n) for v in visits]
    return rankings, counts


def _as_us(column: pa.ChunkedArray) -> list[int | None]:
    """Timestamps of any unit as integer microseconds (None stays None)."""
    return column.cast(TIME_TYPE).cast(pa.int64()).to_pylist()
