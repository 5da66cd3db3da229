"""The main job and the dense-prefix ablation, end to end at toy size (real synth, prepare, DeepSpeed, eval)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from sparseehr import ablate, demo

TINY_DEMO = ["--preset", "tiny", "--claims-patients", "600", "--mimic-patients", "150", "--max-steps", "6",
             "--micro-batch", "4", "--max-len", "128", "--eval-patients", "30", "--step-limit", "6", "--ranks", "1",
             "--curve-points", "2", "--curve-patients", "10"]


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_one_table(tmp_path, mimic_demo_hosp, capsys):
    out = tmp_path / "demo"
    assert demo.main([*TINY_DEMO, "--out", str(out), "--mimic-demo", str(mimic_demo_hosp)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {(row["target"], row["system"]): row for row in summary["rows"]}
    # Both targets, each with the model beside both baselines.
    assert set(rows) == {(target, system) for target in (demo.TARGET_SYNTH, demo.TARGET_DEMO)
                         for system in demo.SYSTEMS}
    for row in rows.values():
        for key in ("recall_at_10", "recall_at_20"):
            assert 0.0 <= row[key] <= 1.0
        assert row["recall_at_10"] <= row["recall_at_20"]
    # The real demo has 175 consecutive visit pairs; a pair whose next visit has no diagnosis is not scored.
    assert 0 < rows[(demo.TARGET_DEMO, "model")]["n_instances"] <= 175
    for paths in summary["reports"].values():
        for kind, path in paths.items():
            assert (Path(path) / ("curve.json" if kind == "curve" else "report.json")).is_file()
    # The learning curve: one point per kept checkpoint (steps 3 and 6), the baselines flat beside it.
    points = summary["curve"]["points"]
    assert [p["step"] for p in points] == [3, 6] and points[0]["tokens"] < points[1]["tokens"]
    assert set(summary["curve"]["baselines"]) == {"baseline:frequency", "baseline:history"}
    assert (out / "eval" / demo.TARGET_SYNTH / "curve" / "curve.png").is_file()
    # In-distribution screening on the pretraining system's own test split, with a bootstrap interval on BA.
    in_dist = {row["system"]: row for row in summary["in_distribution_screening"]}
    assert set(in_dist) == set(demo.SYSTEMS)
    printed = capsys.readouterr().out
    assert "| target | system | R@10 [95% CI] | R@20 [95% CI] |" in printed
    assert "Learning curve" in printed and "In-distribution diabetes screening" in printed

    # --resume after losing the export and every evaluation: the finished stages are skipped, the lost ones run
    # again from the kept checkpoint and reproduce the same table (recomputed, not re-read: the reports are gone).
    shutil.rmtree(out / "hf")
    shutil.rmtree(out / "eval")
    (out / "summary.json").unlink()
    assert demo.main([*TINY_DEMO, "--out", str(out), "--mimic-demo", str(mimic_demo_hosp), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert any("train the tiny hybrid MoE" in line and "skipped" in line for line in printed.splitlines())
    assert "export to Hugging Face ..." in printed and "next-visit Recall@K (model + baselines) ..." in printed
    again = json.loads((out / "summary.json").read_text())
    assert again["rows"] == summary["rows"]


def test_demo_refuses_to_reuse_a_folder_without_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    assert demo.main(["--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_demo_rejects_an_ep_size_that_does_not_divide_ranks(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "x"), "--ranks", "1", "--ep-size", "2"]) == 2
    assert "--ep-size" in capsys.readouterr().err


def test_ablation_headline_ratios_are_d4_over_d0():
    rows = [{"dense_layers": 0, "active_params_per_token": 200, "step_time_s": 2.0, "val_ppl": 10.0},
            {"dense_layers": 4, "active_params_per_token": 150, "step_time_s": 1.5, "val_ppl": 11.0}]
    ratios = ablate.headline(rows)
    assert ratios["active_params_ratio_d4_over_d0"] == pytest.approx(0.75)
    assert ratios["step_time_ratio_d4_over_d0"] == pytest.approx(0.75)
    assert ratios["val_ppl_ratio_d4_over_d0"] == pytest.approx(1.1)
    assert ablate.headline(rows[:1]) == {}


@pytest.mark.slow
def test_ablation_trains_each_variant_on_the_same_budget(tmp_path):
    out = tmp_path / "ablate"
    assert ablate.main(["dense-prefix", "--dense-layers", "0", "4", "--preset", "tiny", "--num-layers", "4",
                        "--patients", "300", "--max-tokens", "3000", "--seq-len", "128", "--micro-batch", "4",
                        "--out", str(out)]) == 0
    result = json.loads((out / "ablation.json").read_text())
    rows = {row["dense_layers"]: row for row in result["rows"]}
    assert sorted(rows) == [0, 4]
    # Same architecture except the MLP kind of the first D layers: a dense MLP (3*32*64 weights) replaces
    # 4 experts + shared expert (5*3*32*32) + router (32*4) in each of the 4 layers, embeddings unchanged.
    assert rows[0]["total_params"] - rows[4]["total_params"] == 4 * (5 * 3 * 32 * 32 + 32 * 4 - 3 * 32 * 64)
    # D = num_layers has no MoE layer, so no expert utilisation; every other variant reports one.
    assert rows[4]["expert_util_std"] is None and rows[0]["expert_util_std"] is not None
    for row in rows.values():
        assert math.isfinite(row["val_ppl"]) and row["val_ppl"] > 1
        assert row["tokens"] >= 3000
    assert set(result["headline"]) == {"active_params_ratio_d4_over_d0", "step_time_ratio_d4_over_d0",
                                       "val_ppl_ratio_d4_over_d0"}
    assert (out / "ablation.md").is_file() and (out / "ablation.png").is_file()
