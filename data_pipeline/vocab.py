"""Vocabulary: fixed structural tokens + data tokens from the TRAINING split only, behind a privacy floor.

A data token (DX/PX/CPT/REGION) enters the vocabulary only when, in the training split, it occurs at least
`min_count` times AND in at least `min_patients` distinct patients (default 5: a code seen in fewer patients could
point at a person, and the model cannot learn it anyway). Any other code maps to its typed unknown (DX:<unk>,
PX:<unk>, CPT:<unk>, REGION:<unk>), never to another code. Structural tokens (specials, VISIT, GAP, AGE, SEX,
typed unknowns) are enumerated, not learned, so every vocabulary has them and ids are stable across systems.
The vocabulary is saved as the files of a PreTrainedTokenizerFast (WordLevel over whitespace-split tokens).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparseehr.data_pipeline.arrays import distinct
from sparseehr.data_pipeline.schema import (
    AGE_TOKENS, BOS_TOKEN, CPT_PREFIX, CPT_UNK_TOKEN, DX_PREFIX, DX_UNK_TOKEN, EOR_TOKEN, GAP_TOKENS, PAD_TOKEN,
    PX_PREFIX, PX_UNK_TOKEN, REGION_PREFIX, REGION_UNK_TOKEN, SEX_TOKENS, SPECIAL_TOKENS, TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE, UNK_TOKEN, VISIT_CLOSE_TOKEN,
    VISIT_OPEN_TOKEN,
)

TYPED_UNKNOWNS = ((DX_PREFIX, DX_UNK_TOKEN), (PX_PREFIX, PX_UNK_TOKEN), (CPT_PREFIX, CPT_UNK_TOKEN),
                  (REGION_PREFIX, REGION_UNK_TOKEN))
STRUCTURAL_TOKENS = (SPECIAL_TOKENS + (VISIT_OPEN_TOKEN, VISIT_CLOSE_TOKEN) + tuple(u for _, u in TYPED_UNKNOWNS)
                     + GAP_TOKENS + AGE_TOKENS + SEX_TOKENS)


@dataclass(frozen=True)
class VocabSettings:
    """Args: min_count: training occurrences a data token needs; min_patients: distinct training patients
    (the privacy floor)."""

    min_count: int = 5
    min_patients: int = 5

    def __post_init__(self) -> None:
        if self.min_count < 1 or self.min_patients < 1:
            raise ValueError(f"min_count and min_patients must be >= 1, got {self.min_count}, {self.min_patients}")


class Vocabulary:
    """Token strings in id order, with vectorised string -> id encoding (typed unknowns for unseen codes)."""

    def __init__(self, tokens: list[str]):
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in vocabulary")
        missing = [t for t in STRUCTURAL_TOKENS if t not in tokens]
        if missing:
            raise ValueError(f"vocabulary lacks structural tokens {missing[:5]}")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(tokens)}
        self._value_set = pa.array(self.tokens, pa.string())

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, strings: pa.Array) -> np.ndarray:
        """int32 ids of token strings; an unknown data token becomes its typed unknown, anything else <unk>."""
        index = pc.index_in(strings, value_set=self._value_set)
        ids = pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int32)
        missing = ids < 0
        if missing.any():
            unknown = strings.filter(pa.array(missing))
            fill = np.full(len(unknown), self.ids[UNK_TOKEN], np.int32)
            for prefix, unk in TYPED_UNKNOWNS:
                fill[pc.starts_with(unknown, prefix).to_numpy(zero_copy_only=False)] = self.ids[unk]
            ids[missing] = fill
        return ids

    def save_tokenizer(self, directory: Path, model_max_length: int) -> None:
        """Write the files `AutoTokenizer.from_pretrained(directory)` loads as a PreTrainedTokenizerFast.

        Written with the `tokenizers` library alone: the data pipeline must not import transformers (it costs
        seconds of start-up on every `prepare`, and the tokenizer is a plain WordLevel vocabulary).
        """
        directory.mkdir(parents=True, exist_ok=True)
        build_tokenizer(self.tokens).save(str(directory / TOKENIZER_FILE))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                  "pad_token": PAD_TOKEN, "bos_token": BOS_TOKEN, "eos_token": EOR_TOKEN, "unk_token": UNK_TOKEN}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_tokenizer_dir(cls, directory: Path) -> "Vocabulary":
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(directory / TOKENIZER_FILE)).get_vocab(with_added_tokens=True)
        return cls([t for t, _ in sorted(vocab.items(), key=lambda item: item[1])])


def build_tokenizer(tokens: list[str]):
    """A `tokenizers` WordLevel tokenizer over whitespace-split tokens; the special tokens are marked special, so
    `decode(..., skip_special_tokens=True)` drops them."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    backend = Tokenizer(WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return backend


