"""`sparseehr eval` end to end on the tiny contract DATA_DIR: baselines against hand-computed values, the fitted
tiny model through next-visit, screening and routing, and the error paths."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from sparseehr.eval.cli import main

from eval_tiny_datadir import build_datadir, build_tokenizer, save_model_dir, train_tiny_model

KS = ["1", "3", "10"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_datadir(tmp_path_factory.mktemp("datadir"))


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    return save_model_dir(train_tiny_model(data_dir), tmp_path_factory.mktemp("hf"))


def run(*argv) -> int:
    return main([str(a) for a in argv])


def test_next_visit_frequency_baseline_matches_hand_computation(data_dir, tmp_path):
    out = tmp_path / "nv"
    assert run("next-visit", "--model", "baseline:frequency", "--data", data_dir, "--out", out, "--k", *KS,
               "--bootstrap", "200", "--common-coverage", "0.7") == 0
    report = json.loads((out / "report.json").read_text())
    # Test split: 7 scored pairs from 5 patients (patient 22's third visit has no diagnosis); 12 target codes,
    # one (Q999) outside every vocabulary. Frequency order: I10, E119, J45, K21, A00, E11, N179, Z00.
    assert (report["n_instances"], report["n_patients"], report["n_pairs_without_dx_target"]) == (7, 5, 1)
    assert report["targets"]["n_target_codes"] == 12 and report["targets"]["n_out_of_vocabulary"] == 1
    assert report["recall_at_k"]["1"] == pytest.approx(1.5 / 7)       # I10 hits 3 of 7 instances, each 1/2
    assert report["recall_at_k_micro"]["1"] == pytest.approx(3 / 12)
    assert report["recall_at_k"]["3"] == pytest.approx(3.5 / 7)
    low, high = report["recall_at_k_ci"]["1"]
    assert 0 <= low <= report["recall_at_k"]["1"] <= high <= 1
    assert set(report["baselines"]) == {"baseline:frequency", "baseline:history"}
    # The report's baseline block holds the same hand-computed figures (not compared with the model block, which
    # for --model baseline:frequency is the same ranking).
    assert report["baselines"]["baseline:frequency"]["recall_at_k"]["1"] == pytest.approx(1.5 / 7)
    assert report["baselines"]["baseline:frequency"]["recall_at_k"]["3"] == pytest.approx(3.5 / 7)
    # 70% of 18 training occurrences = 12.6: I10, E119, J45 (12) then K21 (14) are common; the rare targets are
    # Z00, N179, E11 and Q999, one in each of four instances, all beyond the top 3.
    assert report["n_common_codes"] == 4
    assert report["rare_common"]["rare"]["n_instances"] == 4
    assert report["rare_common"]["rare"]["recall_at_k"]["3"] == 0.0
    # every instance has a common target; I10 at rank 1 hits 1/2, 1 and 1
    assert report["rare_common"]["common"]["recall_at_k"]["1"] == pytest.approx((1 / 2 + 1 + 1) / 7)
    assert (out / "report.md").read_text().count("baseline:history") >= 2
    assert (out / "recall_at_k.png").stat().st_size > 1000


def test_screening_frequency_baseline_and_predictions_layout(data_dir, tmp_path):
    out = tmp_path / "sc"
    assert run("screening", "--model", "baseline:frequency", "--data", data_dir, "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cohort"]["validation"]["n_cases"] == 2 and report["cohort"]["validation"]["n_controls"] == 2
    assert report["cohort"]["test"] == {"n_cases": 2, "n_controls": 2, "n_control_patients_available": 2,
                                        "n_controls_requested": 2, "controls_short": 0}
    # E119 is the population's 2nd code: every k_cls gives one class -> BA 0.5 everywhere, ties -> k_cls 1.
    assert [row["balanced_accuracy"] for row in report["validation_sweep"]] == [0.5] * 7
    assert report["k_cls"] == 1
    assert report["test"]["recall"] == 0.0 and report["test"]["accuracy"] == 0.5
    assert report["test"]["auroc"] == pytest.approx(0.5) and report["test"]["auprc"] == pytest.approx(0.5)
    table = pq.read_table(out / "predictions" / "model.parquet")
    assert table.column_names == ["subject_id", "prediction_time", "boolean_value", "predicted_boolean_value",
                                  "predicted_boolean_probability"]
    assert str(table.schema.field("prediction_time").type) == "timestamp[us]"
    rows = table.to_pylist()
    assert {(r["subject_id"], r["boolean_value"]) for r in rows} == {(20, True), (24, True), (21, False),
                                                                     (22, False)}
    assert (out / "predictions" / "baseline_history.parquet").is_file() and (out / "screening_sweep.png").is_file()


def test_model_next_visit_and_screening_beside_baselines(data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "nv_model"
    assert run("next-visit", "--model", model_dir, "--data", data_dir, "--out", out, "--k", *KS,
               "--bootstrap", "100", "--step-limit", "8", "--batch-size", "3") == 0
    assert "instances/s" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["scoring"]["mode"] == "rollout" and report["instances_per_s"] > 0
    assert report["n_instances"] == 7 and report["targets"]["n_out_of_vocabulary"] == 1
    recalls = [report["recall_at_k"][k] for k in KS]
    assert recalls == sorted(recalls) and all(0 <= r <= 1 for r in recalls)
    # 8 DX tokens in the vocabulary: K=10 ranks all of them, so only the out-of-vocabulary code is missed.
    assert report["recall_at_k_micro"]["10"] == pytest.approx(11 / 12)
    out_sc = tmp_path / "sc_model"
    assert run("screening", "--model", model_dir, "--data", data_dir, "--out", out_sc, "--scoring", "first-step",
               "--k-cls", "1", "3", "10") == 0
    screening = json.loads((out_sc / "report.json").read_text())
    assert screening["k_cls"] in (1, 3, 10) and set(screening["test"]) >= {"accuracy", "precision", "recall", "f1",
                                                                           "balanced_accuracy", "auroc", "auprc"}
    assert 0 <= screening["test"]["auroc"] <= 1


def test_routing_counts_every_token_once_per_route(data_dir, model_dir, tmp_path):
    out = tmp_path / "routing"
    assert run("routing", "--model", model_dir, "--data", data_dir, "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    # Test split: 89 tokens: 17 diagnosis, 13 procedure, 13 gap, 26 visit markers, 10 demographic, 10 special.
    expected = {"diagnosis": 17, "procedure": 13, "gap": 13, "visit_marker": 26, "demographic": 10, "special": 10}
    assert report["n_tokens"] == 89 and report["n_sequences"] == 5
    for layer in report["layers"]:
        per_type = {t: sum(row[i] for row in layer["by_token_type"]) for i, t in enumerate(report["token_types"])}
        assert {t: n for t, n in per_type.items() if n} == expected
        assert sum(map(sum, layer["by_icd10_chapter"])) == 17
        assert sum(layer["expert_share"]) == pytest.approx(1.0)
        assert 0 <= layer["routing_entropy_normalised"] <= 1
    # Utilisation std recomputed from the raw routed-token counts (experts x token types) with the standard
    # library's population std, then averaged over layers.
    stds = []
    for layer in report["layers"]:
        per_expert = [sum(row) for row in layer["by_token_type"]]
        shares = [n / sum(per_expert) for n in per_expert]
        assert layer["expert_share"] == pytest.approx(shares)
        assert layer["utilisation_std"] == pytest.approx(statistics.pstdev(shares), abs=1e-12)
        stds.append(statistics.pstdev(shares))
    assert report["utilisation_std_mean"] == pytest.approx(statistics.fmean(stds), abs=1e-12)
    assert "4 E00-E89" in report["icd10_chapters"] and "unknown" in report["icd10_chapters"]   # DX:<unk>
    assert (out / "routing_heatmap.png").stat().st_size > 1000


def test_errors_exit_non_zero_and_leave_nothing(data_dir, model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert run("next-visit", "--model", tmp_path / "no_model", "--data", data_dir, "--out", out) == 1
    assert "config.json missing" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".never.tmp-*"))
    other_vocab = tmp_path / "other_vocab"
    shutil.copytree(model_dir, other_vocab)
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["DX:E780"])                       # ids no longer mean what the DATA_DIR means
    tokenizer.save_pretrained(str(other_vocab))
    assert run("routing", "--model", other_vocab, "--data", data_dir, "--out", out) == 1
    assert "prepare the data with the model's vocabulary" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run("next-visit", "--model", "baseline:frequency", "--data", tmp_path / "missing", "--out", out)
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        run("next-visit", "--model", "baseline:frequency", "--data", data_dir, "--out", out, "--samples", "3")
    with pytest.raises(SystemExit):
        run("screening", "--model", "baseline:frequency", "--data", data_dir, "--out", out,
            "--select-on", "validation", "--test-on", "validation", "test")
    assert not out.exists()


def test_console_command_in_a_subprocess(data_dir, tmp_path):
    out = tmp_path / "sub"
    result = subprocess.run([sys.executable, "-m", "sparseehr", "eval", "next-visit", "--model", "baseline:history",
                             "--data", str(data_dir), "--out", str(out), "--k", "1", "5", "--bootstrap", "50"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "baseline:history" and report["n_instances"] == 7


def test_pooled_splits(data_dir, tmp_path):
    out = tmp_path / "pooled"
    assert run("next-visit", "--model", "baseline:frequency", "--data", data_dir, "--out", out,
               "--split", "validation", "test", "--bootstrap", "20") == 0
    report = json.loads((out / "report.json").read_text())
    # validation adds 1 + 2 + 1 + 1 = 5 pairs from 4 patients to the test split's 7 from 5
    assert (report["split"], report["n_instances"], report["n_patients"]) == ("validation+test", 12, 9)


def test_max_patients_draws_a_seeded_subset(data_dir, tmp_path):
    reports = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run("next-visit", "--model", "baseline:history", "--data", data_dir, "--out", out,
                   "--max-patients", "2", "--seed", "4", "--bootstrap", "20") == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["n_patients_in_split"] == 2
    assert reports[0]["recall_at_k"] == reports[1]["recall_at_k"]
    assert reports[0]["n_instances"] == reports[1]["n_instances"]
