"""Patient partitions: bounded memory whatever the number of patients.

`prepare` harmonizes, builds timelines and tokenizes one partition of patients at a time. A partition is a range
of subject ids holding about `patients_per_partition` patients with visits; every row of a patient (its
demographics, all its code events, all its visits) falls in the same partition, and nothing any step computes
for a patient depends on another patient, so processing partitions one by one gives what processing all patients
at once gives. Ranges (not hashes) keep the output in subject-id order, the order of the one-partition pipeline.

The readers stream their event rows into a `PartitionSpill`: one Arrow IPC stream file per partition in the work
folder, rows appended in the order they were read, so each partition's events keep the source order that
orders ties within a visit. Memory is then one read block plus one partition, not the whole data set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from sparseehr.data_pipeline import arrays
from sparseehr.data_pipeline.schema import SUBJECT_ID

DEFAULT_PATIENTS_PER_PARTITION = 20_000
MAX_DEFAULT_WORKERS = 4  # prepare's default worker processes: each holds one partition (~0.3-0.5 GB at 20k patients)


def default_workers() -> int:
    """Worker processes for the per-partition steps: the cores this process may use, at most
    MAX_DEFAULT_WORKERS (memory grows with one partition per worker)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True)
class PartitionPlan:
    """Partition p holds the subject ids in [starts[p], starts[p + 1]) (the last one is open above; ids below
    starts[0] go to partition 0)."""

    starts: np.ndarray

    @classmethod
    def from_subjects(cls, subject_ids: np.ndarray, patients_per_partition: int,
                      multiple_of: int = 1) -> "PartitionPlan":
        """Cut the distinct subject ids (of the patients with visits) every `patients_per_partition` ids, or a
        little more often so that the partition count is a multiple of `multiple_of` (the worker processes: 9
        partitions on 2 workers leave one worker idle for the last one)."""
        if patients_per_partition < 1 or multiple_of < 1:
            raise ValueError(f"patients_per_partition and multiple_of must be >= 1, got {patients_per_partition}, "
                             f"{multiple_of}")
        distinct = arrays.distinct(np.asarray(subject_ids, np.int64))
        if not len(distinct):
            return cls(np.zeros(1, np.int64))
        count = -(-len(distinct) // patients_per_partition)
        if count > 1 and multiple_of > 1 and count % multiple_of:
            count = min(-(-count // multiple_of) * multiple_of, len(distinct))
            # evenly spaced cuts: partitions differ by at most one patient, none larger than asked
            return cls(distinct[np.arange(count) * len(distinct) // count])
        return cls(distinct[::patients_per_partition])

    def __len__(self) -> int:
        return len(self.starts)

    def partition_of(self, subject_ids: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.starts, subject_ids, side="right") - 1, 0)


class PartitionSpill:
    """Per-partition IPC stream files of events and visits, written batch by batch and read back one partition
    at a time. Files are named by partition, so a partition is read with one sequential read. The readers pass
    their events and visits schemas (this module sits below the readers)."""

    def __init__(self, folder: Path, plan: PartitionPlan, events_schema: pa.Schema, visits_schema: pa.Schema) -> None:
        self.folder, self.plan = folder, plan
        folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[tuple[str, int], pa.RecordBatchStreamWriter] = {}
        self._sinks: list = []
        for kind, schema in (("events", events_schema), ("visits", visits_schema)):
            for p in range(len(plan)):
                sink = pa.OSFile(str(self._path(kind, p)), "wb")
                self._sinks.append(sink)
                self._writers[kind, p] = pa.ipc.new_stream(sink, schema)

    def _path(self, kind: str, p: int) -> Path:
        return self.folder / f"{kind}-{p:05d}.arrow"

    def _write(self, kind: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        part = self.plan.partition_of(table[SUBJECT_ID].to_numpy())
        if len(self.plan) == 1:
            self._writers[kind, 0].write_table(table)
            return
        # one stable sort by partition, then zero-copy slices: each partition's rows keep their order. Tables
        # sorted by subject (MIMIC-IV's are) are already in partition order: no sort, no copy.
        if (part[1:] >= part[:-1]).all():
            ordered, sorted_part = table, part
        else:
            order = np.argsort(part, kind="stable")
            ordered, sorted_part = table.take(pa.array(order)), part[order]
        bounds = np.searchsorted(sorted_part, np.arange(len(self.plan) + 1))
        for p in np.flatnonzero(np.diff(bounds)):
            self._writers[kind, int(p)].write_table(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]))

    def write_events(self, table: pa.Table) -> None:
        self._write("events", table)

    def write_visits(self, table: pa.Table) -> None:
        self._write("visits", table)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for sink in self._sinks:
            sink.close()
        self._writers, self._sinks = {}, []

    def __len__(self) -> int:
        return len(self.plan)

    def load(self, p: int) -> tuple[pa.Table, pa.Table]:
        """(events, visits) of partition p, read into memory (not mapped, so the pages are freed with them)."""
        if self._writers:
            self.close()
        return tuple(read_stream(self._path(kind, p)) for kind in ("events", "visits"))

    def remove(self, p: int) -> None:
        for kind in ("events", "visits"):
            self._path(kind, p).unlink(missing_ok=True)


def read_stream(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        table = pa.ipc.open_stream(source).read_all()
    # the many small write batches become one chunk per column: the steps after index arrays by row number
    return table.combine_chunks()
