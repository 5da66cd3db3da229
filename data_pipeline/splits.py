"""Patient-level deterministic split: a salted 64-bit hash of subject_id, never Python's randomised hash()."""
from __future__ import annotations

import numpy as np

from sparseehr.data_pipeline.schema import SPLITS

MEDS_SPLIT_NAMES = {"train": SPLITS[0], "tuning": SPLITS[1], "held_out": SPLITS[2]}


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (uint64 arithmetic wraps, which is what the mixer wants)."""
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_unit(subject_ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) per subject id, fixed by (id, salt) on every machine.

    >>> bool(hash_unit(np.array([10000032]))[0] == hash_unit(np.array([10000032, 1]))[0])
    True
    """
    with np.errstate(over="ignore"):
        mixed = _splitmix64(subject_ids.astype(np.int64).view(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(subject_ids: np.ndarray, ratios: tuple[float, float, float], salt: int = 0) -> np.ndarray:
    """Index into SPLITS (train, validation, test) per subject, by hash: a patient's split never depends on
    which other patients are in the data."""
    cuts = np.cumsum(np.asarray(ratios, np.float64))[:-1]
    return np.searchsorted(cuts, hash_unit(subject_ids, salt), side="right").astype(np.int8)
