"""The MEDS stress data set of `sparseehr bench prepare --meds`: MIMIC-IV volume, event tables included.

What MEDS-Extract writes for MIMIC-IV is mostly event rows (labevents alone is ~118M rows) around a few million
diagnosis/procedure/admission rows. This builds that shape from the simulator's MIMIC-IV `hosp` tables:

* the simulated `hosp` tables (60% of the subjects, as in MIMIC-IV where ~181k of ~300k patients have a hospital
  admission) converted to MEDS in the MIMIC-MEDS convention (GENDER, MEDS_BIRTH, MEDS_DEATH, HOSPITAL_ADMISSION at
  admittime, diagnoses at dischtime, procedures/HCPCS at their chart dates, HOSPITAL_DISCHARGE);
* the other 40% of the subjects with demographics and outpatient labs only;
* `LAB//<itemid>//<unit>` rows with `numeric_value` (1,000 items, Zipf-distributed), 70% during stays (with
  the stay's hadm_id) and 30% outpatient, filling the data set up to the requested row count.

Subjects are assigned to shards at random; each shard is sorted by subject then time (stable,
so diagnoses keep their seq_num order) and written with pyarrow. Everything is vectorised numpy/arrow: one shard
at a time is in memory. The result is cached under WORK (a finished data set has metadata/dataset.json).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sparseehr.data_pipeline.arrays import sort_indices_nulls_first

MEDS_COLUMNS = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                          ("numeric_value", pa.float32()), ("hadm_id", pa.int64())])
SCAN_COLUMNS = ("subject_id", "time", "code", "hadm_id")   # what `prepare` reads of a MEDS shard
ADMITTED_SHARE = 0.6            # subjects with a hospital admission (MIMIC-IV: 180,733 of 299,712)
INPATIENT_LAB_SHARE = 0.7
LAB_ITEMS, LAB_UNITS = 1000, ("mg/dL", "mEq/L", "K/uL", "%", "U/L", "g/dL", "sec", "IU/L")
YEAR_US = 365 * 86_400 * 1_000_000


def _read(path: Path, columns: dict[str, pa.DataType]) -> pa.Table:
    convert = pacsv.ConvertOptions(include_columns=list(columns), column_types=columns, strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert)


def _rows(subject, times, codes, hadm=None, values=None) -> pa.Table:
    n = len(subject)
    return pa.table({
        "subject_id": pa.array(subject, pa.int64()) if not isinstance(subject, (pa.Array, pa.ChunkedArray)) else subject,
        "time": times if times is not None else pa.nulls(n, pa.timestamp("us")),
        "code": codes,
        "numeric_value": values if values is not None else pa.nulls(n, pa.float32()),
        "hadm_id": hadm if hadm is not None else pa.nulls(n, pa.int64()),
    }).cast(MEDS_COLUMNS)


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def core_rows(hosp: Path, extra_subjects: int, rng: np.random.Generator) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(MEDS rows of the hosp tables + the extra subjects' demographics, admissions, all subjects)."""
    us = pa.timestamp("us")
    patients = _read(hosp / "patients.csv.gz", {"subject_id": pa.int64(), "gender": pa.string(),
                                                 "anchor_age": pa.int64(), "anchor_year": pa.int64(),
                                                 "dod": pa.timestamp("s")})
    first_extra = int(pc.max(patients["subject_id"]).as_py()) + 1
    extra = pa.table({
        "subject_id": pa.array(np.arange(first_extra, first_extra + extra_subjects), pa.int64()),
        "gender": pa.array(np.where(rng.random(extra_subjects) < 0.52, "F", "M")),
        "anchor_age": pa.array(rng.integers(18, 92, extra_subjects), pa.int64()),
        "anchor_year": pa.array(rng.integers(2110, 2200, extra_subjects), pa.int64()),
        "dod": pa.nulls(extra_subjects, pa.timestamp("s")),
    })
    subjects = pa.concat_tables([patients, extra])
    birth_year = pc.subtract(subjects["anchor_year"], subjects["anchor_age"])
    birth = pc.strptime(_join(pc.cast(birth_year, pa.string()), "-01-01"), format="%Y-%m-%d", unit="us")
    dead = pc.is_valid(subjects["dod"])
    parts = [
        _rows(subjects["subject_id"], None, _join("GENDER//", subjects["gender"])),
        _rows(subjects["subject_id"], birth, pa.array(np.full(len(subjects), "MEDS_BIRTH"))),
        _rows(subjects["subject_id"].filter(dead), subjects["dod"].filter(dead).cast(us),
              pa.array(np.full(int(pc.sum(dead).as_py() or 0), "MEDS_DEATH"))),
    ]
    admissions = _read(hosp / "admissions.csv.gz", {"subject_id": pa.int64(), "hadm_id": pa.int64(),
                                                     "admittime": pa.timestamp("s"), "dischtime": pa.timestamp("s"),
                                                     "admission_type": pa.string(),
                                                     "discharge_location": pa.string()})
    admit, discharge = admissions["admittime"].cast(us), admissions["dischtime"].cast(us)
    parts.append(_rows(admissions["subject_id"], admit, _join("HOSPITAL_ADMISSION//", admissions["admission_type"]),
                       admissions["hadm_id"]))
    parts.append(_rows(admissions["subject_id"], discharge,
                       _join("HOSPITAL_DISCHARGE//", pc.fill_null(admissions["discharge_location"], "UNK")),
                       admissions["hadm_id"]))
    for name, prefix, code_column in (("diagnoses_icd", "DIAGNOSIS//ICD//", "icd_code"),
                                      ("procedures_icd", "PROCEDURE//ICD//", "icd_code"),
                                      ("hcpcsevents", "HCPCS//", "hcpcs_cd")):
        columns = {"subject_id": pa.int64(), "hadm_id": pa.int64(), "seq_num": pa.int64(), code_column: pa.string()}
        if name != "hcpcsevents":
            columns["icd_version"] = pa.int64()
        if name != "diagnoses_icd":
            columns["chartdate"] = pa.timestamp("s")
        table = _read(hosp / f"{name}.csv.gz", columns).sort_by([("hadm_id", "ascending"), ("seq_num", "ascending")])
        if name == "diagnoses_icd":   # MIMIC-MEDS time-stamps diagnoses at discharge
            times = discharge.take(pc.index_in(table["hadm_id"], value_set=admissions["hadm_id"]))
        else:
            times = table["chartdate"].cast(us)
        code = (_join(prefix, pc.cast(table["icd_version"], pa.string()), "//", table[code_column])
                if "icd_version" in columns else _join(prefix, table[code_column]))
        parts.append(_rows(table["subject_id"], times, code, table["hadm_id"]))
    return pa.concat_tables(parts), admissions, subjects


