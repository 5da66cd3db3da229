"""`sparseehr prepare`: raw records -> DATA_DIR (patients + windows DatasetDicts, tokenizer, frozen settings).

Everything is written into a temporary sibling folder and renamed onto DATA_DIR at the very end, so a failure
never leaves a half-written DATA_DIR behind, and an existing DATA_DIR is only replaced with `overwrite=True`.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparseehr.data_pipeline.artifacts import DATA_DIR, check_output_dir, remove_replaced
from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.harmonize import HarmonizationSettings, harmonize, settings_record
from sparseehr.data_pipeline.readers.common import RawRecords
from sparseehr.data_pipeline.schema import (
    CODE_COUNTS_FILE, COL_INPUT_IDS, COL_PREFIX_TOKENS, COL_VISIT_DX_CODES, COL_VISIT_TOKENS, DATA_PATIENTS_DIR,
    DATA_TOKENIZER_DIR, DATA_WINDOWS_DIR, HARMONIZATION_FILE, KIND_DX, PREPARE_REPORT_FILE, SPLIT_TRAIN, SPLITS,
    SUBJECT_ID,
)
from sparseehr.data_pipeline.partitions import DEFAULT_PATIENTS_PER_PARTITION, default_workers, read_stream
from sparseehr.data_pipeline.shards import finish_dataset_dict, shard_name, write_shard
from sparseehr.data_pipeline.splits import assign_splits
from sparseehr.data_pipeline.timelines import build_timelines
from sparseehr.data_pipeline.tokenization import output_schemas, tokenize_batch, windows_batch
from sparseehr.data_pipeline.vocab import (
    Vocabulary, VocabSettings, merge_counts, training_counts, vocabulary_from_counts,
)

SPLIT_COLUMN = "split"  # MEDS subject_splits column (source format, not our schema)


@dataclass
class PrepareConfig:
    """Settings of one `sparseehr prepare` run (validated here, whatever front end built it).

    Args:
        out: DATA_DIR to create. mimic / meds: exactly one input folder.
        vocab_from: a DATA_DIR (or tokenizer folder) whose vocabulary is reused instead of building one.
        max_len: longest training window in tokens.
        num_proc: worker processes (forked) that harmonize, build timelines and tokenize partitions in parallel;
            None: `default_workers()`. The output does not depend on it.
        split_ratios: train / validation / test fractions of the hash split. split_salt: changes the hash split.
        batch_size: patients per tokenize batch. progress: show progress bars.
        partition_patients: patients (with visits) per partition; memory is bounded by one partition, and the
            output does not depend on it (see partitions.py).
    """

    out: str
    mimic: str | None = None
    meds: str | None = None
    vocab_from: str | None = None
    overwrite: bool = False
    max_len: int = 2048
    num_proc: int | None = None
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_salt: int = 0
    batch_size: int = 1000
    progress: bool = True
    partition_patients: int = DEFAULT_PATIENTS_PER_PARTITION
    harmonization: HarmonizationSettings = field(default_factory=HarmonizationSettings)
    vocab: VocabSettings = field(default_factory=VocabSettings)

    def __post_init__(self) -> None:
        if (self.mimic is None) == (self.meds is None):
            raise ValueError("give exactly one input: mimic or meds")
        if self.max_len < 16:
            raise ValueError(f"max_len must be >= 16 (a prefix and a visit), got {self.max_len}")
        if self.num_proc is None:
            self.num_proc = default_workers()
        if self.num_proc < 1 or self.batch_size < 1 or self.partition_patients < 1:
            raise ValueError("num_proc, batch_size and partition_patients must be >= 1")
        ratios = tuple(float(r) for r in self.split_ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
            raise ValueError(f"split_ratios must be 3 non-negative fractions summing to 1 with train > 0, got {ratios}")
        self.split_ratios = ratios


def _read(config: PrepareConfig, work: Path) -> RawRecords:
    if config.mimic is not None:
        from sparseehr.data_pipeline.readers.mimic import read_mimic
        return read_mimic(config.mimic, work, config.partition_patients, config.num_proc)
    from sparseehr.data_pipeline.readers.meds import read_meds
    return read_meds(config.meds, work, config.partition_patients, config.num_proc)


def resolve_tokenizer_dir(path: str | Path) -> Path:
    """A DATA_DIR's tokenizer/ folder, or the folder itself when it holds a tokenizer."""
    path = Path(path)
    for candidate in (path / DATA_TOKENIZER_DIR, path):
        if (candidate / "tokenizer.json").is_file():
            return candidate
    raise PrepareError(path, "--vocab-from needs a DATA_DIR (with tokenizer/) or a tokenizer folder")


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    if not len(lengths):
        return {}
    q = np.percentile(lengths, [5, 25, 50, 75, 95, 99])
    return {"p5": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "p99": float(q[5]), "max": int(lengths.max()), "mean": float(lengths.mean())}


