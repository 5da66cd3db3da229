"""A tiny DATA_DIR that follows the interfaces contract exactly, for eval tests (not a test module itself).

Timelines: <bos> AGE:.. SEX:.. then per visit GAP:.. VISIT:open DX:.. PX:.. VISIT:close, then <eor>. The word-level
tokenizer is built with `tokenizers` and wrapped as a PreTrainedTokenizerFast, like `sparseehr prepare` does.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from sparseehr.data_pipeline import schema

DX_CODES = ["I10", "E119", "E11", "J45", "K21", "A00", "N179", "Z00"]   # vocabulary diagnosis codes
OUT_OF_VOCAB_CODE = "Q999"                                           # appears in records, not in the vocabulary
GAPS = ["GAP:first", "GAP:0-1M", "GAP:1-6M"]
TOKENS = [*schema.SPECIAL_TOKENS, "AGE:40-49", "AGE:60-69", "SEX:F", "SEX:M", *GAPS, schema.VISIT_OPEN_TOKEN,
          schema.VISIT_CLOSE_TOKEN, schema.DX_UNK_TOKEN, *[schema.DX_PREFIX + c for c in DX_CODES],
          schema.PX_UNK_TOKEN, schema.PX_PREFIX + "0DT", schema.CPT_UNK_TOKEN, schema.CPT_PREFIX + "99213"]

# subject_id -> visits (dx code lists); every visit also carries one procedure token.
PATIENTS = {
    schema.SPLIT_TRAIN: {
        1: [["I10", "E119"], ["I10", "E119", "N179"], ["I10"]],
        2: [["J45"], ["J45", "K21"], ["Z00"]],
        3: [["A00"], ["I10", "K21"]],
        4: [["E11", "I10"], ["E119"], ["I10", "J45"]],
    },
    schema.SPLIT_VALIDATION: {
        10: [["I10"], ["E119", "I10"]],                 # case
        11: [["J45"], ["K21"], ["A00"]],                # control
        12: [["K21"], ["E11", OUT_OF_VOCAB_CODE]],      # case
        13: [["Z00"], ["J45"]],                         # control
    },
    schema.SPLIT_TEST: {
        20: [["I10"], ["I10", "K21"], ["E119"]],        # case at visit 2
        21: [["J45"], ["J45", OUT_OF_VOCAB_CODE]],      # control
        22: [["A00"], ["K21"], [], ["Z00", "I10"]],     # control; visit 2 has no diagnosis
        23: [["E11"], ["E11", "I10"]],                  # diabetic history: neither case nor control
        24: [["N179"], ["N179", "E119"]],               # case
    },
}
DAY = 86_400


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(TOKENS)}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=schema.UNK_TOKEN))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=schema.PAD_TOKEN, bos_token=schema.BOS_TOKEN,
                                   eos_token=schema.EOR_TOKEN, unk_token=schema.UNK_TOKEN)


def patient_row(subject_id: int, visits: list[list[str]], vocab: dict[str, int]) -> dict:
    tokens = [schema.BOS_TOKEN, "AGE:60-69" if subject_id % 2 else "AGE:40-49", "SEX:F" if subject_id % 3 else "SEX:M"]
    prefix_len, offsets = len(tokens), []
    for i, visit in enumerate(visits):
        offsets.append(len(tokens))
        dx = [schema.DX_PREFIX + c if c in DX_CODES else schema.DX_UNK_TOKEN for c in visit]
        tokens += [GAPS[min(i, 2)], schema.VISIT_OPEN_TOKEN, *dx, schema.PX_PREFIX + "0DT", schema.VISIT_CLOSE_TOKEN]
    tokens.append(schema.EOR_TOKEN)
    return {schema.COL_SUBJECT_ID: subject_id, schema.COL_INPUT_IDS: [vocab[t] for t in tokens],
            schema.COL_PREFIX_LEN: prefix_len, schema.COL_VISIT_OFFSETS: offsets,
            schema.COL_VISIT_TIMES: [1_600_000_000 + 40 * DAY * i + subject_id * DAY for i in range(len(visits))],
            schema.COL_VISIT_DX_CODES: visits}


PATIENT_FEATURES = datasets.Features({
    schema.COL_SUBJECT_ID: datasets.Value("int64"),
    schema.COL_INPUT_IDS: datasets.Sequence(datasets.Value("int32")),
    schema.COL_PREFIX_LEN: datasets.Value("int32"),
    schema.COL_VISIT_OFFSETS: datasets.Sequence(datasets.Value("int32")),
    schema.COL_VISIT_TIMES: datasets.Sequence(datasets.Value("int64")),
    schema.COL_VISIT_DX_CODES: datasets.Sequence(datasets.Sequence(datasets.Value("string"))),
})
WINDOW_FEATURES = datasets.Features({
    schema.COL_SUBJECT_ID: datasets.Value("int64"),
    schema.COL_WINDOW_INDEX: datasets.Value("int32"),
    schema.COL_INPUT_IDS: datasets.Sequence(datasets.Value("int32")),
})


def build_datadir(root: Path) -> Path:
    """Write the tiny DATA_DIR under root and return it."""
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    patients, windows = {}, {}
    for split, people in PATIENTS.items():
        rows = [patient_row(s, v, vocab) for s, v in people.items()]
        patients[split] = datasets.Dataset.from_list(rows, features=PATIENT_FEATURES)
        windows[split] = datasets.Dataset.from_list(
            [{schema.COL_SUBJECT_ID: r[schema.COL_SUBJECT_ID], schema.COL_WINDOW_INDEX: 0,
              schema.COL_INPUT_IDS: r[schema.COL_INPUT_IDS]} for r in rows], features=WINDOW_FEATURES)
    datasets.DatasetDict(patients).save_to_disk(str(root / schema.DATA_PATIENTS_DIR))
    datasets.DatasetDict(windows).save_to_disk(str(root / schema.DATA_WINDOWS_DIR))
    tokenizer.save_pretrained(str(root / schema.DATA_TOKENIZER_DIR))
    counts: dict[str, int] = {}
    for visits in PATIENTS[schema.SPLIT_TRAIN].values():
        for visit in visits:
            for code in visit:
                counts[code] = counts.get(code, 0) + 1
    (root / schema.CODE_COUNTS_FILE).write_text(json.dumps(counts))
    (root / schema.HARMONIZATION_FILE).write_text(json.dumps({"source": "eval test fixture"}))
    (root / schema.PREPARE_REPORT_FILE).write_text(json.dumps({"source": "eval test fixture"}))
    return root


def train_tiny_model(data_dir: Path, steps: int = 150, seed: int = 0, max_position_embeddings: int = 64):
    """A `tiny`-preset SparseEHRForCausalLM fitted for a few full-batch AdamW steps to the fixture's training
    timelines (about a second on one CPU thread), returned in eval mode."""
    import torch

    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM
    from sparseehr.model.presets import get_preset

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = SparseEHRForCausalLM(get_preset("tiny", vocab_size=len(tokenizer),
                                            max_position_embeddings=max_position_embeddings))
    rows = datasets.load_from_disk(str(data_dir / schema.DATA_PATIENTS_DIR))[schema.SPLIT_TRAIN]
    sequences = [torch.tensor(ids) for ids in rows[schema.COL_INPUT_IDS]]
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(sequences):
        input_ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
    labels = input_ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_model_dir(model, out: Path) -> Path:
    """An HF_DIR like `sparseehr export` writes: save_pretrained + the tokenizer."""
    model.save_pretrained(str(out))
    build_tokenizer().save_pretrained(str(out))
    return out
