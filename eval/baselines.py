"""Baselines scored on exactly the model's instances.

baseline:frequency - the same population ranking for everyone: training-split diagnosis counts, descending.
baseline:history   - the patient's own past diagnosis codes, most recent visit first; within a visit, codes seen in
                     more past visits first, then by training frequency; then backfilled by the frequency ranking.
Both rank every code in train_code_counts (not only the model's vocabulary): a baseline is not handicapped by
the model's vocabulary.
"""
from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

from sparseehr.eval.cohort import is_diabetes_code
from sparseehr.data_pipeline.frequency import codes_by_frequency
from sparseehr.eval.instances import Instance
from sparseehr.eval.ranking import Ranking

FREQUENCY = "baseline:frequency"
HISTORY = "baseline:history"
BASELINE_NAMES = (FREQUENCY, HISTORY)


class FrequencyBaseline:
    """Population top-K; continuous score of a code = its share of training diagnosis occurrences."""

    name = FREQUENCY

    def __init__(self, train_code_counts: Mapping[str, int]):
        self.order = codes_by_frequency(train_code_counts)
        self.rank_of = {code: i for i, code in enumerate(self.order)}
        total = sum(train_code_counts.values()) or 1
        self.share = {code: train_code_counts[code] / total for code in self.order}
        diabetic = [i for i, code in enumerate(self.order) if is_diabetes_code(code)]
        self.diabetes_positions = diabetic   # ranks of diabetes codes, ascending

    def rank(self, instances: Sequence[Instance], top_n: int) -> list[Ranking]:
        top = tuple(self.order[:top_n])
        if self.diabetes_positions:
            best = self.diabetes_positions[0]
            shared = Ranking(top, best, self.share[self.order[best]])
        else:
            shared = Ranking(top, None, 0.0)
        return [shared for _ in instances]


class HistoryBaseline:
    """Recency-then-count ranking of the patient's own codes, backfilled by population frequency.

    Continuous score of the code at 0-based rank r: 1 / (1 + r) (the ranking is all this baseline has)."""

    name = HISTORY

    def __init__(self, train_code_counts: Mapping[str, int]):
        self.frequency = FrequencyBaseline(train_code_counts)

    def rank_one(self, instance: Instance, top_n: int) -> Ranking:
        freq = self.frequency
        last_seen: dict[str, int] = {}
        visits_with: dict[str, int] = {}
        for visit_index, visit in enumerate(instance.history_dx_codes):
            for code in set(visit):
                last_seen[code] = visit_index
                visits_with[code] = visits_with.get(code, 0) + 1
        n_unranked = len(freq.order)
        history = sorted(last_seen, key=lambda c: (-last_seen[c], -visits_with[c], freq.rank_of.get(c, n_unranked), c))
        history_set = set(history)

        top = list(history[:top_n])
        for code in freq.order:
            if len(top) >= top_n:
                break
            if code not in history_set:
                top.append(code)

        diabetes_rank = next((i for i, code in enumerate(history) if is_diabetes_code(code)), None)
        if diabetes_rank is None:
            # Rank in the backfill = len(history) + frequency rank minus the history codes ranked above it.
            history_freq_ranks = sorted(freq.rank_of[c] for c in history if c in freq.rank_of)
            for position in freq.diabetes_positions:
                if freq.order[position] not in history_set:
                    diabetes_rank = len(history) + position - bisect.bisect_left(history_freq_ranks, position)
                    break
        score = 0.0 if diabetes_rank is None else 1.0 / (1.0 + diabetes_rank)
        return Ranking(tuple(top), diabetes_rank, score)

    def rank(self, instances: Sequence[Instance], top_n: int) -> list[Ranking]:
        return [self.rank_one(inst, top_n) for inst in instances]


def make_baseline(name: str, train_code_counts: Mapping[str, int]):
    if name == FREQUENCY:
        return FrequencyBaseline(train_code_counts)
    if name == HISTORY:
        return HistoryBaseline(train_code_counts)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINE_NAMES)}")