class _SourceSplits:
    """The source's own split of each subject (MEDS subject_splits), looked up per partition; hash otherwise."""

    def __init__(self, records: RawRecords, config: PrepareConfig) -> None:
        self.config, self.known = config, records.splits
        if self.known is not None:
            names = self.known[SPLIT_COLUMN].to_pylist()
            self.index = np.array([SPLITS.index(n) for n in names], np.int8)
        self.from_source = self.patients = 0

    def __call__(self, subject_ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(split index per subject, how many of them the source's split decided)."""
        split = assign_splits(subject_ids, self.config.split_ratios, self.config.split_salt)
        if self.known is None:
            return split, 0
        position = pc.index_in(pa.array(subject_ids), value_set=self.known[SUBJECT_ID])
        position = pc.fill_null(position, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        has = position >= 0
        split[has] = self.index[position[has]]
        return split, int(has.sum())

    def count(self, from_source: int, patients: int) -> None:
        self.from_source += from_source
        self.patients += patients

    @property
    def source(self) -> str:
        if self.known is None:
            return "hash"
        return "meds" if self.from_source == self.patients else "meds+hash"


def _add(total: dict, part: dict) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def _visit_summary(staging: pa.Table, max_len: int) -> dict[str, int]:
    """Visits of a staging table and those too long to share a window with the prefix (split over windows)."""
    visits = staging[COL_VISIT_TOKENS].combine_chunks()
    n_visits = len(visits.flatten())
    prefix_len = 1 + np.diff(staging[COL_PREFIX_TOKENS].combine_chunks().offsets.to_numpy())
    visits_per_patient = np.diff(visits.offsets.to_numpy())
    visit_len = np.diff(visits.flatten().offsets.to_numpy()) + 3       # GAP, VISIT:open, codes, VISIT:close
    visit_offsets = visits.offsets.to_numpy() - visits.offsets.to_numpy()[0]
    visit_len[visit_offsets[1:][visits_per_patient > 0] - 1] += 1       # the last visit carries <eor>
    oversize = visit_len > (max_len - np.repeat(prefix_len, visits_per_patient))
    return {"patients": staging.num_rows, "visits": n_visits, "oversize_visits_split": int(oversize.sum())}


def _first_pass(records: RawRecords, p: int, config: PrepareConfig, policy_cache: dict, splits: _SourceSplits,
                staging_path: Path) -> dict:
    """Harmonize and build the timelines of partition p; write its staging table (visit codes as token-table ids) to
    `staging_path` and return what the later steps need: counts, split, vocabulary and diagnosis counts."""
    clock = time.perf_counter()
    events, visits = records.partitions.load(p)
    records.partitions.remove(p)
    harmonized = harmonize(events, config.harmonization, policy_cache)
    del events
    seconds = {"harmonize": time.perf_counter() - clock}
    clock = time.perf_counter()
    timelines = build_timelines(harmonized, visits)
    counts, dropped = dict(harmonized.counts), dict(harmonized.dropped)
    _add(counts, timelines.counts)
    del harmonized, visits
    staging = timelines.table
    split, from_source = splits(staging[SUBJECT_ID].to_numpy())
    region, codes = training_counts(timelines.event_patient, timelines.event_token, timelines.token_strings,
                                    timelines.region_tokens, split == 0)
    token_strings = timelines.token_strings
    del timelines
    train_dx = staging.filter(pa.array(split == 0))[COL_VISIT_DX_CODES].combine_chunks().flatten().flatten()
    dx_values = pc.value_counts(train_dx)
    _write_stream(staging, staging_path)
    result = {"counts": counts, "dropped": dropped, "summary": _visit_summary(staging, config.max_len),
              "split": split, "split_from_source": from_source, "region": region, "codes": codes,
              "token_strings": token_strings,
              "dx": pa.table({"code": dx_values.field("values"), "count": dx_values.field("counts")})}
    del staging
    pa.default_memory_pool().release_unused()
    seconds["timelines"] = time.perf_counter() - clock
    result["seconds"] = seconds
    return result


def _write_stream(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _tokenize_partition(job: tuple) -> tuple[np.ndarray, dict[str, int]]:
    """Tokenize one partition's staging table (visit codes as rows of token_strings), in batches of `batch_size` patients, into
    shard `index` of `shards` of each split's patients and windows datasets under `out`; returns the token count
    of each patient and the windows of each split."""
    staging_path, token_strings, split, vocab, max_len, batch_size, out, index, shards = job
    staging = read_stream(staging_path)
    code_ids_of = vocab.encode(token_strings)   # once per distinct token of the partition
    patients_schema, windows_schema = output_schemas(len(vocab))
    lengths, windows_per_split = [], {}
    for split_index, name in enumerate(SPLITS):
        part = staging.filter(pa.array(split == split_index))
        patients = [tokenize_batch(part.slice(start, batch_size), vocab, code_ids_of)
                    for start in range(0, max(part.num_rows, 1), batch_size)]
        windows = [windows_batch(batch, max_len) for batch in patients]
        patients, windows = pa.concat_tables(patients), pa.concat_tables(windows)
        write_shard(patients, out / DATA_PATIENTS_DIR / name / shard_name(index, shards), patients_schema)
        write_shard(windows, out / DATA_WINDOWS_DIR / name / shard_name(index, shards), windows_schema)
        lengths.append(np.diff(patients[COL_INPUT_IDS].combine_chunks().offsets.to_numpy()))
        windows_per_split[name] = windows.num_rows
    return np.concatenate(lengths), windows_per_split


# What forked workers need for the first pass: set in the parent just before the pool forks, inherited by the
# children (the records hold the spill files and the source splits, too large to send with every task).
_FIRST_PASS_STATE: dict = {}


def _staging_path(work: Path, p: int) -> Path:
    """Partition p's staging table, written by the first pass and read by tokenize."""
    return work / f"staging-{p:05d}.arrow"


def _first_pass_job(p: int) -> dict:
    state = _FIRST_PASS_STATE
    return _first_pass(state["records"], p, state["config"], state["policy_cache"], state["splits"],
                       _staging_path(state["work"], p))


class _PartitionWorkers:
    """Runs a per-partition function over all partitions, results in partition order: in forked worker processes
    when there are several partitions and workers (each worker holds one partition at a time, so memory is
    `workers` partitions), else in this process. Processes, not threads: the steps are many numpy and arrow calls
    with Python in between, and measured with two threads they ran no faster than with one (the GIL).
    Forked after the read, with no other thread of ours running, so the children inherit the spill and the
    policy's GEMs without pickling them."""

    def __init__(self, workers: int, n_partitions: int) -> None:
        self.workers = max(1, min(workers, n_partitions))
        self.pool = None

    def map(self, function, items: list) -> list:
        if self.workers <= 1:
            return [function(item) for item in items]
        if self.pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        from concurrent.futures.process import BrokenProcessPool

        try:
            return list(self.pool.map(function, items))
        except BrokenProcessPool as error:
            raise RuntimeError(f"a prepare worker process died ({error}); the usual cause is the machine running out "
                               "of memory: rerun with a smaller --partition-patients or fewer --num-proc") from error

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _background_setup(settings: HarmonizationSettings) -> None:
    """What prepare needs later and can get while the reader works: the harmonization tables (the procedure
    GEM's read is ~0.2 s). Loaded here, before the workers fork, the tables are inherited by every worker instead
    of loaded once per worker. (prepare does not import `datasets`: shards.py writes its layout directly.)"""
    from sparseehr.data_pipeline.gems import load_dx_gem, load_px_gem
    from sparseehr.data_pipeline.harmonize import icd10cm_categories

    try:
        load_dx_gem(settings.dx_gem_path)
        load_px_gem(settings.px_gem_path)
        icd10cm_categories()
    except Exception:   # noqa: BLE001 - raised again, with its message, where the first partition needs the table
        pass


def prepare(config: PrepareConfig) -> dict:
    """Run the whole pipeline; returns the prepare report (also written to DATA_DIR)."""
    from tqdm.auto import tqdm

    out = check_output_dir(config.out, DATA_DIR, config.overwrite,
                           [("--mimic", config.mimic), ("--meds", config.meds), ("--vocab-from", config.vocab_from)])
    vocab_dir = resolve_tokenizer_dir(config.vocab_from) if config.vocab_from else None
    started = time.perf_counter()
    # in a thread while the reader, mostly in arrow's GIL-free C++, works through the input
    importer = threading.Thread(target=_background_setup, args=(config.harmonization,), daemon=True)
    importer.start()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    steps = tqdm(total=7, desc="prepare", disable=not config.progress, unit="step")
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]
    workers = None

    def step_done(name: str, advance: bool = True) -> None:
        # arrow's allocator keeps freed pages for reuse; hand them back so one step's peak does not stay resident
        pa.default_memory_pool().release_unused()
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - clock[0], 3)   # summed over partitions
        clock[0] = now
        if advance:
            steps.update()
    try:
        tmp.mkdir()
        work = tmp / "_work"
        work.mkdir()
        steps.set_postfix_str("read")
        records = _read(config, work / "partitions")
        events_read = int(sum(records.rows_read.values()))
        step_done("read")

        # ---- per partition: harmonize, timelines, split, training counts; staging to disk ----
        splits, policy_cache = _SourceSplits(records, config), {}
        counts, dropped, summary = {}, dict(records.dropped), {}
        region_counts, code_token_counts, dx_counts, partition_splits, staging_paths = [], [], [], [], []
        partition_tokens = []
        steps.set_postfix_str(f"harmonize + timelines, {len(records.partitions)} partitions")

        # Fork only once no thread of ours runs: the background set-up (started above, needed anyway) must not hold
        # an import lock or a half-loaded table inside the children. Reading usually outlasts it.
        importer.join()
        workers = _PartitionWorkers(config.num_proc, len(records.partitions))
        _FIRST_PASS_STATE.update(records=records, config=config, policy_cache=policy_cache, splits=splits, work=work)
        try:
            results = workers.map(_first_pass_job, list(range(len(records.partitions))))
        finally:
            _FIRST_PASS_STATE.clear()
        for p, result in enumerate(results):
            _add(counts, result["counts"])
            _add(dropped, result["dropped"])
            _add(summary, result["summary"])
            for name in ("harmonize", "timelines"):
                timings[name] = round(timings.get(name, 0.0) + result["seconds"][name], 3)
            splits.count(result["split_from_source"], len(result["split"]))
            region_counts.append(result["region"])
            code_token_counts.append(result["codes"])
            dx_counts.append(result["dx"])
            partition_splits.append(result["split"])
            partition_tokens.append(result["token_strings"])
            staging_paths.append(_staging_path(work, p))
        del results
        step_done("partitions", advance=False)
        counts["dx_icd9_share"] = counts.get("dx_icd9_rows", 0) / max(1, counts.get(f"{KIND_DX}_rows_read", 0))
        steps.update(2)

        steps.set_postfix_str("vocabulary")
        if vocab_dir is not None:
            vocab, vocab_stats = Vocabulary.from_tokenizer_dir(vocab_dir), {"reused_from": str(config.vocab_from)}
        else:
            vocab, vocab_stats = vocabulary_from_counts(merge_counts(region_counts), merge_counts(code_token_counts),
                                                        config.vocab)
        step_done("vocabulary")

        steps.set_postfix_str("tokenize")
        for folder in (DATA_PATIENTS_DIR, DATA_WINDOWS_DIR):
            for name in SPLITS:
                (tmp / folder / name).mkdir(parents=True)
        jobs = [(path, tokens, split, vocab, config.max_len, config.batch_size, tmp, p, len(staging_paths))
                for p, (path, tokens, split) in enumerate(zip(staging_paths, partition_tokens, partition_splits))]
        tokenized = workers.map(_tokenize_partition, jobs)
        lengths = np.concatenate([n for n, _ in tokenized]) if jobs else np.zeros(0, np.int64)
        workers.close()
        for path in staging_paths:
            path.unlink()
        step_done("tokenize")

        steps.set_postfix_str("save")
        for folder in (DATA_PATIENTS_DIR, DATA_WINDOWS_DIR):
            finish_dataset_dict(tmp / folder, SPLITS, len(jobs))
        window_counts = {name: sum(w[name] for _, w in tokenized) for name in SPLITS}
        vocab.save_tokenizer(tmp / DATA_TOKENIZER_DIR, config.max_len)
        harmonization = settings_record(config.harmonization)
        (tmp / HARMONIZATION_FILE).write_text(json.dumps(harmonization, indent=2, sort_keys=True))
        code_counts = pa.concat_tables(dx_counts).group_by("code").aggregate([("count", "sum")])
        code_counts = {c: int(n) for c, n in zip(code_counts["code"].to_pylist(), code_counts["count_sum"].to_pylist())}
        code_counts = dict(sorted(code_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        (tmp / CODE_COUNTS_FILE).write_text(json.dumps(code_counts, indent=1))
        split_all = np.concatenate(partition_splits) if partition_splits else np.zeros(0, np.int8)
        report = _report(config, records, counts, dropped, summary, split_all, splits.source, vocab, vocab_stats,
                         harmonization, events_read, lengths, window_counts)
        shutil.rmtree(work)
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
        report["timings_s"] = timings
        report["partitions"] = len(jobs)
        report["num_proc"] = workers.workers
        (tmp / PREPARE_REPORT_FILE).write_text(json.dumps(report, indent=2))
        step_done("save")

        steps.set_postfix_str("rename")
        if out.exists():  # only reachable with overwrite=True
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, trash)
            os.replace(tmp, out)
            remove_replaced(trash)
        else:
            os.replace(tmp, out)
        step_done("rename")
        return report
    finally:
        steps.close()
        if workers is not None:
            workers.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _report(config, records, counts, dropped, summary, split, split_source, vocab, vocab_stats, harmonization,
            events_read, lengths, window_counts) -> dict:
    n_patients, n_visits = summary.get("patients", 0), summary.get("visits", 0)
    return {
        "source": records.source, "input": records.path,
        "patients": int(n_patients), "patients_declared": int(len(records.subjects)),
        "patients_without_visits": int(len(pc.unique(records.subjects)) - n_patients),
        "visits": int(n_visits), "consecutive_visit_pairs": int(n_visits - n_patients),
        "events_read": events_read, "rows_read": records.rows_read,
        **({"meds_rows_skipped": records.skipped} if records.source == "meds" else {}),
        "dx_rows": counts.get("dx_rows_read", 0), "dx_icd9_rows": counts.get("dx_icd9_rows", 0),
        "dx_icd9_share": counts.get("dx_icd9_share", 0.0),
        "dx_icd9_mapped": counts.get("dx_icd9_mapped", 0),
        "dx_icd9_mapped_approximate": counts.get("dx_icd9_mapped_approximate", 0),
        "dx_unmapped": dropped.get("dx_icd9_no_map", 0) + dropped.get("dx_icd9_not_in_gem", 0),
        "px_icd9_mapped": counts.get("px_icd9_mapped", 0),
        "px_unmapped": dropped.get("px_icd9_no_map", 0) + dropped.get("px_icd9_not_in_gem", 0),
        "harmonization_counts": counts, "dropped": dropped,
        "duplicate_codes_in_visit_collapsed": int(counts.get("duplicate_codes_in_visit_collapsed", 0)),
        "vocab_size": len(vocab), "vocab": vocab_stats,
        "vocab_settings": asdict(config.vocab),
        "tokens_per_patient": _percentiles(lengths), "tokens_total": int(lengths.sum()),
        "split_patients": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        "split_source": split_source, "split_ratios": list(config.split_ratios),
        "windows": window_counts, "max_len": config.max_len,
        "oversize_visits_split": int(summary.get("oversize_visits_split", 0)),
        "settings_hash": harmonization["settings_hash"], "train_split": SPLIT_TRAIN,
    }
