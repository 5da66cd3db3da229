"""MEDS v0.4 reader: DIR/data/**/*.parquet (+ metadata/subject_splits.parquet when present), streamed.

Codes follow the MIMIC-MEDS convention:
  MEDS_BIRTH (time = birth) | GENDER//F, GENDER//M (static) | REGION//<name> (static, our extension)
  DIAGNOSIS//ICD//9//<code>, DIAGNOSIS//ICD//10//<code> | PROCEDURE//ICD//9//<code>, PROCEDURE//ICD//10//<code>
  HCPCS//<code> (CPT/HCPCS; CPT//<code> accepted too) | HOSPITAL_ADMISSION//..., HOSPITAL_DISCHARGE//... (visits)
Every other code (labs, vitals, medications, MEDS_DEATH, ...) is skipped while scanning: such rows are never
materialised, only counted per prefix family (the code up to its first `//`) under `meds_rows_skipped`, and in
total under `meds_rows_not_tokenized`.

Streaming: each shard is read batch by batch with its `code` column dictionary-encoded, so the keep/skip
decision runs once per distinct code of a batch (a few thousand) and rows are filtered by integer index; only
the kept rows (diagnoses, procedures, demographics, admissions: a few percent of a MEDS data set with event
tables) are held, so memory does not grow with the lab/vital/medication rows. Each shard is scanned and turned
into events and visit candidates by one worker thread, shards side by side (measured in docs/data.md).

Visits: rows with a non-null `hadm_id` (when that column exists) form one visit per hadm_id; the other timed rows
form one visit per calendar day. A visit starts at its HOSPITAL_ADMISSION row when it has one (MIMIC-MEDS puts
diagnoses at discharge), else at its earliest row. A discharge row without hadm_id defines no visit.
Recorded order within a visit is the row order of the data (files in sorted path order), or a `seq_num` column.
A subject whose rows sit in several shards (MEDS asks for one shard per subject) is read as one subject: its
visit candidates are grouped again across shards and its events concatenate in file order, so the result does
not depend on how subjects were sharded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparseehr.data_pipeline.arrays import distinct, run_starts
from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.partitions import PartitionPlan, PartitionSpill
from sparseehr.data_pipeline.readers.common import (
    EVENTS_SCHEMA, TIME_TYPE, VISITS_SCHEMA, RawRecords, first_false, make_events, read_parquet_columns,
)
from sparseehr.data_pipeline.schema import (
    KIND_CPT, KIND_DEMOGRAPHIC, KIND_DX, KIND_PX, SUBJECT_ID, SYSTEM_BIRTH, SYSTEM_CPT, SYSTEM_REGION, SYSTEM_SEX,
    VISIT_ID,
)

# MEDS names, from the MEDS package where it defines them (the source format; our own names come from schema.py)
MEDS_SUBJECT, MEDS_TIME, MEDS_CODE = (meds.DataSchema.subject_id_name, meds.DataSchema.time_name,
                                      meds.DataSchema.code_name)
MEDS_HADM, MEDS_SEQ = "hadm_id", "seq_num"   # MIMIC-MEDS extra columns (not in the MEDS core schema)
MEDS_SPLIT_COLUMN = meds.SubjectSplitSchema.split_name
BIRTH_CODE = meds.birth_code
SEX_PREFIX_MEDS, REGION_PREFIX_MEDS = "GENDER//", "REGION//"
CPT_PREFIXES_MEDS = ("HCPCS//", "CPT//")
ADMISSION_PREFIX, DISCHARGE_PREFIX = "HOSPITAL_ADMISSION//", "HOSPITAL_DISCHARGE//"
ICD_PATTERNS = {KIND_DX: r"^DIAGNOSIS//ICD//(?P<version>[^/]*)//(?P<value>.*)$",
                KIND_PX: r"^PROCEDURE//ICD//(?P<version>[^/]*)//(?P<value>.*)$"}
ICD_PREFIXES = {KIND_DX: "DIAGNOSIS//ICD//", KIND_PX: "PROCEDURE//ICD//"}
SPLIT_NAMES = {meds.train_split: "train", meds.tuning_split: "validation", meds.held_out_split: "test"}
FAMILY_SEPARATOR = "//"     # a code's prefix family (LAB, MEDS_DEATH, ...) is its text before the first //
STREAM_BATCH_ROWS = 1 << 20  # rows decoded at once per shard: bounds the scan's memory whatever the shard size
SCAN_WORKERS = 4             # shards scanned at once (capped by the CPU count)
KEPT_PREFIXES = (ICD_PREFIXES[KIND_DX], ICD_PREFIXES[KIND_PX], *CPT_PREFIXES_MEDS, ADMISSION_PREFIX, DISCHARGE_PREFIX,
                 SEX_PREFIX_MEDS, REGION_PREFIX_MEDS)
WANTED_COLUMNS = {MEDS_SUBJECT: pa.int64(), MEDS_TIME: TIME_TYPE, MEDS_CODE: pa.string(), MEDS_HADM: pa.int64(),
                  MEDS_SEQ: pa.int32()}
DAY_US = 86_400 * 1_000_000
DAY_VISIT_BASE = 1 << 40   # calendar-day visit ids are negative: -(DAY_VISIT_BASE + day), never a hadm_id


def _data_files(root: Path) -> list[Path]:
    files = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    if not files:
        raise PrepareError(root / meds.data_subdirectory, "no MEDS data files (expected data/**/*.parquet)")
    return files


def _open_shard(path: Path) -> tuple[pq.ParquetFile, list[str]]:
    """The shard, opened to decode `code` as dictionary indices, and the wanted columns it holds."""
    try:
        shard = pq.ParquetFile(path, read_dictionary=[MEDS_CODE])
        schema = shard.schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise PrepareError(path, f"cannot read parquet ({exc})") from exc
    for name in (MEDS_SUBJECT, MEDS_TIME, MEDS_CODE):
        if name not in schema.names:
            raise PrepareError(path, f"required MEDS column is missing (file has {schema.names})", column=name)
    return shard, [n for n in WANTED_COLUMNS if n in schema.names]


def _classify(dictionary: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Per distinct code of a batch: whether the pipeline needs its rows, and its prefix family."""
    keep = pc.equal(dictionary, BIRTH_CODE)
    for prefix in KEPT_PREFIXES:
        keep = pc.or_(keep, pc.starts_with(dictionary, prefix))
    family = pc.list_element(pc.split_pattern(dictionary, FAMILY_SEPARATOR, max_splits=1), 0)
    return keep.to_numpy(zero_copy_only=False), family


