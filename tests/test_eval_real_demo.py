"""`sparseehr eval` end to end on the real MIMIC-IV demo, prepared by the real `sparseehr prepare`, with a tiny
(random-weight) SparseEHRForCausalLM saved by save_pretrained: the plumbing on real data, checked against counts
taken independently from the DATA_DIR."""
from __future__ import annotations

import json

import pytest
import torch

from sparseehr.data_pipeline import schema
from sparseehr.data_pipeline.cli import main as prepare_main
from sparseehr.data_pipeline.datadir import load_patients, load_tokenizer
from sparseehr.eval.cli import main as eval_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(mimic_demo_hosp, tmp_path_factory):
    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM
    from sparseehr.model.presets import get_preset

    data_dir = tmp_path_factory.mktemp("demo") / "data"
    assert prepare_main(["--mimic", str(mimic_demo_hosp), "--out", str(data_dir), "--no-progress"]) == 0
    tokenizer = load_tokenizer(data_dir)
    torch.manual_seed(0)
    model = SparseEHRForCausalLM(get_preset("tiny", vocab_size=len(tokenizer), max_position_embeddings=256))
    model_dir = tmp_path_factory.mktemp("demo") / "hf"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return data_dir, model_dir, tokenizer


def test_next_visit_on_the_real_demo(demo, tmp_path):
    data_dir, model_dir, tokenizer = demo
    out = tmp_path / "nv"
    assert eval_main(["next-visit", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
                      "--k", "10", "20", "--step-limit", "6", "--bootstrap", "100"]) == 0
    report = json.loads((out / "report.json").read_text())
    # Independent count from the DATA_DIR: pairs whose next visit has diagnoses, and target codes the model
    # cannot emit.
    dx_vocab = {tok[len(schema.DX_PREFIX):] for tok in tokenizer.get_vocab()
                if tok.startswith(schema.DX_PREFIX) and tok != schema.DX_UNK_TOKEN}
    targets = [set(visit) for visits in load_patients(data_dir, schema.SPLIT_TEST)[schema.COL_VISIT_DX_CODES]
               for visit in visits[1:] if visit]
    assert report["n_instances"] == len(targets) > 0
    assert report["targets"]["n_target_codes"] == sum(map(len, targets))
    assert report["targets"]["n_out_of_vocabulary"] == sum(len(t - dx_vocab) for t in targets)
    for block in [report, *report["baselines"].values()]:
        assert 0 <= block["recall_at_k"]["10"] <= block["recall_at_k"]["20"] <= 1
    assert (out / "report.md").is_file() and (out / "recall_at_k.png").is_file()


def test_screening_and_routing_on_the_real_demo(demo, tmp_path):
    data_dir, model_dir, _ = demo
    out = tmp_path / "sc"
    # The demo's 100 patients hold very few first-time diabetes visits, so the zero-shot recipe pools splits.
    assert eval_main(["screening", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
                      "--scoring", "first-step", "--select-on", "train", "--test-on", "validation", "test"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cohort"]["validation"]["n_cases"] >= 1
    assert len(report["validation_sweep"]) == 7 and report["k_cls"] in report["k_cls_grid"]
    out_routing = tmp_path / "routing"
    assert eval_main(["routing", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out_routing)]) == 0
    routing = json.loads((out_routing / "report.json").read_text())
    totals = {tuple(map(sum, zip(*layer["by_token_type"]))) for layer in routing["layers"]}
    assert len(totals) == 1 and sum(next(iter(totals))) == routing["n_tokens"] > 0   # each token routed once
