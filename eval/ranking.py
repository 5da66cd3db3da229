"""What every scorer (model or baseline) returns per instance: its top-N diagnosis codes plus what screening
needs about diabetes codes, so no scorer has to keep a [n_instances, n_codes] matrix in memory."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranking:
    top_codes: tuple[str, ...]       # best first, at most the requested top_n, no duplicates
    diabetes_rank: int | None        # 0-based rank of the best-ranked diabetes code; None if the scorer has none
    diabetes_score: float            # the scorer's score of that code (screening's continuous score); 0 if none


def ranking_from_scores(codes: Sequence[str], scores: np.ndarray, diabetes_mask: np.ndarray, top_n: int,
                        secondary: np.ndarray | None = None) -> Ranking:
    """Rank `codes` by score (descending); ties broken by `secondary` (descending) and then by the order of
    `codes`, so the ranking is deterministic. diabetes_mask: bool per code."""
    scores = np.asarray(scores, dtype=np.float64)
    if secondary is None:
        order = np.argsort(-scores, kind="stable")
    else:
        order = np.lexsort((-np.asarray(secondary, dtype=np.float64), -scores))  # last key is primary
    top = tuple(codes[i] for i in order[:top_n])
    diabetes_positions = np.flatnonzero(diabetes_mask[order])
    if len(diabetes_positions) == 0:
        return Ranking(top, None, 0.0)
    best = int(diabetes_positions[0])
    return Ranking(top, best, float(scores[order[best]]))