class _ShardScan:
    """What the scan keeps of one shard: the needed rows (codes as ids into the shard's own code list),
    skipped-row counts by family, one subject id per run of rows (shards are sorted by subject)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: dict[str, list[pa.Array]] = {name: [] for name in WANTED_COLUMNS}
        self.codes = pa.array([], pa.string())   # kept distinct codes; a row's code id is its index here
        self.skipped: dict[str, int] = {}
        self.subject_runs: list[np.ndarray] = []
        self.rows = self.kept = 0

    def scan(self, stop_at_kept: int | None = None, decode_threads: bool = True) -> "_ShardScan | int":
        """Scan the shard; with `stop_at_kept` k, return instead the file row of its k-th kept row (errors).
        decode_threads: let pyarrow decode the columns in its own threads (off when shards already run in
        parallel: on 2 cores, 2 shards at once without them took 2.4 s against 2.9-3.7 s with them)."""
        shard, names = _open_shard(self.path)
        try:
            for batch in shard.iter_batches(batch_size=STREAM_BATCH_ROWS, columns=names, use_threads=decode_threads):
                rows = self._batch(names, batch, locate=stop_at_kept is not None)
                if stop_at_kept is not None and stop_at_kept < self.kept + len(rows):
                    return self.rows + int(rows[stop_at_kept - self.kept])
                self.rows += batch.num_rows
                self.kept += len(rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise PrepareError(self.path, f"cannot read parquet ({exc})") from exc
        return self

    def _batch(self, names: list[str], batch: pa.RecordBatch, locate: bool) -> np.ndarray:
        path, offset = self.path, self.rows
        for name in (MEDS_SUBJECT, MEDS_CODE):
            if batch.column(name).null_count:
                bad = first_false(pc.is_valid(batch.column(name)))
                raise PrepareError(path, "empty value where one is required", column=name, row=offset + bad)
        code = batch.column(MEDS_CODE)
        if not pa.types.is_dictionary(code.type):
            code = pc.dictionary_encode(code)
        dictionary = code.dictionary.cast(pa.string())
        keep_code, family = _classify(dictionary)
        index = code.indices.to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(keep_code[index])
        if locate:
            return rows
        per_code = np.bincount(index, minlength=len(keep_code))
        per_code[keep_code] = 0
        present = np.flatnonzero(per_code)
        for name, count in zip(family.take(pa.array(present)).to_pylist(), per_code[present].tolist()):
            self.skipped[name] = self.skipped.get(name, 0) + count
        subject = _cast(path, batch.column(MEDS_SUBJECT), MEDS_SUBJECT).to_numpy(zero_copy_only=False)
        self.subject_runs.append(subject[run_starts(subject)])
        if not len(rows):
            return rows
        # the batch's kept codes -> this shard's code ids (per distinct code, never per row)
        kept_entries = np.flatnonzero(keep_code)
        local = np.full(len(keep_code), -1, np.int32)
        local[kept_entries], self.codes = _code_ids(self.codes, dictionary.take(pa.array(kept_entries)))
        taken = batch.take(pa.array(rows))
        for name, target in WANTED_COLUMNS.items():
            if name not in names:
                column = pa.nulls(len(rows), target)
            elif name == MEDS_CODE:
                column = pa.array(local[index[rows]])
            else:
                column = _cast(path, taken.column(name), name)
            self.columns[name].append(column)
        return rows


def _cast(path: Path, column: pa.Array, name: str) -> pa.Array:
    target = WANTED_COLUMNS[name]
    if column.type == target:
        return column
    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PrepareError(path, f"cannot convert to {target} ({exc})", column=name) from exc


def _code_ids(known: pa.Array, distinct: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Ids of `distinct` (unique strings) in `known`, appending the new ones: (ids, extended known). Hash joins
    in arrow, so the per-batch cost does not run Python code per distinct code."""
    position = pc.index_in(distinct, value_set=known)
    new = pc.is_null(position)
    ids = pc.fill_null(position, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    is_new = new.to_numpy(zero_copy_only=False)
    ids[is_new] = len(known) + np.arange(int(is_new.sum()), dtype=np.int32)
    return ids, pa.concat_arrays([known, distinct.filter(new)]) if is_new.any() else known


def _map_shards(function, files: list[Path]) -> list:
    """`function(path, decode_threads)` of every shard, several shards at once: parquet decoding and the arrow and
    numpy kernels release the GIL, and each worker holds one batch (then one shard's kept rows) at a time. Results
    (and the first error) come back in file order."""
    cores = os.cpu_count() or 1
    workers = max(1, min(SCAN_WORKERS, cores, len(files)))
    decode_threads = workers < cores
    if workers == 1:
        return [function(path, decode_threads) for path in files]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda path: function(path, decode_threads), files))


