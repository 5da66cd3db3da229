"""Next-visit evaluation of one scorer's rankings: Recall@K (mean, micro, patient bootstrap CI) and the
rare/common split. Returns the JSON-ready block that report.json holds for the model and for each baseline."""
from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from sparseehr.eval.instances import Instance
from sparseehr.eval.metrics import bootstrap_ci_by_group, mean_recall, micro_recall, recall_matrix
from sparseehr.eval.ranking import Ranking

DEFAULT_KS = (1, 3, 5, 10, 20, 50, 100)


def _by_k(ks: Sequence[int], values: np.ndarray) -> dict[str, float | None]:
    return {str(k): (None if np.isnan(v) else float(v)) for k, v in zip(ks, values)}


def _subset_recall(instances: Sequence[Instance], rankings: Sequence[Ranking], ks: Sequence[int],
                   keep: Collection[str], keep_is_member: bool) -> dict:
    """Recall@K restricted to target codes in (or, with keep_is_member False, outside) `keep`; instances whose
    restricted target set is empty are left out of that subset's mean."""
    return _restricted_recall(rankings, ks, [{code for code in inst.targets if (code in keep) == keep_is_member}
                                             for inst in instances])


def _restricted_recall(rankings: Sequence[Ranking], ks: Sequence[int], targets: Sequence[set[str]]) -> dict:
    """Recall@K of each ranking against its own restricted target set (empty sets are left out)."""
    pairs = [(ranking.top_codes, kept) for ranking, kept in zip(rankings, targets) if kept]
    if not pairs:
        return {"n_instances": 0, "n_target_codes": 0, "recall_at_k": _by_k(ks, np.full(len(ks), np.nan)),
                "recall_at_k_micro": _by_k(ks, np.full(len(ks), np.nan))}
    hits, sizes = recall_matrix([p[0] for p in pairs], [p[1] for p in pairs], ks)
    return {"n_instances": len(pairs), "n_target_codes": int(sizes.sum()),
            "recall_at_k": _by_k(ks, mean_recall(hits, sizes)),
            "recall_at_k_micro": _by_k(ks, micro_recall(hits, sizes))}


def history_split(instances: Sequence[Instance], rankings: Sequence[Ranking], ks: Sequence[int]) -> dict:
    """Recall@K on target codes the patient already had at an earlier visit (what copying the history can reach)
    and on codes new to the patient (what only a model of how conditions evolve can reach)."""
    seen = [{code for visit in inst.history_dx_codes for code in visit} for inst in instances]
    return {
        "in_history": _restricted_recall(rankings, ks, [set(inst.targets) & s for inst, s in zip(instances, seen)]),
        "new": _restricted_recall(rankings, ks, [set(inst.targets) - s for inst, s in zip(instances, seen)]),
    }


def evaluate_rankings(instances: Sequence[Instance], rankings: Sequence[Ranking], ks: Sequence[int],
                      common: Collection[str], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The metric block of one scorer on the given instances (see docs/eval.md for each definition)."""
    if len(instances) != len(rankings):
        raise ValueError(f"{len(instances)} instances but {len(rankings)} rankings")
    if not instances:
        raise ValueError("no next-visit instances to evaluate (every patient has fewer than two visits with a "
                         "diagnosis-bearing next visit)")
    short = [i for i, r in enumerate(rankings) if len(r.top_codes) < max(ks)]
    hits, sizes = recall_matrix([r.top_codes for r in rankings], [inst.targets for inst in instances], ks)
    per_instance = hits / sizes[:, None]
    low, high = bootstrap_ci_by_group(per_instance, [inst.subject_id for inst in instances],
                                      n_boot=n_bootstrap, seed=seed)
    return {
        "recall_at_k": _by_k(ks, mean_recall(hits, sizes)),
        "recall_at_k_micro": _by_k(ks, micro_recall(hits, sizes)),
        "recall_at_k_ci": {str(k): [float(lo), float(hi)] for k, lo, hi in zip(ks, low, high)},
        "n_instances_ranking_shorter_than_max_k": len(short),
        "rare_common": {
            "common": _subset_recall(instances, rankings, ks, common, keep_is_member=True),
            "rare": _subset_recall(instances, rankings, ks, common, keep_is_member=False),
        },
        "history_split": history_split(instances, rankings, ks),
    }


def target_vocabulary_summary(instances: Sequence[Instance], vocabulary: Collection[str]) -> dict:
    """How many target codes the scorer cannot emit (they stay in Y and count as misses)."""
    n_codes = sum(len(inst.targets) for inst in instances)
    missing = [sum(code not in vocabulary for code in inst.targets) for inst in instances]
    return {"n_target_codes": n_codes, "n_out_of_vocabulary": int(sum(missing)),
            "n_instances_with_out_of_vocabulary": int(sum(m > 0 for m in missing)),
            "vocabulary_size": len(vocabulary)}
