"""Diabetes screening from next-visit rankings: k_cls sweep on validation (chosen by balanced accuracy), test
metrics at the chosen k_cls, AUROC/AUPRC from the continuous diabetes score, meds-evaluation predictions."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from sparseehr.data_pipeline import schema
from sparseehr.eval.cohort import ScreeningCohort
from sparseehr.eval.metrics import auprc, auroc, binary_metrics
from sparseehr.eval.ranking import Ranking

DEFAULT_K_CLS = (1, 3, 5, 10, 20, 50, 100)
# Used only when the validation cohort lacks cases or controls, so no k_cls can be chosen there: the paper's
# chosen value (Table 6). The report says when this happened.
FALLBACK_K_CLS = 50

# meds-evaluation binary-classification prediction columns
PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
PREDICTED_BOOLEAN_VALUE = "predicted_boolean_value"
PREDICTED_BOOLEAN_PROBABILITY = "predicted_boolean_probability"

SWEEP_KEYS = ("accuracy", "precision", "recall", "f1", "balanced_accuracy")


def predict_positive(rankings: Sequence[Ranking], k_cls: int) -> np.ndarray:
    """Positive when any diabetes code is among the top-k_cls ranked codes."""
    return np.array([r.diabetes_rank is not None and r.diabetes_rank < k_cls for r in rankings], dtype=bool)


def _clean(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def sweep(labels: np.ndarray, rankings: Sequence[Ranking], k_grid: Sequence[int]) -> list[dict]:
    rows = []
    for k in k_grid:
        metrics = binary_metrics(labels, predict_positive(rankings, k))
        rows.append({"k_cls": int(k), **{key: _clean(metrics[key]) for key in SWEEP_KEYS}})
    return rows


def choose_k_cls(validation_sweep: list[dict], labels: np.ndarray) -> tuple[int, str]:
    """Highest validation balanced accuracy; ties go to the smallest k_cls (the most specific rule)."""
    if labels.size == 0 or labels.all() or not labels.any():
        return FALLBACK_K_CLS, (f"fallback {FALLBACK_K_CLS}: the validation cohort has "
                                f"{int(labels.sum())} cases and {int((~labels).sum())} controls")
    best = max(validation_sweep, key=lambda row: (row["balanced_accuracy"], -row["k_cls"]))
    return best["k_cls"], "max validation balanced accuracy (ties: smallest k_cls)"


def evaluate_screening(validation: ScreeningCohort, validation_rankings: Sequence[Ranking],
                       test: ScreeningCohort, test_rankings: Sequence[Ranking], k_grid: Sequence[int]) -> dict:
    validation_sweep = sweep(validation.labels, validation_rankings, k_grid)
    k_cls, how = choose_k_cls(validation_sweep, validation.labels)
    predicted = predict_positive(test_rankings, k_cls)
    test_metrics = binary_metrics(test.labels, predicted)
    scores = [r.diabetes_score for r in test_rankings]
    return {
        "k_cls": k_cls,
        "k_cls_selection": how,
        "validation_sweep": validation_sweep,
        "test": {**{key: _clean(test_metrics[key]) for key in SWEEP_KEYS},
                 "auroc": _clean(auroc(test.labels, scores)) if len(scores) else None,
                 "auprc": _clean(auprc(test.labels, scores)) if len(scores) else None,
                 "balanced_accuracy_ci": bootstrap_balanced_accuracy(test.labels, predicted),
                 **{key: test_metrics[key] for key in ("tp", "fp", "fn", "tn")}},
    }


def bootstrap_balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_boot: int = 1000, seed: int = 0,
                                alpha: float = 0.05) -> list[float] | None:
    """Percentile bootstrap 95% interval of the balanced accuracy, resampling cohort instances (one per patient,
    so this is a patient bootstrap). None when the cohort lacks cases or controls."""
    labels, predicted = np.asarray(labels, bool), np.asarray(predicted, bool)
    if labels.all() or not labels.any():
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, labels.size, size=(n_boot, labels.size))
    y, p = labels[idx], predicted[idx]
    pos, neg = y.sum(axis=1), (~y).sum(axis=1)
    ok = (pos > 0) & (neg > 0)
    tpr = (y & p).sum(axis=1)[ok] / pos[ok]
    tnr = (~y & ~p).sum(axis=1)[ok] / neg[ok]
    ba = (tpr + tnr) / 2
    return [float(np.quantile(ba, alpha / 2)), float(np.quantile(ba, 1 - alpha / 2))]


def predictions_table(cohort: ScreeningCohort, rankings: Sequence[Ranking], k_cls: int) -> pa.Table:
    """meds-evaluation layout: one row per cohort instance, prediction_time = start of the last observed visit."""
    times = np.array([inst.prediction_time for inst in cohort.instances], dtype=np.int64) * 1_000_000
    return pa.table({
        schema.SUBJECT_ID: pa.array([inst.subject_id for inst in cohort.instances], pa.int64()),
        PREDICTION_TIME: pa.array(times, pa.timestamp("us")),
        BOOLEAN_VALUE: pa.array(cohort.labels.tolist(), pa.bool_()),
        PREDICTED_BOOLEAN_VALUE: pa.array(predict_positive(rankings, k_cls).tolist(), pa.bool_()),
        PREDICTED_BOOLEAN_PROBABILITY: pa.array([r.diabetes_score for r in rankings], pa.float64()),
    })