def _lab_codes() -> tuple[pa.Array, np.ndarray]:
    items = np.arange(LAB_ITEMS)
    names = [f"LAB//{50800 + i}//{LAB_UNITS[i % len(LAB_UNITS)]}" for i in items]
    weights = 1.0 / (items + 1.0)
    return pa.array(names, pa.string()), weights / weights.sum()


def lab_rows(subject_ids: np.ndarray, subject_weight: np.ndarray, anchor_start_us: np.ndarray, outpatient: int,
             adm_subject: np.ndarray, adm_hadm: np.ndarray, adm_start: np.ndarray, adm_end: np.ndarray,
             inpatient: np.ndarray, rng: np.random.Generator, codes: pa.Array, code_p: np.ndarray) -> pa.Table:
    """LAB rows of one shard: `inpatient[i]` during admission i, `outpatient` spread over the shard's subjects."""
    stay = np.repeat(np.arange(len(adm_subject)), inpatient)
    length = np.maximum(adm_end - adm_start, 1)[stay]
    in_time = adm_start[stay] + (rng.random(len(stay)) * length).astype(np.int64)
    who = rng.choice(len(subject_ids), size=outpatient, p=subject_weight / subject_weight.sum())
    out_time = anchor_start_us[who] + (rng.random(outpatient) * 10 * YEAR_US).astype(np.int64)
    n = len(stay) + outpatient
    code = pa.DictionaryArray.from_arrays(pa.array(rng.choice(len(codes), size=n, p=code_p).astype(np.int32)), codes)
    hadm = np.concatenate([adm_hadm[stay], np.zeros(outpatient, np.int64)])
    has_hadm = np.concatenate([np.ones(len(stay), bool), np.zeros(outpatient, bool)])
    return _rows(pa.array(np.concatenate([adm_subject[stay], subject_ids[who]]), pa.int64()),
                 pa.array(np.concatenate([in_time, out_time]).astype("datetime64[us]"), pa.timestamp("us")),
                 code.cast(pa.string()), pa.array(hadm, pa.int64(), mask=~has_hadm),
                 pa.array(rng.lognormal(1.0, 0.8, n).astype(np.float32)))


