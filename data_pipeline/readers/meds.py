"""MEDS v0.4 reader: DIR/data/**/*.parquet (+ metadata/subject_splits.parquet when present).

Codes follow the MIMIC-MEDS convention:
  MEDS_BIRTH (time = birth) | GENDER//F, GENDER//M (static) | REGION//<name> (static, our extension)
  DIAGNOSIS//ICD//9//<code>, DIAGNOSIS//ICD//10//<code> | PROCEDURE//ICD//9//<code>, PROCEDURE//ICD//10//<code>
  HCPCS//<code> (CPT/HCPCS; CPT//<code> accepted too) | HOSPITAL_ADMISSION//..., HOSPITAL_DISCHARGE//... (visits)
Every other code (labs, MEDS_DEATH, ...) is not tokenized and is counted under `meds_rows_not_tokenized`.

Visits: rows with a non-null `hadm_id` (when that column exists) form one visit per hadm_id; the other timed rows
form one visit per calendar day. A visit starts at its HOSPITAL_ADMISSION row when it has one (MIMIC-MEDS puts
diagnoses at discharge), else at its earliest row. A discharge row without hadm_id defines no visit.
Recorded order within a visit is the row order of the data (files in sorted path order), or a `seq_num` column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.readers.common import (
    TIME_TYPE, VISITS_SCHEMA, RawRecords, first_false, make_events, read_parquet_columns,
)
from sparseehr.data_pipeline.schema import (
    KIND_CPT, KIND_DEMOGRAPHIC, KIND_DX, KIND_PX, SUBJECT_ID, SYSTEM_BIRTH, SYSTEM_CPT, SYSTEM_REGION, SYSTEM_SEX,
    VISIT_ID,
)

# MEDS names (the source format; our own column names come from schema.py)
MEDS_SUBJECT, MEDS_TIME, MEDS_CODE, MEDS_HADM, MEDS_SEQ = "subject_id", "time", "code", "hadm_id", "seq_num"
MEDS_SPLIT_COLUMN = "split"
BIRTH_CODE = "MEDS_BIRTH"
SEX_PREFIX_MEDS, REGION_PREFIX_MEDS = "GENDER//", "REGION//"
CPT_PREFIXES_MEDS = ("HCPCS//", "CPT//")
ADMISSION_PREFIX, DISCHARGE_PREFIX = "HOSPITAL_ADMISSION//", "HOSPITAL_DISCHARGE//"
ICD_PATTERNS = {KIND_DX: r"^DIAGNOSIS//ICD//(?P<version>[^/]*)//(?P<value>.*)$",
                KIND_PX: r"^PROCEDURE//ICD//(?P<version>[^/]*)//(?P<value>.*)$"}
ICD_PREFIXES = {KIND_DX: "DIAGNOSIS//ICD//", KIND_PX: "PROCEDURE//ICD//"}
SPLIT_NAMES = {"train": "train", "tuning": "validation", "held_out": "test"}
DAY_US = 86_400 * 1_000_000
DAY_VISIT_BASE = 1 << 40   # calendar-day visit ids are negative: -(DAY_VISIT_BASE + day), never a hadm_id


def _data_files(root: Path) -> list[Path]:
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise PrepareError(root / "data", "no MEDS data files (expected data/**/*.parquet)")
    return files


def _read_shard(path: Path) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepareError(path, f"cannot read parquet ({exc})") from exc
    for name in (MEDS_SUBJECT, MEDS_TIME, MEDS_CODE):
        if name not in schema.names:
            raise PrepareError(path, f"required MEDS column is missing (file has {schema.names})", column=name)
    wanted = {MEDS_SUBJECT: pa.int64(), MEDS_TIME: TIME_TYPE, MEDS_CODE: pa.string(), MEDS_HADM: pa.int64(),
              MEDS_SEQ: pa.int32()}
    names = [n for n in wanted if n in schema.names]
    try:
        table = pq.read_table(path, columns=names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepareError(path, f"cannot read parquet ({exc})") from exc
    columns = {}
    for name in wanted:
        if name not in names:
            columns[name] = pa.nulls(table.num_rows, wanted[name])
            continue
        try:
            columns[name] = table[name].cast(wanted[name])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PrepareError(path, f"cannot convert to {wanted[name]} ({exc})", column=name) from exc
    for name in (MEDS_SUBJECT, MEDS_CODE):
        bad = first_false(pc.is_valid(columns[name]))
        if bad is not None:
            raise PrepareError(path, "empty value where one is required", column=name, row=bad)
    return pa.table(columns)


def _read_splits(root: Path) -> pa.Table | None:
    path = root / "metadata" / "subject_splits.parquet"
    if not path.is_file():
        return None
    table = read_parquet_columns(path, {MEDS_SUBJECT: pa.int64(), MEDS_SPLIT_COLUMN: pa.string()},
                                 not_null=(MEDS_SUBJECT, MEDS_SPLIT_COLUMN))
    ok = pc.is_in(table[MEDS_SPLIT_COLUMN], value_set=pa.array(list(SPLIT_NAMES)))
    bad = first_false(ok)
    if bad is not None:
        raise PrepareError(path, f"unknown split {table[MEDS_SPLIT_COLUMN][bad].as_py()!r} "
                                 f"(expected {list(SPLIT_NAMES)})", column=MEDS_SPLIT_COLUMN, row=bad)
    names = pa.array([SPLIT_NAMES[s] for s in table[MEDS_SPLIT_COLUMN].to_pylist()], pa.string())
    return _unique_split_rows(path, pa.table({SUBJECT_ID: table[MEDS_SUBJECT], MEDS_SPLIT_COLUMN: names}))


def _unique_split_rows(path: Path, splits: pa.Table) -> pa.Table:
    """A subject listed twice under one split is the same statement twice (kept once); under two splits it is a
    contradiction that would leak a patient across splits, so it is refused naming the second row."""
    subjects = splits[SUBJECT_ID].to_numpy()
    order = np.argsort(subjects, kind="stable")
    repeat = np.flatnonzero(subjects[order][1:] == subjects[order][:-1]) + 1
    if not len(repeat):
        return splits
    names = np.asarray(splits[MEDS_SPLIT_COLUMN].to_pylist(), dtype=object)
    clash = repeat[names[order][repeat] != names[order][repeat - 1]]
    if len(clash):
        row, first = int(order[clash[0]]), int(order[clash[0] - 1])
        raise PrepareError(path, f"subject {subjects[row]} is listed in split {names[row]!r} here and in "
                                 f"{names[first]!r} at row {first}", column=MEDS_SUBJECT, row=row)
    keep = np.ones(len(subjects), bool)
    keep[order[repeat]] = False
    return splits.filter(pa.array(keep))




def read_meds(root: str | Path) -> RawRecords:
    """Read a MEDS v0.4 data set into events + visits."""
    root = Path(root)
    if not root.is_dir():
        raise PrepareError(root, "MEDS folder does not exist")
    files = _data_files(root)
    shards = [_read_shard(path) for path in files]
    rows_read = {str(path.relative_to(root)): shard.num_rows for path, shard in zip(files, shards)}
    file_of_row = np.repeat(np.arange(len(files)), [s.num_rows for s in shards])
    row_in_file = np.concatenate([np.arange(s.num_rows) for s in shards])
    data = pa.concat_tables(shards)
    del shards
    if data.num_rows == 0:
        raise PrepareError(root / "data", "the MEDS data files hold no rows")
    code = data[MEDS_CODE].combine_chunks()
    subject, time = data[MEDS_SUBJECT].combine_chunks(), data[MEDS_TIME].combine_chunks()
    has_time = pc.is_valid(time).to_numpy(zero_copy_only=False)
    handled = np.zeros(data.num_rows, bool)
    dropped: dict[str, int] = {}

    # Codes repeat massively (millions of rows, thousands of distinct codes): classify and parse each distinct
    # code once, then index rows by their dictionary position.
    encoded = pc.dictionary_encode(code)
    code_index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    distinct_codes = encoded.dictionary

    def mask_prefix(prefix: str) -> np.ndarray:
        return pc.starts_with(distinct_codes, prefix).to_numpy(zero_copy_only=False)[code_index]

    def locate(index: int) -> tuple[Path, int]:
        return files[file_of_row[index]], int(row_in_file[index])

    # ---- visits: hadm_id when present, else calendar day; start at the admission row if any ----
    is_admission, is_discharge = mask_prefix(ADMISSION_PREFIX), mask_prefix(DISCHARGE_PREFIX)
    hadm = data[MEDS_HADM].combine_chunks()
    has_hadm = pc.is_valid(hadm).to_numpy(zero_copy_only=False)
    time_us = pc.fill_null(time.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    day_visit = -(DAY_VISIT_BASE + np.floor_divide(time_us, DAY_US))
    visit_id = np.where(has_hadm, pc.fill_null(hadm, 0).to_numpy(zero_copy_only=False), day_visit)
    handled |= is_admission | is_discharge

    parts = []
    kinds = {}
    for kind in (KIND_DX, KIND_PX):
        rows = np.flatnonzero(mask_prefix(ICD_PREFIXES[kind]))
        handled[rows] = True
        if not len(rows):
            continue
        parsed = pc.extract_regex(distinct_codes, ICD_PATTERNS[kind])   # per distinct code; null = no match
        row_code = code_index[rows]
        bad = first_false(pc.is_valid(parsed).to_numpy(zero_copy_only=False)[row_code])
        if bad is not None:
            path, row = locate(rows[bad])
            raise PrepareError(path, f"malformed ICD code {code[rows[bad]].as_py()!r} (expected "
                                     f"{ICD_PREFIXES[kind]}<9|10>//<code>)", column=MEDS_CODE, row=row)
        version = pc.fill_null(parsed.field("version"), "")
        known = pc.is_in(version, value_set=pa.array(["9", "10"])).to_numpy(zero_copy_only=False)
        bad = first_false(known[row_code])
        if bad is not None:
            path, row = locate(rows[bad])
            raise PrepareError(path, f"unknown ICD version {version[row_code[bad]].as_py()!r} in "
                                     f"{code[rows[bad]].as_py()!r} (expected 9 or 10)", column=MEDS_CODE, row=row)
        is_nine = pc.equal(version, "9").to_numpy(zero_copy_only=False)
        kinds[kind] = (rows, np.where(is_nine[row_code], 0, 1).astype(np.int8),
                       parsed.field("value").take(pa.array(row_code)))
    cpt_mask = np.zeros(data.num_rows, bool)
    for prefix in CPT_PREFIXES_MEDS:
        cpt_mask |= mask_prefix(prefix)
    handled |= cpt_mask
    cpt_rows = np.flatnonzero(cpt_mask)
    cpt_values = pc.extract_regex(distinct_codes, r"^[A-Z]+//(?P<value>.*)$").field("value")
    kinds[KIND_CPT] = (cpt_rows, None, cpt_values.take(pa.array(code_index[cpt_rows])))

    # code rows without a time belong to no visit: dropped, counted
    visit_rows = np.zeros(data.num_rows, bool)
    for kind, (rows, system, values) in kinds.items():
        timed = has_time[rows]
        dropped[f"{kind}_without_time"] = int((~timed).sum())
        rows, values = rows[timed], values.filter(pa.array(timed))
        system = SYSTEM_CPT if system is None else system[timed]
        visit_rows[rows] = True
        seq = data[MEDS_SEQ].combine_chunks().take(pa.array(rows))
        parts.append(make_events(subject.take(pa.array(rows)), pa.array(visit_id[rows], pa.int64()),
                                 time.take(pa.array(rows)), kind, system, values, seq))
    visit_rows |= is_admission & has_time
    visit_rows |= is_discharge & has_time & has_hadm

    visit_table = pa.table({SUBJECT_ID: subject.filter(pa.array(visit_rows)),
                            VISIT_ID: pa.array(visit_id[visit_rows], pa.int64()),
                            "t": pa.array(time_us[visit_rows], pa.int64()),
                            "t_adm": pa.array(np.where(is_admission[visit_rows], time_us[visit_rows],
                                                       np.iinfo(np.int64).max), pa.int64())})
    grouped = visit_table.group_by([SUBJECT_ID, VISIT_ID]).aggregate([("t", "min"), ("t_adm", "min")])
    adm_min = grouped["t_adm_min"].to_numpy()
    start = np.where(adm_min != np.iinfo(np.int64).max, adm_min, grouped["t_min"].to_numpy())
    visits = pa.Table.from_arrays([grouped[SUBJECT_ID], grouped[VISIT_ID], pa.array(start, pa.int64()).cast(TIME_TYPE)],
                                  schema=VISITS_SCHEMA)

    # ---- demographics ----
    birth = np.flatnonzero(pc.equal(distinct_codes, BIRTH_CODE).to_numpy(zero_copy_only=False)[code_index] & has_time)
    handled[birth] = True
    birth_time = time.take(pa.array(birth))
    birth_year = pc.cast(pc.year(birth_time), pa.string())
    parts.insert(0, make_events(subject.take(pa.array(birth)), None, birth_time, KIND_DEMOGRAPHIC, SYSTEM_BIRTH,
                                birth_year))
    for prefix, system in ((SEX_PREFIX_MEDS, SYSTEM_SEX), (REGION_PREFIX_MEDS, SYSTEM_REGION)):
        rows = np.flatnonzero(mask_prefix(prefix))
        handled[rows] = True
        values = pc.utf8_slice_codeunits(code.take(pa.array(rows)), len(prefix))
        parts.insert(1, make_events(subject.take(pa.array(rows)), None, None, KIND_DEMOGRAPHIC, system, values))
    dropped["meds_rows_not_tokenized"] = int((~handled).sum())
    return RawRecords(source="meds", path=str(root), events=pa.concat_tables(parts), visits=visits,
                      subjects=pc.unique(subject), splits=_read_splits(root), rows_read=rows_read,
                      dropped={k: v for k, v in dropped.items() if v})


__all__ = ["read_meds"]
