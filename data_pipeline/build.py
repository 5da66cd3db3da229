"""`sparseehr prepare`: raw records -> DATA_DIR (patients + windows DatasetDicts, tokenizer, frozen settings).

Everything is written into a temporary sibling folder and renamed onto DATA_DIR at the very end, so a failure
never leaves a half-written DATA_DIR behind, and an existing DATA_DIR is only replaced with `overwrite=True`.
"""
from __future__ import annotations

import json
import os
import shutil
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
    CODE_COUNTS_FILE, COL_PREFIX_TOKENS, COL_VISIT_DX_CODES, COL_VISIT_TOKENS, DATA_PATIENTS_DIR,
    DATA_TOKENIZER_DIR, DATA_WINDOWS_DIR, HARMONIZATION_FILE, PREPARE_REPORT_FILE, SPLIT_TRAIN, SPLITS, SUBJECT_ID,
)
from sparseehr.data_pipeline.splits import assign_splits
from sparseehr.data_pipeline.timelines import build_timelines
from sparseehr.data_pipeline.tokenization import tokenize_batch, windows_batch
from sparseehr.data_pipeline.vocab import Vocabulary, VocabSettings, build_vocabulary

SPLIT_COLUMN = "split"  # MEDS subject_splits column (source format, not our schema)


@dataclass
class PrepareConfig:
    """Settings of one `sparseehr prepare` run (validated here, whatever front end built it).

    Args:
        out: DATA_DIR to create. mimic / meds: exactly one input folder.
        vocab_from: a DATA_DIR (or tokenizer folder) whose vocabulary is reused instead of building one.
        max_len: longest training window in tokens. num_proc: `datasets.map` worker processes.
        split_ratios: train / validation / test fractions of the hash split. split_salt: changes the hash split.
        batch_size: patients per `map` batch. progress: show progress bars.
    """

    out: str
    mimic: str | None = None
    meds: str | None = None
    vocab_from: str | None = None
    overwrite: bool = False
    max_len: int = 2048
    num_proc: int = 1
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_salt: int = 0
    batch_size: int = 1000
    progress: bool = True
    harmonization: HarmonizationSettings = field(default_factory=HarmonizationSettings)
    vocab: VocabSettings = field(default_factory=VocabSettings)

    def __post_init__(self) -> None:
        if (self.mimic is None) == (self.meds is None):
            raise ValueError("give exactly one input: mimic or meds")
        if self.max_len < 16:
            raise ValueError(f"max_len must be >= 16 (a prefix and a visit), got {self.max_len}")
        if self.num_proc < 1 or self.batch_size < 1:
            raise ValueError("num_proc and batch_size must be >= 1")
        ratios = tuple(float(r) for r in self.split_ratios)
        if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-6 or ratios[0] <= 0:
            raise ValueError(f"split_ratios must be 3 non-negative fractions summing to 1 with train > 0, got {ratios}")
        self.split_ratios = ratios


def _read(config: PrepareConfig) -> RawRecords:
    if config.mimic is not None:
        from sparseehr.data_pipeline.readers.mimic import read_mimic
        return read_mimic(config.mimic)
    from sparseehr.data_pipeline.readers.meds import read_meds
    return read_meds(config.meds)


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


def _split_index(records: RawRecords, subject_ids: np.ndarray, config: PrepareConfig) -> tuple[np.ndarray, str]:
    split = assign_splits(subject_ids, config.split_ratios, config.split_salt)
    if records.splits is None:
        return split, "hash"
    known = records.splits
    position = pc.index_in(pa.array(subject_ids), value_set=known[SUBJECT_ID]).to_numpy(zero_copy_only=False)
    has = ~np.isnan(position.astype(np.float64))
    names = known[SPLIT_COLUMN].to_pylist()
    split[has] = [SPLITS.index(names[int(i)]) for i in position[has]]
    return split, "meds" if has.all() else "meds+hash"


def _write_stream(table: pa.Table, path: Path, chunk: int) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=chunk)