def _kept_columns(scan: _ShardScan) -> tuple[dict, pa.Array]:
    """One shard's kept rows as contiguous columns (code as int64 ids into the shard's kept code list)."""
    columns = {}
    for name, target in WANTED_COLUMNS.items():
        parts, scan.columns[name] = scan.columns[name], []
        if name == MEDS_CODE:
            columns[name] = np.concatenate([p.to_numpy() for p in parts]).astype(np.int64) if parts else \
                np.zeros(0, np.int64)
        else:
            columns[name] = pa.concat_arrays(parts) if parts else pa.array([], target)
    return columns, scan.codes


def _read_splits(root: Path) -> pa.Table | None:
    path = root / meds.subject_splits_filepath
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




class _ShardEvents:
    """One shard, converted: its event tables (in event order), visit candidates grouped per (subject, visit)
    with their earliest time and earliest admission time, and the counts the report needs."""

    def __init__(self, scan: _ShardScan) -> None:
        self.path, self.rows, self.skipped = scan.path, scan.rows, scan.skipped
        self.subjects = np.concatenate(scan.subject_runs) if scan.subject_runs else np.zeros(0, np.int64)
        self.parts: list[pa.Table] = []
        self.visits: pa.Table | None = None
        self.dropped: dict[str, int] = {}
        self.not_tokenized = 0


