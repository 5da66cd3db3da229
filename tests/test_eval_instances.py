"""Instances, context truncation, the screening cohort and the baselines on hand-made timelines."""
from __future__ import annotations

import numpy as np
import pytest

from sparseehr.data_pipeline import schema
from sparseehr.eval.baselines import FrequencyBaseline, HistoryBaseline
from sparseehr.eval.cohort import build_screening_cohort, is_diabetes_code
from sparseehr.eval.instances import PatientRecord, build_instances, instance_context, truncate_context

BOS, AGE, SEX, GAP, OPEN, CLOSE, EOR = 0, 10, 11, 20, 21, 22, 1


def make_patient(subject_id: int, visits: list[list[str]], dx_token_ids: dict[str, int] | None = None) -> PatientRecord:
    """A timeline <bos> AGE SEX, then per visit GAP OPEN dx... CLOSE, then <eor>; dx ids default to 30+i."""
    ids, offsets = [BOS, AGE, SEX], []
    for visit in visits:
        offsets.append(len(ids))
        ids += [GAP, OPEN] + [(dx_token_ids or {}).get(code, 30) for code in visit] + [CLOSE]
    ids.append(EOR)
    row = {schema.COL_SUBJECT_ID: subject_id, schema.COL_INPUT_IDS: ids, schema.COL_PREFIX_LEN: 3,
           schema.COL_VISIT_OFFSETS: offsets, schema.COL_VISIT_TIMES: [86400 * (i + 1) for i in range(len(visits))],
           schema.COL_VISIT_DX_CODES: visits}
    return PatientRecord.from_row(row, row_index=subject_id)


def test_instances_are_consecutive_pairs_with_full_targets():
    patient = make_patient(1, [["I10"], ["E119", "I10", "ZZZ99"], [], ["J45"]])
    built = build_instances([patient])
    assert [inst.target_visit for inst in built.instances] == [1, 3]     # the visit without dx is not scored
    assert built.n_pairs_without_dx_target == 1
    first = built.instances[0]
    assert first.targets == {"E119", "I10", "ZZZ99"}                      # out-of-vocabulary code stays in Y
    assert first.context_ids.tolist() == [BOS, AGE, SEX, GAP, OPEN, 30, CLOSE]
    assert first.target_gap_id == GAP and first.prediction_time == 86400
    assert built.instances[1].history_dx_codes == (("I10",), ("E119", "I10", "ZZZ99"), ())


def test_truncation_keeps_prefix_and_most_recent_whole_visits():
    ids = np.arange(100, 112)            # prefix 100..102, visits start at 3 (len 4) and 7 (len 5)
    starts = np.array([3, 7])
    assert truncate_context(ids, 3, starts, 12).tolist() == ids.tolist()
    assert truncate_context(ids, 3, starts, 9).tolist() == [100, 101, 102, 107, 108, 109, 110, 111]
    assert truncate_context(ids, 3, starts, 6).tolist() == [100, 101, 102, 109, 110, 111]   # last visit cut
    with pytest.raises(ValueError, match="demographics prefix"):
        truncate_context(ids, 3, starts, 3)


def test_instance_context_uses_only_the_history_visits():
    patient = make_patient(1, [["A"], ["B", "C"], ["D"]])
    last = build_instances([patient]).instances[-1]       # target visit 2, context = 3 + 4 + 5 tokens
    assert len(last.context_ids) == 12
    assert instance_context(last, 9).tolist() == [BOS, AGE, SEX, GAP, OPEN, 30, 30, CLOSE]   # visit 0 dropped


def test_bad_row_names_the_column_and_row():
    row = {schema.COL_SUBJECT_ID: 5, schema.COL_INPUT_IDS: [0, 1, 2], schema.COL_PREFIX_LEN: 1,
           schema.COL_VISIT_OFFSETS: [1, 2], schema.COL_VISIT_TIMES: [0], schema.COL_VISIT_DX_CODES: [[], []]}
    with pytest.raises(ValueError, match=r"row 4 .*visit_offsets"):
        PatientRecord.from_row(row, 4)


def cohort_patients():
    return [
        make_patient(1, [["I10"], ["E119", "I10"]]),            # case at visit 1
        make_patient(2, [["E119"], ["E119"]]),                  # diabetic history: neither
        make_patient(3, [["I10"], ["J45"], ["K21"]]),           # control candidate (2 instances)
        make_patient(4, [["I10"], ["J45"], ["E11"]]),           # case at visit 2; never a control
        make_patient(5, [["A00"], ["B00"]]),                    # control candidate
        make_patient(6, [["A00"], ["B00"]]),                    # control candidate
    ]


def test_cohort_cases_and_controls_follow_the_rules():
    instances = build_instances(cohort_patients()).instances
    cohort = build_screening_cohort(instances, controls_per_case=1.0, seed=0)
    cases = [(inst.subject_id, inst.target_visit) for inst, y in zip(cohort.instances, cohort.labels) if y]
    controls = [inst.subject_id for inst, y in zip(cohort.instances, cohort.labels) if not y]
    assert cases == [(1, 1), (4, 2)]
    assert len(controls) == 2 and len(set(controls)) == 2 and set(controls) <= {3, 5, 6}
    again = build_screening_cohort(instances, controls_per_case=1.0, seed=0)
    assert [(i.subject_id, i.target_visit) for i in again.instances] == \
           [(i.subject_id, i.target_visit) for i in cohort.instances]


def test_cohort_ratio_and_shortfall():
    instances = build_instances(cohort_patients()).instances
    assert build_screening_cohort(instances, controls_per_case=1.5).n_controls == 3
    short = build_screening_cohort(instances, controls_per_case=2.0)
    assert short.summary() == {"n_cases": 2, "n_controls": 3, "n_control_patients_available": 3,
                               "n_controls_requested": 4, "controls_short": 1}
    seen = {frozenset((i.subject_id, i.target_visit) for i in
                      build_screening_cohort(instances, controls_per_case=0.5, seed=s).instances) for s in range(20)}
    assert len(seen) > 1                                         # the seed matters


def test_diabetes_code_range():
    assert [is_diabetes_code(c) for c in ["E08", "E0800", "E13.9", "E14", "E07", "O2441", "e119"]] == \
           [True, True, True, False, False, False, True]


COUNTS = {"I10": 10, "E119": 6, "J45": 4, "A00": 2}


def test_frequency_baseline_is_the_population_ranking():
    patient = make_patient(4, [["I10"], ["J45"], ["E11"]])
    ranking = FrequencyBaseline(COUNTS).rank(build_instances([patient]).instances, top_n=3)[0]
    assert ranking.top_codes == ("I10", "E119", "J45")
    assert ranking.diabetes_rank == 1 and ranking.diabetes_score == pytest.approx(6 / 22)


def test_history_baseline_recency_then_count_then_backfill():
    patient = make_patient(4, [["I10"], ["J45"], ["E11"]])
    ranking = HistoryBaseline(COUNTS).rank(build_instances([patient]).instances, top_n=10)[-1]
    assert ranking.top_codes == ("J45", "I10", "E119", "A00")     # J45 most recent, then I10, then backfill
    assert ranking.diabetes_rank == 2 and ranking.diabetes_score == pytest.approx(1 / 3)
    tied = make_patient(9, [["X", "Y"], ["Y", "Z"], ["Q"]])
    ranking = HistoryBaseline(COUNTS).rank(build_instances([tied]).instances, top_n=4)[-1]
    assert ranking.top_codes == ("Y", "Z", "X", "I10")            # Y and Z equally recent, Y seen twice
    assert ranking.diabetes_rank == 4                               # E119 after X, Y, Z and I10
