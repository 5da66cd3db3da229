"""The model as a next-visit scorer: ranks the diagnosis tokens of its vocabulary for each instance.

Scoring modes (definitions restated in docs/eval.md):
- rollout (default, the paper's): context + the target visit's GAP token *taken from the record* + VISIT:open, then
  greedy generation with the KV cache until VISIT:close, <eor> or `step_limit` new tokens. At every step the
  softmax over the whole vocabulary is read; a diagnosis code's score is its maximum probability over the steps
  up to and including the one that emits the stop token.
- first-step: the distribution at the first position inside the visit (step 0 of the rollout).
- sampled: `samples` rollouts sampled at temperature 1 (no top-k/top-p); a code's score is the fraction of
  rollouts that emit it; ties broken by its maximum step probability over those rollouts.
Only DX tokens are ranked (DX:<unk> excluded). Instances are batched with left padding, longest first.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparseehr.data_pipeline import schema
from sparseehr.eval.cohort import is_diabetes_code
from sparseehr.eval.instances import Instance, instance_context
from sparseehr.eval.ranking import Ranking, ranking_from_scores

SCORING_MODES = ("rollout", "first-step", "sampled")


@dataclass(frozen=True)
class ScoringConfig:
    mode: str = "rollout"
    step_limit: int = 48          # new tokens per rollout; a visit rarely holds more codes than this
    samples: int = 10             # rollouts per instance in `sampled` mode
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in SCORING_MODES:
            raise ValueError(f"scoring mode must be one of {SCORING_MODES}, got {self.mode!r}")
        if self.step_limit < 1 or self.batch_size < 1 or self.samples < 1:
            raise ValueError("step_limit, batch_size and samples must be >= 1")

    def describe(self) -> dict:
        described = {"mode": self.mode, "gap_token": "taken from the record (the true gap to the next visit)",
                     "step_limit": 1 if self.mode == "first-step" else self.step_limit}
        if self.mode == "sampled":
            described.update(samples=self.samples, temperature=1.0, seed=self.seed)
        return described


def check_model_weights(hf_dir: str | Path) -> None:
    """config.json readable and every safetensors file complete and shaped as that config says: a truncated copy
    or an edited num_experts is refused with one line, never half-initialised by from_pretrained."""
    import json

    from sparseehr.data_pipeline.artifacts import ArtifactError, check_weights_match, read_safetensors_header
    from sparseehr.model import SparseEHRConfig
    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM

    hf_dir = Path(hf_dir)
    config_file = hf_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{hf_dir}: not a save_pretrained folder (config.json missing)")
    try:
        json.loads(config_file.read_text())
        config = SparseEHRConfig.from_pretrained(str(hf_dir))
    except (OSError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{config_file}: cannot build the model from it ({exc})") from exc
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors weights (export the run with `sparseehr export`)")
    found: dict[str, tuple[int, ...]] = {}
    for path in files:
        found.update(read_safetensors_header(path))
    config.expert_parallel_size = 1
    with torch.device("meta"):
        model = SparseEHRForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    check_weights_match(files[0] if len(files) == 1 else hf_dir, found, expected, optional=tied,
                        config_file=config_file)


def load_model(hf_dir: str | Path, device: str | torch.device = "cpu"):
    """SparseEHRForCausalLM from a save_pretrained folder, in eval mode (its files checked first)."""
    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM

    check_model_weights(hf_dir)
    model = SparseEHRForCausalLM.from_pretrained(str(hf_dir))
    return model.to(device).eval()


def check_same_vocabulary(model_dir: str | Path, data_tokenizer, data_dir: str | Path) -> None:
    """The DATA_DIR's token ids must mean what the model learned: prepare the target with the model's vocabulary.
    Checked against HF_DIR's tokenizer (as `sparseehr export` writes it), else against the vocabulary hash export
    recorded in sparseehr_export.json; the embedding size always is."""
    import json

    from sparseehr.data_pipeline.artifacts import EXPORT_INFO_FILE, vocabulary_hash

    model_dir = Path(model_dir)
    config_file = model_dir / "config.json"
    vocab_size = None
    if config_file.is_file():
        vocab_size = json.loads(config_file.read_text()).get("vocab_size")
        if vocab_size is not None and vocab_size < len(data_tokenizer):
            raise ValueError(f"{model_dir} has vocab_size {vocab_size} but {data_dir}/{schema.DATA_TOKENIZER_DIR} has "
                             f"{len(data_tokenizer)} tokens: prepare the data with the model's vocabulary")
    if any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        if AutoTokenizer.from_pretrained(str(model_dir)).get_vocab() != data_tokenizer.get_vocab():
            raise ValueError(f"the tokenizer in {model_dir} differs from {data_dir}/{schema.DATA_TOKENIZER_DIR}: "
                             f"prepare the data with the model's vocabulary")
        return
    info_file = model_dir / EXPORT_INFO_FILE
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{info_file}: unreadable ({exc}); export the model again") from exc
        if info.get("tokenizer_vocab_sha256") != vocabulary_hash(data_tokenizer.get_vocab()):
            raise ValueError(f"{model_dir} was trained on another vocabulary than {data_dir}/"
                             f"{schema.DATA_TOKENIZER_DIR} (tokenizer hash recorded at export in {info_file.name} "
                             f"differs; {info.get('vocab_size')} vs {len(data_tokenizer)} tokens): prepare the data "
                             f"with the model's vocabulary (--vocab-from)")
        return
    if vocab_size is not None and vocab_size != len(data_tokenizer):
        raise ValueError(f"{model_dir} has no tokenizer files and vocab_size {vocab_size}, but {data_dir}/"
                         f"{schema.DATA_TOKENIZER_DIR} has {len(data_tokenizer)} tokens: ids would name other codes")
    import sys
    print(f"[eval] warning: {model_dir} has neither tokenizer files nor {EXPORT_INFO_FILE}: only the vocabulary "
          f"size ({vocab_size}) could be checked against {data_dir}", file=sys.stderr)


@dataclass(frozen=True)
class PromptScores:
    primary: np.ndarray              # [batch, n_dx] ranking score (max step probability, or sampled fraction)
    secondary: np.ndarray | None     # [batch, n_dx] tie-break (sampled mode: max step probability)
    rollouts: list[list[int]]        # generated ids per rollout (batch * samples), through the stop token


class ModelScorer:
    def __init__(self, model, tokenizer, config: ScoringConfig, name: str = "model"):
        self.model, self.config, self.name = model, config, name
        vocab = tokenizer.get_vocab()
        dx = sorted((i, tok) for tok, i in vocab.items()
                    if tok.startswith(schema.DX_PREFIX) and tok != schema.DX_UNK_TOKEN)
        if not dx:
            raise ValueError("the tokenizer has no diagnosis (DX) tokens to rank")
        self.dx_token_ids = torch.tensor([i for i, _ in dx], dtype=torch.long)
        self.codes = [tok[len(schema.DX_PREFIX):] for _, tok in dx]
        self.diabetes_mask = np.array([is_diabetes_code(c) for c in self.codes], dtype=bool)
        self.visit_open_id = vocab[schema.VISIT_OPEN_TOKEN]
        self.stop_ids = [vocab[schema.VISIT_CLOSE_TOKEN], vocab[schema.EOR_TOKEN]]
        self.pad_id = vocab[schema.PAD_TOKEN]
        window = int(model.config.max_position_embeddings)
        new_tokens = 1 if config.mode == "first-step" else config.step_limit
        self.context_budget = window - 2 - new_tokens   # room for GAP + VISIT:open + the rollout
        if self.context_budget < 1:
            raise ValueError(f"step_limit {config.step_limit} leaves no context in a {window}-token window")
        self.last_instances_per_s = float("nan")

    @property
    def vocabulary(self) -> set[str]:
        return set(self.codes)

    def prompt(self, inst: Instance) -> list[int]:
        """Truncated context + the target visit's GAP token (from the record) + VISIT:open."""
        gap = inst.target_gap_id
        return instance_context(inst, self.context_budget).tolist() + [gap, self.visit_open_id]

    @torch.no_grad()
    def score_prompts(self, prompts: list[list[int]]) -> PromptScores:
        """Generate from one batch of prompts (each ending with VISIT:open) and score every DX token."""
        device = next(self.model.parameters()).device
        longest = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):            # left padding: the last position is VISIT:open
            input_ids[row, longest - len(prompt):] = torch.tensor(prompt)
            attention_mask[row, longest - len(prompt):] = 1
        sampled = self.config.mode == "sampled"
        repeats = self.config.samples if sampled else 1
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=1 if self.config.mode == "first-step" else self.config.step_limit,
            eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True,
            output_logits=True, return_dict_in_generate=True,
            # Sampling draws from the model's own distribution: temperature 1, no top-k / top-p truncation.
            **(dict(do_sample=True, num_return_sequences=repeats, temperature=1.0, top_k=0, top_p=1.0)
               if sampled else dict(do_sample=False)))
        generated = out.sequences[:, longest:].cpu()                       # [batch*repeats, steps]
        dx_ids = self.dx_token_ids
        # A step counts while no stop token was emitted before it (the stop step itself counts).
        is_stop = torch.isin(generated, torch.tensor(self.stop_ids))
        stopped_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long() > 0
        max_prob = torch.zeros(generated.shape[0], len(dx_ids))
        for step, logits in enumerate(out.logits):
            probs = torch.softmax(logits.float().cpu(), dim=-1)[:, dx_ids]
            probs[stopped_before[:, step]] = 0.0
            max_prob = torch.maximum(max_prob, probs)
        rollouts = [row[~gone].tolist() for row, gone in zip(generated, stopped_before)]
        max_prob = max_prob.view(len(prompts), repeats, -1)
        if not sampled:
            return PromptScores(max_prob[:, 0].numpy(), None, rollouts)
        # emitted[r, j]: rollout r generated DX token j before stopping
        position_of = torch.full((self.model.config.vocab_size,), -1, dtype=torch.long)
        position_of[dx_ids] = torch.arange(len(dx_ids))
        emitted = torch.zeros(generated.shape[0], len(dx_ids))
        columns = position_of[generated]
        valid = (columns >= 0) & ~stopped_before
        rows = torch.arange(generated.shape[0]).unsqueeze(1).expand_as(generated)
        emitted[rows[valid], columns[valid]] = 1.0
        fraction = emitted.view(len(prompts), repeats, -1).mean(dim=1)
        return PromptScores(fraction.numpy(), max_prob.amax(dim=1).numpy(), rollouts)

    def rank(self, instances: Sequence[Instance], top_n: int) -> list[Ranking]:
        if self.config.mode == "sampled":
            torch.manual_seed(self.config.seed)
        prompts = [self.prompt(inst) for inst in instances]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))   # similar lengths share a batch
        rankings: list[Ranking | None] = [None] * len(prompts)
        start = time.perf_counter()
        for begin in range(0, len(order), self.config.batch_size):
            batch = order[begin: begin + self.config.batch_size]
            scores = self.score_prompts([prompts[i] for i in batch])
            for row, index in enumerate(batch):
                rankings[index] = ranking_from_scores(
                    self.codes, scores.primary[row], self.diabetes_mask, top_n,
                    secondary=None if scores.secondary is None else scores.secondary[row])
        elapsed = time.perf_counter() - start
        self.last_instances_per_s = len(prompts) / elapsed if elapsed > 0 else float("nan")
        print(f"[eval] {self.name} ({self.config.mode}): {len(prompts)} instances in {elapsed:.1f}s "
              f"= {self.last_instances_per_s:.2f} instances/s", flush=True)
        return rankings  # type: ignore[return-value]
