"""MIMIC-IV `hosp` reader: patients, admissions, diagnoses_icd, procedures_icd and (optional) hcpcsevents.

Columns and types are those of the released CSVs (`.csv.gz`, `.csv` or `.parquet`). Every code event takes its
admission's id (the visit); its time is the admission time, or for procedures and HCPCS their chart date, which
orders them within the visit (the visit itself always starts at admittime).
Referential problems (a diagnosis whose subject is not in patients, a code row whose hadm_id is not in
admissions) are errors, not drops: they mean the extract is inconsistent, and a silent drop would hide that.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.partitions import PartitionPlan, PartitionSpill
from sparseehr.data_pipeline.readers.common import (
    EVENTS_SCHEMA, TIME_TYPE, VISITS_SCHEMA, RawRecords, csv_line, find_table_file, first_false, make_events,
    read_table, years_to_timestamps,
)
from sparseehr.data_pipeline.readers.streaming import READ_AHEAD_BLOCKS, TableStream
from sparseehr.data_pipeline.schema import (
    KIND_CPT, KIND_DEMOGRAPHIC, KIND_DX, KIND_PX, SUBJECT_ID, SYSTEM_BIRTH, SYSTEM_CPT, SYSTEM_ICD9, SYSTEM_ICD10,
    SYSTEM_SEX, TIME, VISIT_ID,
)

# MIMIC-IV column names: this reader is their one home (they are the source format, not our schema).
MIMIC_SUBJECT, MIMIC_HADM, MIMIC_SEQ = "subject_id", "hadm_id", "seq_num"
MIMIC_ICD_CODE, MIMIC_ICD_VERSION = "icd_code", "icd_version"
PATIENTS, ADMISSIONS, DIAGNOSES, PROCEDURES, HCPCS = (
    "patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents")

PATIENT_COLUMNS = {MIMIC_SUBJECT: pa.int64(), "gender": pa.string(), "anchor_age": pa.int64(),
                   "anchor_year": pa.int64()}
ADMISSION_COLUMNS = {MIMIC_SUBJECT: pa.int64(), MIMIC_HADM: pa.int64(), "admittime": pa.timestamp("s")}
ICD_COLUMNS = {MIMIC_SUBJECT: pa.int64(), MIMIC_HADM: pa.int64(), MIMIC_SEQ: pa.int64(),
               MIMIC_ICD_CODE: pa.string(), MIMIC_ICD_VERSION: pa.int64()}
MIMIC_CHARTDATE = "chartdate"
PROCEDURE_COLUMNS = dict(ICD_COLUMNS, **{MIMIC_CHARTDATE: pa.date32()})
HCPCS_COLUMNS = {MIMIC_SUBJECT: pa.int64(), MIMIC_HADM: pa.int64(), "hcpcs_cd": pa.string(), MIMIC_SEQ: pa.int64(),
                 MIMIC_CHARTDATE: pa.date32()}


def _require_rows(path: Path, table: pa.Table) -> None:
    if table.num_rows == 0:
        raise PrepareError(path, "the table has no data rows", row=2)


class _AdmissionIndex:
    """Row in admissions of each hadm_id, built once and queried per streamed block (a hash lookup would
    rebuild its table for every block). MIMIC hadm_ids are dense 8-digit numbers, so a direct table over their
    range is a few MB and one gather per row; sparse ids fall back to a binary search."""

    DENSE_SLACK = 32   # table entries allowed per admission (MIMIC-IV: 431k stays over a 10M id range, 23)

    def __init__(self, hadm: np.ndarray) -> None:
        self.order = np.argsort(hadm, kind="stable")
        self.sorted = hadm[self.order]
        self.low = int(self.sorted[0])
        span = int(self.sorted[-1]) - self.low + 1
        self.dense = None
        if span <= self.DENSE_SLACK * len(hadm) + (1 << 20):
            self.dense = np.full(span, -1, np.int32 if len(hadm) < (1 << 31) else np.int64)
            self.dense[self.sorted - self.low] = self.order

    def rows(self, hadm: np.ndarray) -> np.ndarray:
        """Admission row per hadm_id, -1 when absent."""
        if self.dense is not None:
            key = hadm - self.low
            inside = (key >= 0) & (key < len(self.dense))
            return np.where(inside, self.dense[np.where(inside, key, 0)], -1).astype(np.int64)
        position = np.minimum(np.searchsorted(self.sorted, hadm), len(self.sorted) - 1)
        return np.where(self.sorted[position] == hadm, self.order[position], -1)


def _lookup_visits(path: Path, table: pa.Table, offset: int, index: _AdmissionIndex, adm_subject: np.ndarray,
                   adm_time: np.ndarray, patient_ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Each row's admission time; errors on an unknown subject or hadm_id (or a hadm_id of another subject).
    `offset`: the block's first data row in the file (for the row numbers in errors)."""
    hadm = table[MIMIC_HADM].to_numpy()
    admission = index.rows(hadm)
    subject = table[MIMIC_SUBJECT].to_numpy()
    consistent = (admission >= 0) & (adm_subject[admission] == subject)
    if not consistent.all():
        # slow path, only for bad input: find the first problem in the order a reader would look for it
        bad = first_false(pc.is_in(table[MIMIC_SUBJECT], value_set=patient_ids))
        if bad is not None:
            raise PrepareError(path, f"subject {subject[bad]} is not in patients", column=MIMIC_SUBJECT,
                               row=csv_line(offset + bad))
        bad = first_false(admission >= 0)
        if bad is not None:
            raise PrepareError(path, f"hadm_id {table[MIMIC_HADM][bad].as_py()} is not in admissions",
                               column=MIMIC_HADM, row=csv_line(offset + bad))
        bad = first_false(consistent)
        raise PrepareError(path, f"hadm_id {table[MIMIC_HADM][bad].as_py()} belongs to another subject in "
                                 "admissions", column=MIMIC_SUBJECT, row=csv_line(offset + bad))
    return hadm, pa.array(adm_time[admission], TIME_TYPE)


