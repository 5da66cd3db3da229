"""Metric functions against hand-computed values and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sparseehr.data_pipeline.frequency import common_codes
from sparseehr.eval.metrics import (auprc, auroc, binary_metrics, bootstrap_ci_by_group, mean_recall, micro_recall,
                                    recall_at_k, recall_matrix)


def test_recall_at_k_hand_cases():
    ranked = ["A", "B", "C", "D"]
    assert recall_at_k(ranked, {"A", "C", "Z"}, 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, {"A", "C", "Z"}, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"Z"}, 4) == 0.0            # a code the scorer cannot emit is a miss
    with pytest.raises(ValueError):
        recall_at_k(ranked, set(), 3)


def test_mean_and_micro_differ_as_hand_computed():
    rankings = [["A", "B"], ["A", "B"]]
    targets = [{"A"}, {"A", "X", "Y", "Z"}]               # recalls@1: 1 and 1/4
    hits, sizes = recall_matrix(rankings, targets, [1, 2])
    assert hits.tolist() == [[1, 1], [1, 1]] and sizes.tolist() == [1, 4]
    assert mean_recall(hits, sizes)[0] == pytest.approx((1 + 0.25) / 2)
    assert micro_recall(hits, sizes)[0] == pytest.approx(2 / 5)


def test_recall_properties_on_random_rankings():
    rng = np.random.default_rng(0)
    vocab = [f"C{i}" for i in range(30)]
    ks = [1, 3, 5, 10, 20, 30]
    rankings = [list(rng.permutation(vocab)) for _ in range(50)]
    targets = [set(rng.choice(vocab, size=rng.integers(1, 6), replace=False)) for _ in range(50)]
    hits, sizes = recall_matrix(rankings, targets, ks)
    per_instance = hits / sizes[:, None]
    assert np.all((per_instance >= 0) & (per_instance <= 1))
    assert np.all(np.diff(per_instance, axis=1) >= 0)        # monotone in K
    assert np.all(per_instance[:, -1] == 1.0)                # K covers the vocabulary
    assert np.all(np.diff(mean_recall(hits, sizes)) >= 0)


def test_binary_metrics_hand_case():
    m = binary_metrics([1, 1, 1, 0, 0], [1, 0, 1, 1, 0])   # tp 2, fn 1, fp 1, tn 1
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(7 / 12)


def test_binary_metrics_nothing_predicted_positive():
    m = binary_metrics([1, 0, 0, 0], [0, 0, 0, 0])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(0.75)


def test_auroc_hand_cases():
    assert auroc([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.3]) == pytest.approx(0.75)   # 3 of 4 pos/neg pairs ordered
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)                    # a tie counts one half
    assert auroc([1, 1, 0], [0.2, 0.9, 0.1]) == pytest.approx(1.0)
    assert auroc([0, 1], [0.9, 0.1]) == pytest.approx(0.0)
    assert math.isnan(auroc([1, 1], [0.1, 0.2]))


def test_auprc_hand_cases():
    # thresholds: (P 1, R .5), (P .5, R .5), (P 2/3, R 1) -> AP = .5*1 + .5*2/3
    assert auprc([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.3]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # a tie group is one threshold: (P .5, R .5), (P 2/3, R 1)
    assert auprc([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(0.25 + 0.5 * 2 / 3)
    assert auprc([1, 0, 0], [0.9, 0.1, 0.2]) == pytest.approx(1.0)
    assert math.isnan(auprc([0, 0], [0.1, 0.2]))


def test_bootstrap_resamples_patients_not_instances():
    # Patient 7: three instances at 1.0; patient 9: one at 0.0. Patient replicates can only be 1, 0.75 or 0.
    values = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = bootstrap_ci_by_group(values, [7, 7, 7, 9], n_boot=2000, seed=1)
    assert low[0] == pytest.approx(0.0) and high[0] == pytest.approx(1.0)
    low_a, high_a = bootstrap_ci_by_group(values, [7, 7, 7, 9], n_boot=2000, seed=1)
    assert low_a[0] == low[0] and high_a[0] == high[0]      # seeded


def test_bootstrap_ci_brackets_the_mean_and_collapses_on_constant_data():
    rng = np.random.default_rng(3)
    values = rng.random((200, 2))
    groups = rng.integers(0, 40, size=200)
    low, high = bootstrap_ci_by_group(values, groups, n_boot=500)
    assert np.all(low <= values.mean(axis=0)) and np.all(values.mean(axis=0) <= high)
    low_c, high_c = bootstrap_ci_by_group(np.full(10, 0.3), list(range(10)), n_boot=100)
    assert low_c[0] == pytest.approx(0.3) and high_c[0] == pytest.approx(0.3)


def test_common_codes_cover_the_threshold():
    counts = {"A": 50, "B": 30, "C": 15, "D": 5}
    assert common_codes(counts, 0.8) == {"A", "B"}           # 80 of 100 occurrences
    assert common_codes(counts, 0.81) == {"A", "B", "C"}
    assert common_codes(counts, 1.0) == {"A", "B", "C", "D"}
    assert common_codes({"A": 40, "B": 40, "C": 40}, 0.3) == {"A", "B", "C"}   # ties are admitted together
    with pytest.raises(ValueError):
        common_codes(counts, 0.0)


def test_history_split_separates_codes_the_patient_already_had():
    from sparseehr.eval.instances import Instance, PatientRecord
    from sparseehr.eval.nextvisit import history_split
    from sparseehr.eval.ranking import Ranking

    # visits: {I10, E11}, {J18}, target {I10, J18, K21, N17}: seen before = {I10, J18}, new = {K21, N17}
    patient = PatientRecord(7, np.arange(12), 1, np.array([1, 4, 7]), np.array([0, 1, 2]),
                            (("I10", "E11"), ("J18",), ("I10", "J18", "K21", "N17")))
    inst = Instance(patient, 2, frozenset({"I10", "J18", "K21", "N17"}))
    ranking = Ranking(("I10", "K21", "E11", "Z79", "J18"), None, 0.0)
    split = history_split([inst], [ranking], (2, 5))
    assert split["in_history"]["n_target_codes"] == 2 and split["new"]["n_target_codes"] == 2
    assert split["in_history"]["recall_at_k_micro"] == {"2": 0.5, "5": 1.0}     # I10 at rank 1, J18 at rank 5
    assert split["new"]["recall_at_k_micro"] == {"2": 0.5, "5": 0.5}            # K21 at rank 2, N17 never


def test_balanced_accuracy_bootstrap_interval_brackets_the_estimate_and_narrows_with_n() -> None:
    from sparseehr.eval.screening import bootstrap_balanced_accuracy

    # perfect classifier: every replicate has BA 1
    labels = np.array([1, 1, 0, 0] * 10, bool)
    assert bootstrap_balanced_accuracy(labels, labels) == [1.0, 1.0]
    # no cases -> undefined
    assert bootstrap_balanced_accuracy(np.zeros(8, bool), np.zeros(8, bool)) is None
    # a 75%-sensitive, 75%-specific classifier: BA 0.75, the interval brackets it and shrinks with the cohort
    small = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 5, bool)
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1] * 5, bool)
    lo, hi = bootstrap_balanced_accuracy(small, pred)
    lo_big, hi_big = bootstrap_balanced_accuracy(np.tile(small, 20), np.tile(pred, 20))
    assert lo < 0.75 < hi and lo_big < 0.75 < hi_big
    assert hi_big - lo_big < (hi - lo) / 2
