"""Sort-based set operations on integer arrays (numpy's hash-based np.unique is several times slower here)."""
from __future__ import annotations

import numpy as np


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct key.

    >>> first_occurrences(np.array([5, 3, 5, 1, 3])).tolist()
    [0, 1, 3]
    """
    if not len(keys):
        return np.zeros(0, np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    return np.sort(order[starts])


def distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values, sorted.

    >>> distinct(np.array([5, 3, 5, 1])).tolist()
    [1, 3, 5]
    """
    if not len(keys):
        return keys
    ordered = np.sort(keys)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


def dense_codes(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct sorted keys, index of each key among them) for small non-negative integer keys, in O(n).

    >>> [a.tolist() for a in dense_codes(np.array([7, 2, 7, 0]))]
    [[0, 2, 7], [2, 1, 2, 0]]
    """
    if not len(keys):
        return keys, np.zeros(0, np.int64)
    present = np.bincount(keys) > 0
    rank = np.cumsum(present) - 1
    return np.flatnonzero(present), rank[keys]
