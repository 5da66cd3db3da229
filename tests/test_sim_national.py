"""National statistics the simulator draws from, and the category agreement `synth --compare-to` reports."""
from __future__ import annotations

import numpy as np

from sparseehr.data_pipeline.simulator import national
from sparseehr.data_pipeline.simulator.codes import build_codebook
from sparseehr.data_pipeline.simulator.compare import category_agreement


def test_inpatient_rate_is_the_band_of_each_age() -> None:
    rates = national.inpatient_rate(np.array([18.0, 44.9, 45.0, 64.0, 70.0, 99.0]))
    assert rates.tolist() == [0.055, 0.055, 0.1017, 0.1459, 0.2534, 0.48]


def test_the_tail_starts_with_the_national_head() -> None:
    book = build_codebook()
    tail = list(book.dx_icd10[book.n_named_dx:])
    usable = [c for c in national.NATIONAL_TAIL_HEAD if c in tail]
    assert len(usable) >= 0.9 * len(national.NATIONAL_TAIL_HEAD)      # nearly every listed code is GEM-mappable
    assert tail[: len(usable)] == usable                               # in the table's order, first
    # The personal (recurring) law no longer piles onto one code: the head code takes a few percent, not ~15%.
    first_share = book.personal_cdf[0]
    assert 0.01 < first_share < 0.04


def test_category_agreement_on_a_hand_case() -> None:
    ref = {"A": 50, "B": 40, "C": 30, "D": 20}
    same_order = {"A": 9, "B": 8, "C": 7, "D": 6, "E": 100}
    reversed_order = {"A": 1, "B": 2, "C": 3, "D": 4}
    got = category_agreement(same_order, ref, top=4)
    assert got["top-20 categories in common"] == 4 and got["top-50 categories in common"] == 4
    assert np.isclose(got["Spearman rank correlation over the reference's top-4 categories"], 1.0)
    assert np.isclose(category_agreement(reversed_order, ref, top=4)[
        "Spearman rank correlation over the reference's top-4 categories"], -1.0)
    # a category the synthetic data never codes counts 0: ranks (1,2,3,4) vs (1,2,3.5,3.5) -> rho = 0.9487
    got = category_agreement({"A": 5, "B": 3}, ref, top=4)
    assert np.isclose(got["Spearman rank correlation over the reference's top-4 categories"], 0.9486833, atol=1e-6)