def _convert_shard(path: Path, decode_threads: bool = True) -> _ShardEvents:
    """Scan one shard and turn its kept rows into events and visit candidates. Per shard, so shards convert in
    parallel and no step holds every shard's rows at once; a subject spread over shards is joined afterwards
    (visit candidates are grouped again across shards, events concatenate in file order)."""
    scan = _ShardScan(path).scan(decode_threads=decode_threads)
    result = _ShardEvents(scan)
    data, distinct_codes = _kept_columns(scan)
    del scan
    # Codes repeat massively (millions of rows, thousands of distinct codes): the scan already gave each row the
    # id of its distinct code, so each distinct code is classified and parsed once and rows are indexed by id.
    code_index = data[MEDS_CODE]
    n_rows = len(code_index)
    subject, time = data[MEDS_SUBJECT], data[MEDS_TIME]
    has_time = pc.is_valid(time).to_numpy(zero_copy_only=False)
    handled = np.zeros(n_rows, bool)
    dropped = result.dropped

    def code_of(index: int) -> str:
        return distinct_codes[int(code_index[index])].as_py()

    def mask_prefix(prefix: str) -> np.ndarray:
        return pc.starts_with(distinct_codes, prefix).to_numpy(zero_copy_only=False)[code_index]

    def locate(index: int) -> tuple[Path, int]:
        """File and row of the index-th kept row (slow path, for error messages: scans the shard again)."""
        return path, _ShardScan(path).scan(stop_at_kept=int(index))

    # ---- visits: hadm_id when present, else calendar day; start at the admission row if any ----
    is_admission, is_discharge = mask_prefix(ADMISSION_PREFIX), mask_prefix(DISCHARGE_PREFIX)
    hadm = data[MEDS_HADM]
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
            where, row = locate(rows[bad])
            raise PrepareError(where, f"malformed ICD code {code_of(rows[bad])!r} (expected "
                                     f"{ICD_PREFIXES[kind]}<9|10>//<code>)", column=MEDS_CODE, row=row)
        version = pc.fill_null(parsed.field("version"), "")
        known = pc.is_in(version, value_set=pa.array(["9", "10"])).to_numpy(zero_copy_only=False)
        bad = first_false(known[row_code])
        if bad is not None:
            where, row = locate(rows[bad])
            raise PrepareError(where, f"unknown ICD version {version[row_code[bad]].as_py()!r} in "
                                     f"{code_of(rows[bad])!r} (expected 9 or 10)", column=MEDS_CODE, row=row)
        is_nine = pc.equal(version, "9").to_numpy(zero_copy_only=False)
        kinds[kind] = (rows, np.where(is_nine[row_code], 0, 1).astype(np.int8),
                       parsed.field("value").take(pa.array(row_code)))
    cpt_mask = np.zeros(n_rows, bool)
    for prefix in CPT_PREFIXES_MEDS:
        cpt_mask |= mask_prefix(prefix)
    handled |= cpt_mask
    cpt_rows = np.flatnonzero(cpt_mask)
    cpt_values = pc.extract_regex(distinct_codes, r"^[A-Z]+//(?P<value>.*)$").field("value")
    kinds[KIND_CPT] = (cpt_rows, None, cpt_values.take(pa.array(code_index[cpt_rows])))

    # code rows without a time belong to no visit: dropped, counted
    visit_rows = np.zeros(n_rows, bool)
    for kind, (rows, system, values) in kinds.items():
        timed = has_time[rows]
        dropped[f"{kind}_without_time"] = int((~timed).sum())
        rows, values = rows[timed], values.filter(pa.array(timed))
        system = SYSTEM_CPT if system is None else system[timed]
        visit_rows[rows] = True
        seq = data[MEDS_SEQ].take(pa.array(rows))
        parts.append(make_events(subject.take(pa.array(rows)), pa.array(visit_id[rows], pa.int64()),
                                 time.take(pa.array(rows)), kind, system, values, seq))
    visit_rows |= is_admission & has_time
    visit_rows |= is_discharge & has_time & has_hadm

    visit_table = pa.table({SUBJECT_ID: subject.filter(pa.array(visit_rows)),
                            VISIT_ID: pa.array(visit_id[visit_rows], pa.int64()),
                            "t": pa.array(time_us[visit_rows], pa.int64()),
                            "t_adm": pa.array(np.where(is_admission[visit_rows], time_us[visit_rows],
                                                       np.iinfo(np.int64).max), pa.int64())})
    result.visits = _group_visits(visit_table)

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
        values = pc.utf8_slice_codeunits(distinct_codes.take(pa.array(code_index[rows])), len(prefix))
        parts.insert(1, make_events(subject.take(pa.array(rows)), None, None, KIND_DEMOGRAPHIC, system, values))
    result.not_tokenized = int((~handled).sum()) + sum(result.skipped.values())
    result.parts = parts
    return result