def build_meds_stress(work: Path, subjects: int, rows: int, shards: int, simulate, seed: int = 0,
                      log=print) -> Path:
    """The cached stress data set WORK/meds-stress-S-R-N (built when missing); `simulate(n)` -> hosp folder."""
    root = work / f"meds-stress-{subjects}-{rows}-{shards}"
    if (root / "metadata" / "dataset.json").is_file():
        return root
    started = time.perf_counter()
    admitted = int(round(subjects * ADMITTED_SHARE))
    hosp = simulate(admitted)
    rng = np.random.default_rng(seed)
    core, admissions, people = core_rows(hosp, subjects - admitted, rng)
    core = core.sort_by([("subject_id", "ascending")])   # stable: keeps each table's order within a subject
    total_labs = max(rows - core.num_rows, 0)
    adm_subject, adm_hadm = admissions["subject_id"].to_numpy(), admissions["hadm_id"].to_numpy()
    adm_start = admissions["admittime"].cast(pa.int64()).to_numpy() * 1_000_000
    adm_end = admissions["dischtime"].cast(pa.int64()).to_numpy() * 1_000_000
    stay_days = np.maximum((adm_end - adm_start) / 86_400e6, 0.5)
    inpatient = rng.multinomial(int(total_labs * INPATIENT_LAB_SHARE), stay_days / stay_days.sum())
    subject_ids = people["subject_id"].to_numpy()
    order = np.argsort(subject_ids)
    subject_ids = subject_ids[order]
    anchor_start = (people["anchor_year"].to_numpy()[order] - 1970 - 2).astype("datetime64[Y]").astype(
        "datetime64[us]").astype(np.int64)
    weight = rng.gamma(0.7, 1.0, len(subject_ids))
    outpatient_total = total_labs - int(inpatient.sum())
    codes, code_p = _lab_codes()
    # subjects go to shards at random (as MEDS-Extract does), so every shard mixes admitted and outpatient subjects
    shard_of = rng.integers(0, shards, len(subject_ids))
    core_shard = shard_of[np.searchsorted(subject_ids, core["subject_id"].to_numpy())]
    core = core.take(pa.array(np.argsort(core_shard, kind="stable")))
    core_bounds = np.searchsorted(np.sort(core_shard), np.arange(shards + 1))
    adm_shard = shard_of[np.searchsorted(subject_ids, adm_subject)]
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    written = 0
    for shard in range(shards):
        mine, stays = shard_of == shard, adm_shard == shard
        n_out = int(round(outpatient_total * weight[mine].sum() / weight.sum()))
        labs = lab_rows(subject_ids[mine], weight[mine], anchor_start[mine], n_out, adm_subject[stays],
                        adm_hadm[stays], adm_start[stays], adm_end[stays], inpatient[stays], rng, codes, code_p)
        table = pa.concat_tables([core.slice(core_bounds[shard], core_bounds[shard + 1] - core_bounds[shard]), labs])
        # MEDS order: subject, then time (static rows first); stable, so recorded order survives among ties
        table = table.take(sort_indices_nulls_first(table, [("subject_id", "ascending"), ("time", "ascending")]))
        pq.write_table(table, tmp / "data" / f"{shard:02d}.parquet")
        written += table.num_rows
        log(f"  shard {shard + 1}/{shards}: {table.num_rows:,} rows", flush=True)
    (tmp / "metadata").mkdir()
    (tmp / "metadata" / "dataset.json").write_text(json.dumps({
        "dataset_name": "sparseehr-meds-stress", "meds_version": "0.4", "subjects": subjects, "rows": written,
        "shards": shards, "seed": seed, "built_s": round(time.perf_counter() - started, 1)}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def plain_scan(root: Path) -> tuple[float, int]:
    """Seconds for a plain multithreaded pyarrow.dataset scan of the columns `prepare` reads, and the rows."""
    import pyarrow.dataset as ds

    started = time.perf_counter()
    dataset = ds.dataset(str(root / "data"), format="parquet")
    columns = [c for c in SCAN_COLUMNS if c in dataset.schema.names]
    rows = sum(batch.num_rows for batch in dataset.scanner(columns=columns, use_threads=True).to_batches())
    return time.perf_counter() - started, rows
