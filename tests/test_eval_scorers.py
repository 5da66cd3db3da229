"""The model scorer on a real tiny SparseEHRForCausalLM fitted to the fixture DATA_DIR, checked against an
independent uncached recomputation of every step."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from sparseehr.data_pipeline import schema
from sparseehr.eval.instances import build_instances, patient_records
from sparseehr.eval.scorers import ModelScorer, ScoringConfig

from eval_tiny_datadir import DX_CODES, build_datadir, build_tokenizer, train_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data_dir = build_datadir(tmp_path_factory.mktemp("datadir"))
    model = train_tiny_model(data_dir)
    rows = datasets.load_from_disk(str(data_dir / schema.DATA_PATIENTS_DIR))
    instances = build_instances(patient_records(rows[schema.SPLIT_TEST])).instances \
        + build_instances(patient_records(rows[schema.SPLIT_TRAIN])).instances
    return model, build_tokenizer(), instances


def step_distributions(model, prompt: list[int], rollout: list[int]) -> torch.Tensor:
    """Softmax at each generation step by one uncached forward over prompt + rollout: [len(rollout), vocab]."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + rollout]), use_cache=False).logits[0]
    return torch.softmax(logits[len(prompt) - 1: len(prompt) - 1 + len(rollout)].float(), dim=-1)


def test_only_diagnosis_tokens_are_ranked(setup):
    model, tokenizer, _ = setup
    scorer = ModelScorer(model, tokenizer, ScoringConfig())
    assert sorted(scorer.codes) == sorted(DX_CODES)                   # DX:<unk> and non-DX tokens excluded


def test_rollout_is_greedy_stops_at_close_and_scores_max_over_steps(setup):
    model, tokenizer, instances = setup
    scorer = ModelScorer(model, tokenizer, ScoringConfig(mode="rollout", step_limit=12))
    vocab = tokenizer.get_vocab()
    stops = {vocab[schema.VISIT_CLOSE_TOKEN], vocab[schema.EOR_TOKEN]}
    prompts = [scorer.prompt(inst) for inst in instances]
    assert all(p[-1] == vocab[schema.VISIT_OPEN_TOKEN] for p in prompts)
    scores = scorer.score_prompts(prompts)
    closed = 0
    for row, (prompt, rollout) in enumerate(zip(prompts, scores.rollouts)):
        assert rollout[-1] in stops or len(rollout) == 12
        assert not stops.intersection(rollout[:-1])                   # nothing counted after the stop
        closed += rollout[-1] == vocab[schema.VISIT_CLOSE_TOKEN]
        probs = step_distributions(model, prompt, rollout)
        assert probs.argmax(dim=-1).tolist() == rollout               # greedy, KV cache == no cache
        expected = probs[:, scorer.dx_token_ids].max(dim=0).values.numpy()
        np.testing.assert_allclose(scores.primary[row], expected, atol=1e-5)
    assert closed >= len(prompts) // 2                                # the fitted model closes its visits


def test_first_step_is_the_distribution_after_visit_open(setup):
    model, tokenizer, instances = setup
    scorer = ModelScorer(model, tokenizer, ScoringConfig(mode="first-step"))
    prompts = [scorer.prompt(inst) for inst in instances[:4]]
    scores = scorer.score_prompts(prompts)
    for row, prompt in enumerate(prompts):
        assert len(scores.rollouts[row]) == 1
        expected = step_distributions(model, prompt, scores.rollouts[row])[0, scorer.dx_token_ids].numpy()
        np.testing.assert_allclose(scores.primary[row], expected, atol=1e-5)


def test_rankings_do_not_depend_on_batch_composition(setup):
    model, tokenizer, instances = setup
    alone = ModelScorer(model, tokenizer, ScoringConfig(batch_size=1)).rank(instances, top_n=5)
    batched = ModelScorer(model, tokenizer, ScoringConfig(batch_size=5)).rank(instances, top_n=5)
    assert [r.top_codes for r in alone] == [r.top_codes for r in batched]
    np.testing.assert_allclose([r.diabetes_score for r in alone], [r.diabetes_score for r in batched], atol=1e-6)


def test_sampled_scores_are_rollout_fractions_and_seeded(setup):
    model, tokenizer, instances = setup
    scorer = ModelScorer(model, tokenizer, ScoringConfig(mode="sampled", samples=4, step_limit=8, seed=3))
    prompts = [scorer.prompt(inst) for inst in instances[:3]]
    torch.manual_seed(3)
    scores = scorer.score_prompts(prompts)
    dx_column = {int(t): j for j, t in enumerate(scorer.dx_token_ids)}
    for row in range(len(prompts)):
        recount = np.zeros(len(dx_column))
        for rollout in scores.rollouts[row * 4:(row + 1) * 4]:
            for column in {dx_column[t] for t in rollout if t in dx_column}:
                recount[column] += 1
        np.testing.assert_allclose(scores.primary[row], recount / 4)
    first = scorer.rank(instances[:3], top_n=5)
    assert first == scorer.rank(instances[:3], top_n=5)


def test_long_context_is_truncated_to_the_window(setup):
    model, tokenizer, instances = setup
    scorer = ModelScorer(model, tokenizer, ScoringConfig(step_limit=50))     # 64 - 2 - 50 = 12 context tokens
    longest = max(instances, key=lambda inst: len(inst.context_ids))
    prompt = scorer.prompt(longest)
    assert len(longest.context_ids) > 12 and len(prompt) <= 14
    assert prompt[:3] == longest.context_ids[:3].tolist()                     # demographics prefix kept
    assert prompt[-2:] == [longest.target_gap_id, tokenizer.get_vocab()[schema.VISIT_OPEN_TOKEN]]