def _event_times(table: pa.Table, admit_times: pa.Array) -> pa.Array:
    """A procedure/HCPCS row's chart date when recorded (so a visit's procedures keep their time order, as in
    MIMIC-MEDS), else its admission time; diagnoses have no time of their own and take the admission time."""
    if MIMIC_CHARTDATE not in table.column_names:
        return admit_times
    chart = table[MIMIC_CHARTDATE].combine_chunks().cast(pa.timestamp("s")).cast(TIME_TYPE)
    return pc.coalesce(chart, admit_times)


def _icd_events(path: Path, table: pa.Table, offset: int, kind: str, visit_lookup) -> pa.Table:
    version = table[MIMIC_ICD_VERSION].to_numpy()
    bad = first_false((version == 9) | (version == 10))
    if bad is not None:
        raise PrepareError(path, f"unknown ICD version {version[bad]} (expected 9 or 10)", column=MIMIC_ICD_VERSION,
                           row=csv_line(offset + bad))
    hadm, times = visit_lookup(path, table, offset)
    times = _event_times(table, times)
    system = np.where(version == 9, 0, 1).astype(np.int8)  # index into CODE_SYSTEMS: icd9 = 0, icd10 = 1
    return make_events(table[MIMIC_SUBJECT], pa.array(hadm, pa.int64()), times, kind, system,
                       table[MIMIC_ICD_CODE], table[MIMIC_SEQ])


def _hcpcs_events(path: Path, table: pa.Table, offset: int, kind: str, visit_lookup) -> pa.Table:
    hadm, times = visit_lookup(path, table, offset)
    return make_events(table[MIMIC_SUBJECT], pa.array(hadm, pa.int64()), _event_times(table, times), KIND_CPT,
                       SYSTEM_CPT, table["hcpcs_cd"], table[MIMIC_SEQ])


# the event tables, streamed in this order (the events' source order): name, columns, not-null, kind, builder
EVENT_TABLES = ((DIAGNOSES, ICD_COLUMNS, (MIMIC_SUBJECT, MIMIC_HADM, MIMIC_ICD_VERSION), KIND_DX, _icd_events, True),
                (PROCEDURES, PROCEDURE_COLUMNS, (MIMIC_SUBJECT, MIMIC_HADM, MIMIC_ICD_VERSION), KIND_PX, _icd_events,
                 False),
                (HCPCS, HCPCS_COLUMNS, (MIMIC_SUBJECT, MIMIC_HADM), KIND_CPT, _hcpcs_events, False))


def read_mimic(hosp_dir: str | Path, work: Path, patients_per_partition: int,
               partition_multiple: int = 1) -> RawRecords:
    """Read a MIMIC-IV `hosp` folder into partitioned events + visits (spilled under `work`).

    patients and admissions are read whole (one row per patient / stay: the visit lookup needs them all); the
    event tables are streamed block by block into the partitions, so memory does not grow with them. The event
    streams are opened first, so their decoding (gzip: one core per file) runs beside the patients and admissions
    read; each is consumed in turn, in the events' source order."""

    hosp_dir = Path(hosp_dir)
    if not hosp_dir.is_dir():
        raise PrepareError(hosp_dir, "MIMIC-IV hosp folder does not exist")
    if find_table_file(hosp_dir, PATIENTS, required=False) is None and (hosp_dir / "hosp").is_dir():
        raise PrepareError(hosp_dir, f"this is the MIMIC-IV root, not its hosp module: pass --mimic {hosp_dir / 'hosp'}")
    patients_path, admissions_path = find_table_file(hosp_dir, PATIENTS), find_table_file(hosp_dir, ADMISSIONS)
    streams = []
    try:
        for name, columns, not_null, kind, builder, required in EVENT_TABLES:
            path = find_table_file(hosp_dir, name, required=required)
            if path is not None:
                streams.append((name, kind, builder, required, TableStream(path, columns, not_null,
                                                                           READ_AHEAD_BLOCKS)))
        plan = partial(PartitionPlan.from_subjects, patients_per_partition=patients_per_partition,
                       multiple_of=partition_multiple)
        return _read(hosp_dir, work, plan, patients_path, admissions_path, streams)
    finally:
        for *_, stream in streams:
            stream.close()