def _group_visits(candidates: pa.Table) -> pa.Table:
    """Visit candidates (subject, visit id, time t, admission time t_adm) -> one row per (subject, visit) with the
    earliest of each time."""
    # one thread: shards already group side by side (acero's own threads on top cost more than they gave)
    grouped = candidates.group_by([SUBJECT_ID, VISIT_ID], use_threads=False).aggregate([("t", "min"), ("t_adm", "min")])
    return grouped.select([SUBJECT_ID, VISIT_ID, "t_min", "t_adm_min"]).rename_columns(
        [SUBJECT_ID, VISIT_ID, "t", "t_adm"])


def _visits(shards: list[_ShardEvents]) -> pa.Table:
    """One row per (subject, visit): it starts at its earliest admission row, else at its earliest row. Grouped
    again across shards, so a subject whose rows sit in two shards gets the visits one shard would give."""
    candidates = pa.concat_tables([shard.visits for shard in shards])
    for shard in shards:
        shard.visits = None
    if len(shards) > 1:
        candidates = _group_visits(candidates)
    adm_min = candidates["t_adm"].to_numpy()
    start = np.where(adm_min != np.iinfo(np.int64).max, adm_min, candidates["t"].to_numpy())
    return pa.Table.from_arrays([candidates[SUBJECT_ID], candidates[VISIT_ID],
                                 pa.array(start, pa.int64()).cast(TIME_TYPE)], schema=VISITS_SCHEMA)


def read_meds(root: str | Path, work: Path, patients_per_partition: int, partition_multiple: int = 1
              ) -> RawRecords:
    """Read a MEDS v0.4 data set into partitioned events + visits (spilled under `work`)."""

    root = Path(root)
    if not root.is_dir():
        raise PrepareError(root, "MEDS folder does not exist")
    files = _data_files(root)
    shards = _map_shards(_convert_shard, files)
    rows_read = {str(shard.path.relative_to(root)): shard.rows for shard in shards}
    if not sum(rows_read.values()):
        raise PrepareError(root / meds.data_subdirectory, "the MEDS data files hold no rows")
    skipped: dict[str, int] = {}
    dropped: dict[str, int] = {"meds_rows_not_tokenized": 0}
    for shard in shards:
        for family, count in shard.skipped.items():
            skipped[family] = skipped.get(family, 0) + count
        for reason, count in shard.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        dropped["meds_rows_not_tokenized"] += shard.not_tokenized
    skipped = dict(sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    subjects = pa.array(distinct(np.concatenate([shard.subjects for shard in shards])), pa.int64())
    visits = _visits(shards)
    spill = PartitionSpill(work, PartitionPlan.from_subjects(visits[SUBJECT_ID].to_numpy(), patients_per_partition,
                                                           partition_multiple),
                           EVENTS_SCHEMA, VISITS_SCHEMA)
    try:
        # in file order, each shard's parts in event order; each part is freed once spilled. A shard is sorted by
        # subject, so each part is too and goes to its partitions without a sort.
        for shard in shards:
            while shard.parts:
                spill.write_events(shard.parts.pop(0))
        spill.write_visits(visits)
    finally:
        spill.close()
    return RawRecords(source="meds", path=str(root), partitions=spill, subjects=subjects, splits=_read_splits(root),
                      rows_read=rows_read, dropped={k: v for k, v in dropped.items() if v}, skipped=skipped)


__all__ = ["read_meds"]
