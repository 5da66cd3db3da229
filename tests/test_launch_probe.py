"""The copy probe's counting on a hand-built window (launch/probe.py)."""
from __future__ import annotations

import numpy as np

from sparseehr.launch.probe import PROBE_K, CopyProbe


def _vocab(n_dx: int) -> dict[str, int]:
    vocab = {"<pad>": 0, "<bos>": 1, "VISIT:open": 2, "VISIT:close": 3, "GAP:first": 4, "DX:<unk>": 5}
    for i in range(n_dx):
        vocab[f"DX:C{i:02d}"] = 6 + i
    return vocab


def test_copy_targets_are_split_rare_common_and_scored_by_max_over_the_visit() -> None:
    n_dx = 30
    vocab = _vocab(n_dx)
    dx = lambda i: 6 + i                                   # noqa: E731  token id of DX:C<i>
    probe = CopyProbe([[0]], vocab, common={"C00", "C01"}, rank=0, world_size=1, pad_id=0)
    # visit 1: C00 C20 ; visit 2: C00 (copy, common) C20 (copy, rare) C25 (new) ; visit 2 is scored
    ids = np.array([1, 4, 2, dx(0), dx(20), 3, 4, 2, dx(0), dx(20), dx(25), 3])
    n_cols = len(probe.dx_ids)
    col = {int(t): c for c, t in enumerate(probe.dx_ids.tolist())}
    probs = np.full((ids.size, n_cols), 1e-4)
    # inside visit 2 (positions 7..10): C00 high at one position only, C20 ranked below PROBE_K fillers
    probs[9, col[dx(0)]] = 0.5
    for j in range(1, PROBE_K + 1):                      # PROBE_K fillers outrank C20 (and C25)
        probs[8, col[dx(j)]] = 0.1
    probs[10, col[dx(20)]] = 0.05
    probs[10, col[dx(25)]] = 0.05
    # probability outside the visit (position 11 = VISIT:close) must not count
    probs[11, col[dx(25)]] = 0.9
    totals = np.zeros(6)
    probe._count(ids, probs, totals)
    # copy common: C00 hit (1/1); copy rare: C20 miss (0/1); new: C25 miss (0/1)
    assert totals.tolist() == [1, 1, 0, 1, 0, 1]
    # raise C20 above the fillers: now a rare copy hit
    probs[10, col[dx(20)]] = 0.2
    totals = np.zeros(6)
    probe._count(ids, probs, totals)
    assert totals.tolist() == [1, 1, 1, 1, 0, 1]


def test_a_window_cut_inside_a_visit_scores_only_complete_visits() -> None:
    vocab = _vocab(5)
    probe = CopyProbe([[0]], vocab, common=set(), rank=0, world_size=1, pad_id=0)
    ids = np.array([1, 4, 2, 6, 3, 4, 2, 6])              # the second visit has no VISIT:close
    totals = np.zeros(6)
    probe._count(ids, np.full((ids.size, len(probe.dx_ids)), 0.1), totals)
    assert totals.sum() == 0
