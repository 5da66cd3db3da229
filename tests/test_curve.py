"""`sparseehr curve`: the crossing point and the table, on a hand-built curve (the demo test runs it for real)."""
from __future__ import annotations

from sparseehr.curve import _crossing, curve_markdown, main

BASELINES = {"baseline:frequency": {"10": 0.2, "20": 0.3}, "baseline:history": {"10": 0.45, "20": 0.6}}


def _point(step, tokens, r10, r20):
    return {"step": step, "tokens": tokens, "recall_at_10": r10, "recall_at_20": r20,
            "copy_r10_common": None, "copy_r10_rare": 0.1, "n_instances": 10}


def test_crossing_is_the_first_point_strictly_above_history_at_each_k():
    points = [_point(100, 1000, 0.30, 0.40), _point(200, 2000, 0.45, 0.58), _point(300, 3000, 0.50, 0.59),
              _point(400, 4000, 0.52, 0.61)]
    crossing = _crossing(points, BASELINES)
    assert crossing["R@10"] == {"step": 300, "tokens": 3000}      # 0.45 ties history at step 200: not a win
    assert crossing["R@20"] == {"step": 400, "tokens": 4000}
    assert _crossing(points[:2], BASELINES) == {"R@10": None, "R@20": None}


def test_table_lists_every_point_and_both_flat_baselines():
    curve = {"points": [_point(100, 1000, 0.3, 0.4)], "baselines": BASELINES,
             "crosses_history": {"R@10": None, "R@20": None}}
    table = curve_markdown(curve)
    assert "| 100 | 1,000 | 0.300 | 0.400 | n/a | 0.100 |" in table
    assert "| baseline:history (flat) | | 0.450 | 0.600 | | |" in table
    assert "not within this run" in table


def test_missing_run_dir_is_a_usage_error(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "none"), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
