"""Metric functions: pure, numpy only, no I/O. Every definition here is restated in docs/eval.md.

Recall@K (one instance) = |TopK ∩ Y| / |Y|, where TopK is the scorer's K highest-ranked diagnosis codes and Y the
set of true codes of the next visit (codes the scorer cannot emit stay in Y and count as misses).

>>> recall_at_k(["A", "B", "C"], {"A", "C", "Z"}, 2)
0.3333333333333333
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


# ------------------------------------------------------------------------------------------------------------
# Next-visit recall
# ------------------------------------------------------------------------------------------------------------
def recall_at_k(ranked_codes: Sequence[str], targets: Iterable[str], k: int) -> float:
    """|top-k ∩ targets| / |targets| for one instance. Raises on an empty target set (recall is undefined)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    target_set = set(targets)
    if not target_set:
        raise ValueError("recall_at_k: the target set is empty, recall is undefined")
    return hits_at_k(ranked_codes, target_set, k) / len(target_set)


def hits_at_k(ranked_codes: Sequence[str], targets: set[str], k: int) -> int:
    """Number of targets among the first k ranked codes (duplicates in the ranking count once)."""
    return len(targets.intersection(ranked_codes[:k]))


def recall_matrix(rankings: Sequence[Sequence[str]], targets: Sequence[Iterable[str]],
                  ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Hits and target sizes for every instance and K.

    Returns (hits [n_instances, len(ks)] int64, n_targets [n_instances] int64). Per-instance recall is
    hits / n_targets[:, None]; instances with an empty target set must be filtered out by the caller.
    """
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings but {len(targets)} target sets")
    hits = np.zeros((len(rankings), len(ks)), dtype=np.int64)
    sizes = np.zeros(len(rankings), dtype=np.int64)
    for i, (ranked, target) in enumerate(zip(rankings, targets)):
        target_set = set(target)
        if not target_set:
            raise ValueError(f"instance {i}: the target set is empty, recall is undefined")
        sizes[i] = len(target_set)
        for j, k in enumerate(ks):
            hits[i, j] = hits_at_k(ranked, target_set, k)
    return hits, sizes


def mean_recall(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Macro (per-instance) mean of hits/size, one value per K column."""
    if len(sizes) == 0:
        return np.full(hits.shape[1], np.nan)
    return (hits / sizes[:, None]).mean(axis=0)


def micro_recall(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Micro recall: total hits / total target codes, one value per K column."""
    total = sizes.sum()
    if total == 0:
        return np.full(hits.shape[1], np.nan)
    return hits.sum(axis=0) / total


def bootstrap_ci_by_group(per_instance: np.ndarray, groups: Sequence[int], n_boot: int = 1000,
                          alpha: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the per-instance mean, resampling whole groups (patients) with replacement.

    per_instance: [n_instances] or [n_instances, n_metrics]. Resampling patients rather than instances keeps the
    within-patient correlation of consecutive visits in the interval. Returns (low, high), each [n_metrics].
    """
    values = np.asarray(per_instance, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values but {len(groups)} group labels")
    if len(values) == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan.copy()
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_index.max()) + 1
    # Per-group sums and counts make each replicate O(n_groups) instead of O(n_instances).
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, group_index, values)
    counts = np.bincount(group_index, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    replicate_means = np.empty((n_boot, values.shape[1]))
    chunk = max(1, 2_000_000 // n_groups)          # bounds the [chunk, n_groups] multiplicity matrix's memory
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        draws = rng.integers(0, n_groups, size=(size, n_groups))
        multiplicity = np.zeros((size, n_groups))
        np.add.at(multiplicity, (np.repeat(np.arange(size), n_groups), draws.ravel()), 1.0)
        replicate_means[start:start + size] = (multiplicity @ sums) / (multiplicity @ counts)[:, None]
    low = np.quantile(replicate_means, alpha / 2, axis=0)
    high = np.quantile(replicate_means, 1 - alpha / 2, axis=0)
    return low, high


# ------------------------------------------------------------------------------------------------------------
# Binary classification
# ------------------------------------------------------------------------------------------------------------
def _as_bool(name: str, values: Sequence) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be boolean or 0/1")
    return array.astype(bool)


def binary_metrics(y_true: Sequence, y_pred: Sequence) -> dict[str, float]:
    """Accuracy, precision, recall (sensitivity), specificity, F1 and balanced accuracy of hard predictions.

    Conventions for empty denominators (stated, not hidden): precision = 0 when nothing is predicted positive,
    recall = 0 when there are no positives, F1 = 0 when precision + recall = 0; balanced accuracy averages only
    the classes present.
    """
    truth, pred = _as_bool("y_true", y_true), _as_bool("y_pred", y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape}, y_pred {pred.shape}")
    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    class_recalls = [r for r, present in ((recall, tp + fn > 0), (specificity, tn + fp > 0)) if present]
    return {
        "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "balanced_accuracy": float(np.mean(class_recalls)) if class_recalls else float("nan"),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (the Mann-Whitney convention)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Boundaries of runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def auroc(y_true: Sequence, scores: Sequence[float]) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half). NaN with one class."""
    truth = _as_bool("y_true", y_true)
    values = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(values)
    u_statistic = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (n_pos * n_neg))


def auprc(y_true: Sequence, scores: Sequence[float]) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision, ties handled as one
    threshold (the step-wise, non-interpolated definition). NaN when there is no positive."""
    truth = _as_bool("y_true", y_true)
    values = np.asarray(scores, dtype=np.float64)
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-values, kind="mergesort")
    sorted_truth, sorted_values = truth[order], values[order]
    # Last index of each run of equal scores: a threshold admits the whole tie group at once.
    last_of_run = np.flatnonzero(np.r_[sorted_values[1:] != sorted_values[:-1], True])
    cum_tp = np.cumsum(sorted_truth)[last_of_run]
    cum_all = last_of_run + 1
    precision = cum_tp / cum_all
    recall = cum_tp / n_pos
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))
