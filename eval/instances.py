"""Next-visit instances: every consecutive visit pair (t, t+1) of every patient in a split.

context = the tokens through visit t (<bos> + demographics prefix + visits 0..t, ending with VISIT:close);
target  = visit t+1's harmonized ICD-10-CM codes (``visit_dx_codes``), INCLUDING codes outside the vocabulary,
          which stay in the target set and count as misses.
Pairs whose next visit has no diagnosis code cannot have a recall and are counted, not scored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from sparseehr.data_pipeline import schema

PATIENT_COLUMNS = (schema.COL_SUBJECT_ID, schema.COL_INPUT_IDS, schema.COL_PREFIX_LEN, schema.COL_VISIT_OFFSETS,
                   schema.COL_VISIT_TIMES, schema.COL_VISIT_DX_CODES)


@dataclass(frozen=True)
class PatientRecord:
    """One patient row of DATA_DIR/patients, validated; arrays are shared by all of the patient's instances."""

    subject_id: int
    input_ids: np.ndarray          # [n_tokens] int64
    prefix_len: int
    visit_offsets: np.ndarray      # [n_visits] index of each visit's GAP token
    visit_times: np.ndarray        # [n_visits] epoch seconds
    visit_dx_codes: tuple[tuple[str, ...], ...]

    @classmethod
    def from_row(cls, row: Mapping, row_index: int, source: str = "patients") -> "PatientRecord":
        missing = [c for c in PATIENT_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{source} row {row_index}: missing column(s) {missing}")

        def fail(column: str, why: str) -> ValueError:
            return ValueError(f"{source} row {row_index} ({schema.COL_SUBJECT_ID}={row[schema.COL_SUBJECT_ID]}): "
                              f"column {column!r}: {why}")

        input_ids = np.asarray(row[schema.COL_INPUT_IDS], dtype=np.int64)
        offsets = np.asarray(row[schema.COL_VISIT_OFFSETS], dtype=np.int64)
        times = np.asarray(row[schema.COL_VISIT_TIMES], dtype=np.int64)
        dx_codes = tuple(tuple(str(code) for code in visit) for visit in row[schema.COL_VISIT_DX_CODES])
        prefix_len = int(row[schema.COL_PREFIX_LEN])
        if not 0 < prefix_len <= len(input_ids):
            raise fail(schema.COL_PREFIX_LEN, f"{prefix_len} is outside 1..{len(input_ids)}")
        if len(times) != len(offsets) or len(dx_codes) != len(offsets):
            raise fail(schema.COL_VISIT_OFFSETS, f"{len(offsets)} visits but {len(times)} visit times and "
                                                 f"{len(dx_codes)} visit code lists")
        if len(offsets) and (offsets[0] < prefix_len or np.any(np.diff(offsets) <= 0)
                             or offsets[-1] >= len(input_ids)):
            raise fail(schema.COL_VISIT_OFFSETS, "offsets must increase, start at or after the prefix and lie "
                                                 "inside input_ids")
        return cls(int(row[schema.COL_SUBJECT_ID]), input_ids, prefix_len, offsets, times, dx_codes)


@dataclass(frozen=True)
class Instance:
    """Predict visit `target_visit` of `patient` from everything before it."""

    patient: PatientRecord = field(repr=False)
    target_visit: int              # t + 1 (>= 1)
    targets: frozenset[str]

    @property
    def subject_id(self) -> int:
        return self.patient.subject_id

    @property
    def context_end(self) -> int:
        """Index just past visit t's VISIT:close, i.e. the target visit's GAP token."""
        return int(self.patient.visit_offsets[self.target_visit])

    @property
    def context_ids(self) -> np.ndarray:
        return self.patient.input_ids[: self.context_end]

    @property
    def target_gap_id(self) -> int:
        """The target visit's own GAP token, taken from the record (the documented rollout choice)."""
        return int(self.patient.input_ids[self.context_end])

    @property
    def prediction_time(self) -> int:
        """Start of the last observed visit (epoch seconds): the moment the prediction is made."""
        return int(self.patient.visit_times[self.target_visit - 1])

    @property
    def history_dx_codes(self) -> tuple[tuple[str, ...], ...]:
        return self.patient.visit_dx_codes[: self.target_visit]


@dataclass
class InstanceSet:
    instances: list[Instance]
    n_patients_seen: int = 0
    n_pairs_without_dx_target: int = 0

    @property
    def n_patients(self) -> int:
        return len({inst.subject_id for inst in self.instances})


def patient_records(rows: Iterable[Mapping], source: str = "patients") -> list[PatientRecord]:
    return [PatientRecord.from_row(row, i, source) for i, row in enumerate(rows)]


def build_instances(patients: Iterable[PatientRecord]) -> InstanceSet:
    """All consecutive visit pairs whose next visit has at least one diagnosis code, in patient/visit order."""
    result = InstanceSet(instances=[])
    for patient in patients:
        result.n_patients_seen += 1
        for target_visit in range(1, len(patient.visit_offsets)):
            targets = frozenset(patient.visit_dx_codes[target_visit])
            if not targets:
                result.n_pairs_without_dx_target += 1
                continue
            result.instances.append(Instance(patient, target_visit, targets))
    return result


def truncate_context(context_ids: np.ndarray, prefix_len: int, visit_starts: np.ndarray, budget: int) -> np.ndarray:
    """Fit a context into `budget` tokens: keep the <bos>+demographics prefix and the most recent WHOLE visits.

    visit_starts: offsets of the context's visits (each visit's GAP token), all < len(context_ids).
    If even the most recent visit does not fit beside the prefix, its most recent tokens are kept (the only case
    in which a visit is cut, stated in docs/eval.md).
    """
    if len(context_ids) <= budget:
        return context_ids
    if prefix_len >= budget:
        raise ValueError(f"the model window leaves {budget} context tokens, fewer than the {prefix_len}-token "
                         f"demographics prefix")
    room = budget - prefix_len
    end = len(context_ids)
    # Earliest visit start such that visits from there to the end fit in the room.
    fitting = [int(s) for s in visit_starts if end - s <= room]
    tail_start = min(fitting) if fitting else end - room
    return np.concatenate([context_ids[:prefix_len], context_ids[tail_start:]])


def instance_context(instance: Instance, budget: int) -> np.ndarray:
    """The instance's context truncated to `budget` tokens (see truncate_context)."""
    patient = instance.patient
    return truncate_context(instance.context_ids, patient.prefix_len,
                            patient.visit_offsets[: instance.target_visit], budget)


def load_splits(data_dir: Path, splits: Sequence[str], max_patients: int | None, seed: int) -> list[PatientRecord]:
    """Patients of the given splits (pooled, in split order); `max_patients` draws a seeded subset per split."""
    from sparseehr.data_pipeline.datadir import load_patients  # DATA_DIR reading belongs to data_pipeline

    patients: list[PatientRecord] = []
    for split in dict.fromkeys(splits):
        dataset = load_patients(data_dir, split)
        rows = list(range(len(dataset)))
        if max_patients is not None and max_patients < len(dataset):
            rows = sorted(np.random.default_rng(seed).choice(len(dataset), size=max_patients, replace=False).tolist())
        source = f"{data_dir}/{schema.DATA_PATIENTS_DIR} split {split}"
        patients += [PatientRecord.from_row(row, i, source) for i, row in zip(rows, dataset.select(rows))]
    return patients
