"""Rare / common split of diagnosis codes by training-split frequency (the paper's Table 7 shape).

It lives in data_pipeline because both the evaluation (eval/) and the training-time copy probe (launch/probe.py)
split codes this way, and neither may import the other.

common = the most frequent codes that together cover `coverage` (default 80%) of all training diagnosis
occurrences; rare = every other code, including codes never seen in training.

>>> sorted(common_codes({"A": 50, "B": 30, "C": 15, "D": 5}, coverage=0.8))
['A', 'B']
"""
from __future__ import annotations

from collections.abc import Mapping

DEFAULT_COMMON_COVERAGE = 0.8


def codes_by_frequency(counts: Mapping[str, int]) -> list[str]:
    """Codes ordered by training count (descending), ties broken by the code string so the order is stable."""
    return sorted(counts, key=lambda code: (-counts[code], code))


def common_codes(counts: Mapping[str, int], coverage: float = DEFAULT_COMMON_COVERAGE) -> frozenset[str]:
    """Smallest most-frequent prefix of codes whose counts sum to at least `coverage` of all occurrences.

    Codes tied with the last one admitted are admitted too, so the split never depends on alphabetical order.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    bad = {code: n for code, n in counts.items() if not isinstance(n, int) or n < 0}
    if bad:
        raise ValueError(f"code counts must be non-negative integers; bad entries: {dict(list(bad.items())[:5])}")
    total = sum(counts.values())
    if total == 0:
        return frozenset()
    common: set[str] = set()
    covered = 0
    threshold_count = None
    for code in codes_by_frequency(counts):
        if threshold_count is not None and counts[code] < threshold_count:
            break
        common.add(code)
        covered += counts[code]
        if threshold_count is None and covered >= coverage * total:
            threshold_count = counts[code]
    return frozenset(common)
