"""Diabetes screening cohort (ICD-10-CM E08-E13) drawn from next-visit instances of one split.

case    = an instance whose next visit carries a diabetes code while no earlier visit does (the first diabetic
          visit of a patient; so at most one case per patient).
control = an instance of a patient who has no diabetes code anywhere in the record (so neither in the history
          nor in the next visit, and a patient diagnosed later never serves as a negative); one instance per
          control patient, drawn uniformly, so that no patient is weighted by its number of visits.
Controls are sampled without replacement, `controls_per_case` x n_cases (1:1 by default), seeded. When fewer
control patients exist, all are used and the shortfall is reported.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from sparseehr.eval.instances import Instance

DIABETES_CATEGORIES = frozenset({"E08", "E09", "E10", "E11", "E12", "E13"})


def is_diabetes_code(code: str) -> bool:
    """ICD-10-CM diabetes mellitus (E08-E13), any depth, with or without a dot.

    >>> is_diabetes_code("E119"), is_diabetes_code("E11.9"), is_diabetes_code("E14"), is_diabetes_code("E1")
    (True, True, False, False)
    """
    return code[:3].upper() in DIABETES_CATEGORIES


def has_diabetes(codes: Iterable[str]) -> bool:
    return any(is_diabetes_code(code) for code in codes)


@dataclass(frozen=True)
class ScreeningCohort:
    instances: list[Instance]
    labels: np.ndarray                 # bool, True = case
    n_case_candidates: int
    n_control_patients_available: int
    n_controls_requested: int

    @property
    def n_cases(self) -> int:
        return int(self.labels.sum())

    @property
    def n_controls(self) -> int:
        return int((~self.labels).sum())

    def summary(self) -> dict:
        return {"n_cases": self.n_cases, "n_controls": self.n_controls,
                "n_control_patients_available": self.n_control_patients_available,
                "n_controls_requested": self.n_controls_requested,
                "controls_short": max(0, self.n_controls_requested - self.n_controls)}


def build_screening_cohort(instances: Sequence[Instance], controls_per_case: float = 1.0,
                           seed: int = 0) -> ScreeningCohort:
    """Cases and seeded controls from one split's instances; ordered by (subject_id, target_visit)."""
    if controls_per_case <= 0:
        raise ValueError(f"controls_per_case must be > 0, got {controls_per_case}")
    cases: list[Instance] = []
    control_candidates: dict[int, list[Instance]] = {}
    ever_diabetic: set[int] = set()
    for inst in instances:
        history_diabetic = any(has_diabetes(visit) for visit in inst.history_dx_codes)
        record_diabetic = any(has_diabetes(visit) for visit in inst.patient.visit_dx_codes)
        if record_diabetic:
            ever_diabetic.add(inst.subject_id)
        if has_diabetes(inst.targets) and not history_diabetic:
            cases.append(inst)
        elif not record_diabetic:
            control_candidates.setdefault(inst.subject_id, []).append(inst)

    rng = np.random.default_rng(seed)
    control_subjects = sorted(s for s in control_candidates if s not in ever_diabetic)
    n_requested = int(round(controls_per_case * len(cases)))
    n_drawn = min(n_requested, len(control_subjects))
    drawn_subjects = rng.choice(len(control_subjects), size=n_drawn, replace=False) if n_drawn else []
    controls = []
    for subject_index in sorted(int(i) for i in drawn_subjects):
        candidates = control_candidates[control_subjects[subject_index]]
        controls.append(candidates[int(rng.integers(len(candidates)))])

    labelled = [(inst, True) for inst in cases] + [(inst, False) for inst in controls]
    labelled.sort(key=lambda pair: (pair[0].subject_id, pair[0].target_visit))
    return ScreeningCohort(instances=[inst for inst, _ in labelled],
                           labels=np.array([label for _, label in labelled], dtype=bool),
                           n_case_candidates=len(cases),
                           n_control_patients_available=len(control_subjects),
                           n_controls_requested=n_requested)
