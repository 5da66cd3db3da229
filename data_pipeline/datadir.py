"""Read a DATA_DIR written by `sparseehr prepare` (the helpers TRAIN and EVAL import)."""
from __future__ import annotations

import json
from pathlib import Path

from sparseehr.data_pipeline.schema import (
    CODE_COUNTS_FILE, DATA_PATIENTS_DIR, DATA_TOKENIZER_DIR, DATA_WINDOWS_DIR, HARMONIZATION_FILE,
    PREPARE_REPORT_FILE, SPLITS,
)


def _check(data_dir: str | Path, name: str) -> Path:
    path = Path(data_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {data_dir} a DATA_DIR written by `sparseehr prepare`?")
    return path


def _load_split(data_dir: str | Path, folder: str, split: str):
    import datasets

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return datasets.load_from_disk(str(_check(data_dir, folder) / split))


def load_patients(data_dir: str | Path, split: str):
    """One row per patient: subject_id, input_ids, prefix_len, visit_offsets, visit_times, visit_dx_codes."""
    return _load_split(data_dir, DATA_PATIENTS_DIR, split)


def load_windows(data_dir: str | Path, split: str):
    """One row per training window (<= max_len tokens, one patient): subject_id, window_index, input_ids."""
    return _load_split(data_dir, DATA_WINDOWS_DIR, split)


def load_tokenizer(data_dir: str | Path):
    """The DATA_DIR's PreTrainedTokenizerFast (pad/bos/eos/unk = <pad>/<bos>/<eor>/<unk>)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_check(data_dir, DATA_TOKENIZER_DIR)))


def load_train_code_counts(data_dir: str | Path) -> dict[str, int]:
    """{canonical ICD-10-CM code: visits of training patients coded with it}."""
    return {str(k): int(v) for k, v in json.loads(_check(data_dir, CODE_COUNTS_FILE).read_text()).items()}


def read_prepare_report(data_dir: str | Path) -> dict:
    return json.loads(_check(data_dir, PREPARE_REPORT_FILE).read_text())


def read_harmonization(data_dir: str | Path) -> dict:
    """The frozen harmonization settings, GEM sources and `settings_hash` the DATA_DIR was built with."""
    return json.loads(_check(data_dir, HARMONIZATION_FILE).read_text())
