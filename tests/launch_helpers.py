"""Helpers for the launch tests: a tiny DATA_DIR that follows the interfaces.md contract, and subprocess runners.

The DATA_DIR is built by hand (DatasetDict.save_to_disk + a tokenizers WordLevel tokenizer) with a learnable
pattern: each patient has a "condition" whose diagnosis recurs in every visit together with a fixed procedure.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

from sparseehr.data_pipeline import schema
from sparseehr.launch import launcher

REPO_ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = ["E119", "I10", "J449", "N183"]
PROCEDURES = ["0DTJ4ZZ", "3893", "5A1955Z", "02703ZZ"]
CPTS = ["99213", "99214"]
GAPS = ["0-1M", "1-3M", "3-12M"]


def vocabulary() -> list[str]:
    tokens = list(schema.SPECIAL_TOKENS)
    tokens += [schema.AGE_PREFIX + a for a in ("40-49", "50-59", "60-69")]
    tokens += [schema.SEX_PREFIX + s for s in ("F", "M")]
    tokens += [schema.GAP_PREFIX + g for g in GAPS]
    tokens += [schema.VISIT_OPEN_TOKEN, schema.VISIT_CLOSE_TOKEN]
    tokens += [schema.DX_PREFIX + c for c in CONDITIONS] + [schema.DX_PREFIX + "R51", schema.DX_UNK_TOKEN]
    tokens += [schema.PX_PREFIX + p for p in PROCEDURES] + [schema.CPT_PREFIX + c for c in CPTS]
    return tokens


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=schema.UNK_TOKEN))
    core.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=schema.PAD_TOKEN,
                                        bos_token=schema.BOS_TOKEN, eos_token=schema.EOR_TOKEN,
                                        unk_token=schema.UNK_TOKEN)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def patient_timeline(rng: random.Random, condition: int) -> tuple[list[str], int, list[int]]:
    prefix = [schema.BOS_TOKEN, schema.AGE_PREFIX + rng.choice(["40-49", "50-59", "60-69"]),
              schema.SEX_PREFIX + rng.choice("FM")]
    tokens, offsets = list(prefix), []
    for _ in range(rng.randint(2, 6)):
        offsets.append(len(tokens))
        tokens += [schema.GAP_PREFIX + rng.choice(GAPS), schema.VISIT_OPEN_TOKEN,
                   schema.DX_PREFIX + CONDITIONS[condition]]
        if rng.random() < 0.3:
            tokens.append(schema.DX_PREFIX + "R51")
        tokens += [schema.PX_PREFIX + PROCEDURES[condition], schema.CPT_PREFIX + rng.choice(CPTS),
                   schema.VISIT_CLOSE_TOKEN]
    tokens.append(schema.EOR_TOKEN)
    return tokens, len(prefix), offsets


def split_windows(ids: list[int], prefix_len: int, offsets: list[int], max_len: int) -> list[list[int]]:
    """Whole visits per window; windows after the first start with the patient's prefix (the contract)."""
    bounds = offsets + [len(ids)]
    visits = [ids[bounds[i]:bounds[i + 1]] for i in range(len(offsets))]
    windows, current = [], list(ids[:prefix_len])
    for visit in visits:
        if len(current) + len(visit) > max_len and len(current) > prefix_len:
            windows.append(current)
            current = list(ids[:prefix_len])
        current += visit
    windows.append(current)
    return windows


def build_tiny_datadir(root: Path, patients_per_split: dict[str, int] | None = None, max_len: int = 24,
                       seed: int = 0) -> Path:
    import datasets

    patients_per_split = patients_per_split or {schema.SPLIT_TRAIN: 40, schema.SPLIT_VALIDATION: 8,
                                                schema.SPLIT_TEST: 4}
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(root / schema.DATA_TOKENIZER_DIR)
    rng = random.Random(seed)
    patient_splits, window_splits, counts = {}, {}, {}
    subject = 10_000
    for split, n in patients_per_split.items():
        prows, wrows = [], []
        for _ in range(n):
            subject += 1
            condition = rng.randrange(len(CONDITIONS))
            tokens, prefix_len, offsets = patient_timeline(rng, condition)
            ids = tokenizer.convert_tokens_to_ids(tokens)
            dx = [[CONDITIONS[condition]] for _ in offsets]
            prows.append({schema.COL_SUBJECT_ID: subject, schema.COL_INPUT_IDS: ids,
                          schema.COL_PREFIX_LEN: prefix_len, schema.COL_VISIT_OFFSETS: offsets,
                          schema.COL_VISIT_TIMES: [1_600_000_000 + 86_400 * 30 * i for i in range(len(offsets))],
                          schema.COL_VISIT_DX_CODES: dx})
            if split == schema.SPLIT_TRAIN:
                counts[CONDITIONS[condition]] = counts.get(CONDITIONS[condition], 0) + len(offsets)
            for index, window in enumerate(split_windows(ids, prefix_len, offsets, max_len)):
                wrows.append({schema.COL_SUBJECT_ID: subject, schema.COL_WINDOW_INDEX: index,
                              schema.COL_INPUT_IDS: window})
        patient_splits[split] = datasets.Dataset.from_list(prows, features=datasets.Features({
            schema.COL_SUBJECT_ID: datasets.Value("int64"),
            schema.COL_INPUT_IDS: datasets.Sequence(datasets.Value("int32")),
            schema.COL_PREFIX_LEN: datasets.Value("int32"),
            schema.COL_VISIT_OFFSETS: datasets.Sequence(datasets.Value("int32")),
            schema.COL_VISIT_TIMES: datasets.Sequence(datasets.Value("int64")),
            schema.COL_VISIT_DX_CODES: datasets.Sequence(datasets.Sequence(datasets.Value("string")))}))
        window_splits[split] = datasets.Dataset.from_list(wrows, features=datasets.Features({
            schema.COL_SUBJECT_ID: datasets.Value("int64"), schema.COL_WINDOW_INDEX: datasets.Value("int32"),
            schema.COL_INPUT_IDS: datasets.Sequence(datasets.Value("int32"))}))
    datasets.DatasetDict(patient_splits).save_to_disk(str(root / schema.DATA_PATIENTS_DIR))
    datasets.DatasetDict(window_splits).save_to_disk(str(root / schema.DATA_WINDOWS_DIR))
    (root / schema.CODE_COUNTS_FILE).write_text(json.dumps(counts))
    (root / schema.HARMONIZATION_FILE).write_text(json.dumps({"source": "test fixture"}))
    (root / schema.PREPARE_REPORT_FILE).write_text(json.dumps({"source": "test fixture"}))
    return root


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return env


def deepspeed_command(num_ranks: int, args: list[str]) -> list[str]:
    """`deepspeed --num_gpus N launch/train.py ARGS` on a free port, via this interpreter (the form the docs show)."""
    return launcher.deepspeed_command(num_ranks, args, as_script=True)


def run_deepspeed(num_ranks: int, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(deepspeed_command(num_ranks, args), env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def read_jsonl(path: Path, torn_tail_ok: bool = False) -> list[dict]:
    """Records of a JSON-lines file, read here independently of launch/rundir.py. A last line without its newline
    (a kill during an append) is an error unless torn_tail_ok, then it is left out."""
    *lines, tail = path.read_text().split("\n")
    assert torn_tail_ok or tail == "", f"{path}: torn last line {tail!r}"
    return [json.loads(line) for line in lines if line.strip()]
