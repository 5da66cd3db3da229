"""Sort-based set operations on integer arrays (numpy's hash-based np.unique is several times slower here)."""
from __future__ import annotations

import numpy as np


def run_starts(values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values (none for an empty array).

    >>> run_starts(np.array([4, 4, 1, 1, 1, 4])).tolist()
    [0, 2, 5]
    """
    if not len(values):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))


def distinct(keys: np.ndarray) -> np.ndarray:
    """The distinct values, sorted.

    >>> distinct(np.array([5, 3, 5, 1])).tolist()
    [1, 3, 5]
    """
    if not len(keys):
        return keys
    # numpy's stable sort (radix / timsort for integers) beat its default introsort here on random keys (37 vs
    # 48 ms for 419k int64) and on keys in ascending runs, as prepare's are (12-17 vs 33-59 ms)
    ordered = np.sort(keys, kind="stable")
    return ordered[run_starts(ordered)]


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


def pack(columns: list[tuple[np.ndarray, int]]) -> np.ndarray | None:
    """Pack non-negative integer columns (values, max value), most significant first, into one int64 sort key;
    None when they need more than 63 bits (callers then fall back to np.lexsort).

    >>> pack([(np.array([1, 0]), 3), (np.array([2, 5]), 7)]).tolist()
    [10, 5]
    """
    bits = [max(int(top), 1).bit_length() for _, top in columns]
    if sum(bits) > 63:
        return None
    packed = np.zeros(len(columns[0][0]), np.int64)
    for (values, _), width in zip(columns, bits):
        packed = (packed << np.int64(width)) | values.astype(np.int64)
    return packed


def keep_first(keys: np.ndarray) -> np.ndarray:
    """Boolean mask keeping the first occurrence of each key (in array order).

    One stable argsort: equal keys keep their array order, so the first of each run is the first occurrence.
    Fastest when the keys come in ascending runs, as timelines passes them (visit-major): 16-24 ms for 419k keys
    against 42-50 ms for the packed (key, position) sort this replaced; on shuffled keys it is slower (117 vs 77
    ms), which no caller has.

    >>> keep_first(np.array([4, 2, 4, 2, 9])).tolist()
    [True, True, False, False, True]
    """
    mask = np.zeros(len(keys), bool)
    if not len(keys):
        return mask
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    mask[order[run_starts(ordered)]] = True
    return mask


def sort_indices_nulls_first(table, keys: list[tuple[str, str]]):
    """pc.sort_indices with nulls (e.g. MEDS static rows' null time) first, on every pyarrow setup.cfg admits.

    pyarrow 25 deprecates the table-wide `null_placement` in favour of a third item per sort key, which releases
    before about 18 reject; the MEDS order (subject, then time with static rows first) needs one or the other.

    >>> import pyarrow as pa
    >>> sort_indices_nulls_first(pa.table({"s": [2, 1, 1], "t": [None, 5, None]}), [("s", "ascending"),
    ...                                                                            ("t", "ascending")]).to_pylist()
    [2, 1, 0]
    """
    import pyarrow.compute as pc

    if _PER_KEY_NULL_PLACEMENT:
        return pc.sort_indices(table, sort_keys=[(name, order, "at_start") for name, order in keys])
    return pc.sort_indices(table, sort_keys=keys, null_placement="at_start")


def _per_key_null_placement() -> bool:
    import pyarrow.compute as pc

    try:
        pc.SortOptions(sort_keys=[("k", "ascending", "at_start")])
    except (TypeError, ValueError):
        return False
    return True


_PER_KEY_NULL_PLACEMENT = _per_key_null_placement()