TOKEN_NAME, OCCURRENCES, DISTINCT_PATIENTS = "token", "occurrences", "patients"


def training_counts(event_patient: np.ndarray, event_token: np.ndarray, token_strings: pa.Array,
                    region_tokens: pa.Array, train_patient: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(REGION counts, code counts) of one set of patients: per token seen in a TRAINING patient, its
    occurrences and distinct patients. Patients never span partitions, so summing these tables over partitions
    gives the counts of all patients at once (`merge_counts`).

    event_patient / event_token: patient row and token id (row of token_strings) of every code event;
    region_tokens: per patient REGION token or null; train_patient: per patient, whether it is in train.
    """
    has_region = pc.is_valid(region_tokens).to_numpy(zero_copy_only=False)
    region_patients = np.flatnonzero(train_patient & has_region)
    region_encoded = pc.dictionary_encode(region_tokens.take(pa.array(region_patients)))
    in_train = train_patient[event_patient]
    groups = (
        (region_patients, region_encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
         region_encoded.dictionary),
        (event_patient[in_train], event_token[in_train].astype(np.int64), token_strings),
    )
    tables = []
    for patients, token_id, names in groups:
        n_tokens = len(names)
        occurrences = np.bincount(token_id, minlength=n_tokens)
        distinct_patients = np.bincount(distinct(patients.astype(np.int64) * n_tokens + token_id) % n_tokens,
                                        minlength=n_tokens) if n_tokens else occurrences
        seen = np.flatnonzero(occurrences > 0)
        tables.append(pa.table({TOKEN_NAME: names.cast(pa.string()).take(pa.array(seen)),
                                OCCURRENCES: pa.array(occurrences[seen], pa.int64()),
                                DISTINCT_PATIENTS: pa.array(distinct_patients[seen], pa.int64())}))
    return tables[0], tables[1]


def merge_counts(tables: list[pa.Table]) -> pa.Table:
    """Sum per-partition count tables by token."""
    table = pa.concat_tables(tables)
    summed = table.group_by(TOKEN_NAME).aggregate([(OCCURRENCES, "sum"), (DISTINCT_PATIENTS, "sum")])
    # by name: the column order of group_by's output differs between pyarrow releases
    return pa.table({TOKEN_NAME: summed[TOKEN_NAME], OCCURRENCES: summed[f"{OCCURRENCES}_sum"],
                     DISTINCT_PATIENTS: summed[f"{DISTINCT_PATIENTS}_sum"]})


def vocabulary_from_counts(region_counts: pa.Table, code_counts: pa.Table, settings: VocabSettings
                           ) -> tuple[Vocabulary, dict[str, int]]:
    """Structural tokens, then REGION tokens, then code tokens (by training count, descending; ties by name),
    keeping only tokens above both floors in the TRAINING split."""
    stats = {"candidate_tokens": 0, "below_floor": 0}
    kept: list[list[str]] = []
    for counts in (region_counts, code_counts):
        occurrences = counts[OCCURRENCES].to_numpy()
        ok = (occurrences >= settings.min_count) & (counts[DISTINCT_PATIENTS].to_numpy() >= settings.min_patients)
        stats["candidate_tokens"] += counts.num_rows
        stats["below_floor"] += int((~ok).sum())
        name_list = counts[TOKEN_NAME].to_pylist()
        kept.append([name for _, name in sorted((-int(occurrences[i]), name_list[i]) for i in np.flatnonzero(ok))])
    tokens = list(STRUCTURAL_TOKENS) + kept[0] + kept[1]
    stats["vocab_size"] = len(tokens)
    return Vocabulary(tokens), stats


def build_vocabulary(event_patient: np.ndarray, event_token: np.ndarray, token_strings: pa.Array,
                     region_tokens: pa.Array, train_patient: np.ndarray, settings: VocabSettings
                     ) -> tuple[Vocabulary, dict[str, int]]:
    """The vocabulary of one set of patients (`training_counts` then `vocabulary_from_counts`)."""
    region, codes = training_counts(event_patient, event_token, token_strings, region_tokens, train_patient)
    return vocabulary_from_counts(region, codes, settings)