def _map_split(staging: pa.Table, work: Path, name: str, vocab: Vocabulary, config: PrepareConfig):
    """Tokenize one split with datasets.map (memory-mapped input, so workers share it) and cut windows."""
    import datasets

    staging_path = work / f"staging-{name}.arrow"
    _write_stream(staging, staging_path, config.batch_size)
    staged = datasets.Dataset.from_file(str(staging_path))
    num_proc = min(config.num_proc, max(1, len(staged) // config.batch_size)) if len(staged) else 1
    common = dict(batched=True, batch_size=config.batch_size, num_proc=num_proc if num_proc > 1 else None)
    if len(staged) == 0:  # map on an empty dataset cannot learn the output schema: build it directly
        patients = datasets.Dataset(tokenize_batch(staging, vocab))
        windows = datasets.Dataset(windows_batch(patients.data.table, config.max_len))
        return patients, windows
    patients = staged.with_format("arrow").map(
        tokenize_batch, fn_kwargs={"vocab": vocab}, remove_columns=staged.column_names,
        cache_file_name=str(work / f"patients-{name}.arrow"), new_fingerprint=f"patients-{uuid.uuid4().hex[:24]}",
        desc=f"tokenize {name}", **common).with_format(None)
    windows = patients.with_format("arrow").map(
        windows_batch, fn_kwargs={"max_len": config.max_len}, remove_columns=patients.column_names,
        cache_file_name=str(work / f"windows-{name}.arrow"), new_fingerprint=f"windows-{uuid.uuid4().hex[:24]}",
        desc=f"windows {name}", **common).with_format(None)
    return patients, windows


def prepare(config: PrepareConfig) -> dict:
    """Run the whole pipeline; returns the prepare report (also written to DATA_DIR)."""
    import datasets
    from tqdm.auto import tqdm

    out = check_output_dir(config.out, DATA_DIR, config.overwrite,
                           [("--mimic", config.mimic), ("--meds", config.meds), ("--vocab-from", config.vocab_from)])
    vocab_dir = resolve_tokenizer_dir(config.vocab_from) if config.vocab_from else None
    if not config.progress:
        datasets.disable_progress_bars()
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    steps = tqdm(total=7, desc="prepare", disable=not config.progress, unit="step")
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def step_done(name: str) -> None:
        # arrow's allocator keeps freed pages for reuse; hand them back so one step's peak does not stay resident
        pa.default_memory_pool().release_unused()
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now
        steps.update()
    try:
        tmp.mkdir()
        work = tmp / "_work"
        work.mkdir()
        steps.set_postfix_str("read")
        records = _read(config)
        step_done("read")

        steps.set_postfix_str("harmonize")
        harmonized = harmonize(records.events, config.harmonization)
        events_read = int(sum(records.rows_read.values()))
        del records.events
        step_done("harmonize")

        steps.set_postfix_str("timelines")
        timelines = build_timelines(harmonized, records.visits)
        harmonized.code_events = harmonized.demographics = None  # free memory before tokenizing
        staging = timelines.table
        subject_ids = staging[SUBJECT_ID].to_numpy()
        split, split_source = _split_index(records, subject_ids, config)
        step_done("timelines")

        steps.set_postfix_str("vocabulary")
        if vocab_dir is not None:
            vocab, vocab_stats = Vocabulary.from_tokenizer_dir(vocab_dir), {"reused_from": str(config.vocab_from)}
        else:
            vocab, vocab_stats = build_vocabulary(timelines.event_patient, timelines.event_token,
                                                  timelines.token_strings, timelines.region_tokens, split == 0,
                                                  config.vocab)
        timeline_counts = timelines.counts
        del timelines
        step_done("vocabulary")

        steps.set_postfix_str("tokenize")
        patients, windows = {}, {}
        for index, name in enumerate(SPLITS):
            patients[name], windows[name] = _map_split(staging.filter(pa.array(split == index)), work, name,
                                                       vocab, config)
        step_done("tokenize")

        steps.set_postfix_str("save")
        datasets.DatasetDict(patients).save_to_disk(str(tmp / DATA_PATIENTS_DIR))
        datasets.DatasetDict(windows).save_to_disk(str(tmp / DATA_WINDOWS_DIR))
        vocab.save_tokenizer(tmp / DATA_TOKENIZER_DIR, config.max_len)
        harmonization = settings_record(config.harmonization)
        (tmp / HARMONIZATION_FILE).write_text(json.dumps(harmonization, indent=2, sort_keys=True))
        train_dx = staging.filter(pa.array(split == 0))[COL_VISIT_DX_CODES].combine_chunks().flatten().flatten()
        code_counts = {row["values"]: int(row["counts"]) for row in pc.value_counts(train_dx).to_pylist()}
        code_counts = dict(sorted(code_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        (tmp / CODE_COUNTS_FILE).write_text(json.dumps(code_counts, indent=1))
        lengths = np.concatenate([np.diff(p.data.table.column("input_ids").combine_chunks().offsets.to_numpy())
                                  for p in patients.values()]) if len(staging) else np.zeros(0, np.int64)
        harmonized.counts.update(timeline_counts)
        report = _report(config, records, harmonized, staging, split, split_source, vocab, vocab_stats,
                         harmonization, events_read, lengths, {k: len(v) for k, v in windows.items()})
        del patients, windows
        shutil.rmtree(work)
        report["elapsed_s"] = round(time.perf_counter() - started, 3)
        report["timings_s"] = timings
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
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _report(config, records, harmonized, staging, split, split_source, vocab, vocab_stats, harmonization,
            events_read, lengths, window_counts) -> dict:
    counts, dropped = harmonized.counts, dict(records.dropped)
    for reason, value in harmonized.dropped.items():
        dropped[reason] = dropped.get(reason, 0) + value
    visits = staging[COL_VISIT_TOKENS].combine_chunks()
    n_visits = len(visits.flatten())
    prefix_len = 1 + np.diff(staging[COL_PREFIX_TOKENS].combine_chunks().offsets.to_numpy())
    visits_per_patient = np.diff(visits.offsets.to_numpy())
    visit_len = np.diff(visits.flatten().offsets.to_numpy()) + 3       # GAP, VISIT:open, codes, VISIT:close
    visit_offsets = visits.offsets.to_numpy() - visits.offsets.to_numpy()[0]
    visit_len[visit_offsets[1:][visits_per_patient > 0] - 1] += 1       # the last visit carries <eor>
    oversize = visit_len > (config.max_len - np.repeat(prefix_len, visits_per_patient))
    return {
        "source": records.source, "input": records.path,
        "patients": int(len(staging)), "patients_declared": int(len(records.subjects)),
        "patients_without_visits": int(len(pc.unique(records.subjects)) - len(staging)),
        "visits": int(n_visits), "consecutive_visit_pairs": int(n_visits - len(staging)),
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
        "windows": window_counts, "max_len": config.max_len, "oversize_visits_split": int(oversize.sum()),
        "settings_hash": harmonization["settings_hash"], "train_split": SPLIT_TRAIN,
    }