def _read(hosp_dir: Path, work: Path, plan, patients_path: Path, admissions_path: Path, streams: list
          ) -> RawRecords:
    rows_read: dict[str, int] = {}
    path = patients_path
    patients = read_table(path, PATIENT_COLUMNS, not_null=(MIMIC_SUBJECT, "anchor_age", "anchor_year"))
    _require_rows(path, patients)
    rows_read[PATIENTS] = patients.num_rows
    patient_ids = patients[MIMIC_SUBJECT].combine_chunks()
    # sorted once (a sort of 300k ids is ~15 ms, a hash count ~160 ms): duplicates, then the admissions' subjects
    subject_order = np.argsort(patient_ids.to_numpy(), kind="stable")
    subjects_sorted = patient_ids.to_numpy()[subject_order]
    repeated = np.flatnonzero(subjects_sorted[1:] == subjects_sorted[:-1])
    if len(repeated):
        # the first row, in file order, whose subject an earlier row already has (a stable sort keeps file order
        # within each run of equal ids, so every element after a run's first is such a row)
        index = int(subject_order[repeated + 1].min())
        raise PrepareError(path, f"subject {patient_ids[index].as_py()} appears twice", column=MIMIC_SUBJECT,
                           row=csv_line(index))

    path = admissions_path
    admissions = read_table(path, ADMISSION_COLUMNS, not_null=(MIMIC_SUBJECT, MIMIC_HADM, "admittime"))
    _require_rows(path, admissions)
    rows_read[ADMISSIONS] = admissions.num_rows
    adm_subject = admissions[MIMIC_SUBJECT].to_numpy()
    position = np.minimum(np.searchsorted(subjects_sorted, adm_subject), len(subjects_sorted) - 1)
    bad = first_false(subjects_sorted[position] == adm_subject)
    if bad is not None:
        raise PrepareError(path, f"subject {admissions[MIMIC_SUBJECT][bad].as_py()} is not in patients",
                           column=MIMIC_SUBJECT, row=csv_line(bad))
    adm_hadm = admissions[MIMIC_HADM].to_numpy()
    adm_order = np.argsort(adm_hadm, kind="stable")
    adm_hadm_sorted = adm_hadm[adm_order]
    repeats = np.flatnonzero(adm_hadm_sorted[1:] == adm_hadm_sorted[:-1])
    if len(repeats):
        raise PrepareError(path, f"hadm_id {adm_hadm_sorted[repeats[0]]} appears twice", column=MIMIC_HADM,
                           row=csv_line(adm_order[repeats[0] + 1]))
    adm_time = admissions["admittime"].cast(TIME_TYPE).to_numpy()
    admission_index = _AdmissionIndex(adm_hadm)

    def visit_lookup(table_path: Path, table: pa.Table, offset: int):
        return _lookup_visits(table_path, table, offset, admission_index, adm_subject, adm_time, patient_ids)

    spill = PartitionSpill(work, plan(adm_subject), EVENTS_SCHEMA, VISITS_SCHEMA)
    try:
        # Demographics: MIMIC gives age at an anchor year; the birth year is anchor_year - anchor_age and, as in
        # the MIMIC-MEDS ETL, the birth time is January 1st of that year.
        birth_year = patients["anchor_year"].to_numpy() - patients["anchor_age"].to_numpy()
        spill.write_events(make_events(patient_ids, None, years_to_timestamps(birth_year), KIND_DEMOGRAPHIC,
                                       SYSTEM_BIRTH, pc.cast(pa.array(birth_year), pa.string())))
        spill.write_events(make_events(patient_ids, None, None, KIND_DEMOGRAPHIC, SYSTEM_SEX, patients["gender"]))
        spill.write_visits(pa.Table.from_arrays([admissions[MIMIC_SUBJECT], admissions[MIMIC_HADM],
                                                 admissions["admittime"].cast(TIME_TYPE)], schema=VISITS_SCHEMA))
        for name, kind, builder, required, stream in streams:
            path = stream.path
            rows_read[name] = 0
            for offset, block in stream:
                rows_read[name] += block.num_rows
                if block.num_rows:
                    spill.write_events(builder(path, block, offset, kind, visit_lookup))
            if required and not rows_read[name]:
                raise PrepareError(path, "the table has no data rows", row=2)
        spill.close()
    except BaseException:
        spill.close()
        raise
    return RawRecords(source="mimic", path=str(hosp_dir), partitions=spill, subjects=patient_ids,
                      rows_read=rows_read)


# keep the schema names used for documentation tools happy (they are the events-table contract)
__all__ = ["read_mimic", "SUBJECT_ID", "VISIT_ID", "TIME", "SYSTEM_ICD9", "SYSTEM_ICD10"]
