"""Training data: boundary-preserving packing of DATA_DIR/windows, split across ranks, resumable.

A packed row holds whole windows back to back (next-fit in a seeded shuffled order). Position ids restart at 0 at
each window, the model's signal for block-diagonal attention (HF DataCollatorWithFlattening convention), and the
first token of each window gets label -100 so no token is trained to predict across a patient boundary. The tail
of a row is padding (attention_mask 0, label -100, its own position run).

Every rank computes the same packed row list for an epoch (it depends only on the seed, the epoch and the window
lengths) and takes rows rank, rank + world, ...; the position in the epoch is a counter, so a checkpoint stores
(epoch, micro-batches consumed) and a resumed run rebuilds exactly the same remaining batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from sparseehr.data_pipeline import schema
from sparseehr.model.loss import IGNORE_INDEX


def load_windows_split(data_dir: str | Path, split: str):
    """DATA_DIR/windows/<split> as a datasets.Dataset (through DATA's helper)."""
    from sparseehr.data_pipeline.datadir import load_windows

    return load_windows(str(data_dir), split)


def load_data_tokenizer(data_dir: str | Path):
    """DATA_DIR/tokenizer as a PreTrainedTokenizerFast (through DATA's helper)."""
    from sparseehr.data_pipeline.datadir import load_tokenizer

    return load_tokenizer(str(data_dir))


def _input_ids_column(dataset):
    """The Arrow input_ids column of a windows split, in the dataset's row order (a selected/shuffled view is
    flattened first, since its Arrow table still holds the original rows)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.column(schema.COL_INPUT_IDS)


def window_lengths(dataset) -> np.ndarray:
    """Token count of every window, read from the Arrow column without materialising the ids."""
    column = _input_ids_column(dataset)
    return np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False), dtype=np.int64)


def log_unigram_prior(dataset, vocab_size: int) -> torch.Tensor:
    """log P(token) over the tokens the loss predicts (every window's tokens after its first), add-one smoothed:
    the starting value of an output bias (SparseEHRConfig.lm_head_bias)."""
    column = _input_ids_column(dataset).combine_chunks()
    offsets = column.offsets.to_numpy()
    ids = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
    predicted = np.ones(len(ids), dtype=bool)
    predicted[offsets[:-1][offsets[:-1] < len(ids)]] = False     # a window's first token is never a target
    if len(ids) and int(ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(ids.max())} is outside the model's vocabulary of {vocab_size}")
    counts = np.bincount(ids[predicted], minlength=vocab_size).astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def pack_next_fit(lengths: np.ndarray, order: np.ndarray, seq_len: int) -> list[list[int]]:
    """Group window indices (in `order`) into rows of at most seq_len tokens, never splitting a window.

    >>> pack_next_fit(np.array([3, 2, 4, 1]), np.array([0, 1, 2, 3]), 5)
    [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order.tolist():
        length = int(lengths[index])
        if length > seq_len:
            raise ValueError(f"window {index} has {length} tokens, more than seq_len {seq_len}")
        if current and used + length > seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        rows.append(current)
    return rows


def collate_packed(windows_per_row: list[list[list[int]]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of windows -> input_ids, position_ids, labels, attention_mask, each [batch, seq_len].

    >>> b = collate_packed([[[5, 6, 7], [5, 8]]], 6, 0)
    >>> b["position_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[0, 1, 2, 0, 1, 0]], [[-100, 6, 7, -100, 8, -100]], [[1, 1, 1, 1, 1, 0]])
    """
    batch = len(windows_per_row)
    input_ids = torch.full((batch, seq_len), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, seq_len), dtype=torch.long)
    labels = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, seq_len), dtype=torch.long)
    for row, windows in enumerate(windows_per_row):
        start = 0
        for ids in windows:
            end = start + len(ids)
            if end > seq_len:
                raise ValueError(f"packed row {row} overflows seq_len {seq_len}")
            tokens = torch.as_tensor(ids, dtype=torch.long)
            input_ids[row, start:end] = tokens
            position_ids[row, start:end] = torch.arange(len(ids))
            labels[row, start + 1:end] = tokens[1:]  # first token of a window: no target across the boundary
            attention_mask[row, start:end] = 1
            start = end
        # Padding tail: its own position run from 0, so it is a separate (masked) segment.
        position_ids[row, start:] = torch.arange(seq_len - start)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels,
            "attention_mask": attention_mask}


@dataclass
class DataPosition:
    epoch: int = 0
    micro_batches_done: int = 0  # in this epoch, on every rank (ranks move in lockstep)

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "micro_batches_done": self.micro_batches_done}


class PackedTrainLoader:
    """Endless, seeded, rank-sharded micro-batches of packed training rows."""

    def __init__(self, dataset, seq_len: int, micro_batch_size: int, rank: int, world_size: int, seed: int,
                 pad_id: int) -> None:
        self.dataset = dataset
        self.lengths = window_lengths(dataset)
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.pad_id = pad_id
        self.position = DataPosition()
        self._epoch_cache: tuple[int, list[list[int]]] | None = None
        if len(self.lengths) == 0:
            raise ValueError("the training split has no windows")
        if self.micro_batches_per_epoch() == 0:
            rows = len(self._rows_for_epoch(0))
            raise ValueError(f"the training split packs into {rows} rows of {seq_len} tokens: fewer than one "
                             f"micro-batch ({micro_batch_size} rows) per rank on {world_size} ranks")

    def _rows_for_epoch(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
            self._epoch_cache = (epoch, pack_next_fit(self.lengths, order, self.seq_len))
        return self._epoch_cache[1]

    def micro_batches_per_epoch(self) -> int:
        rows_per_rank = len(self._rows_for_epoch(0)) // self.world_size
        return rows_per_rank // self.micro_batch_size

    def real_tokens_per_micro_batch_estimate(self) -> float:
        """Mean non-padding tokens in one rank's micro-batch (used to turn --max-tokens into steps)."""
        rows = self._rows_for_epoch(0)
        mean_row = float(np.mean([self.lengths[r].sum() for r in rows]))
        return mean_row * self.micro_batch_size

    def next_batch(self) -> dict[str, torch.Tensor]:
        # Epoch lengths vary slightly with the shuffle; move to the next epoch when this one is used up.
        while True:
            rows = self._rows_for_epoch(self.position.epoch)
            rank_rows = rows[self.rank::self.world_size][: len(rows) // self.world_size]
            available = len(rank_rows) // self.micro_batch_size
            if self.position.micro_batches_done < available:
                break
            self.position = DataPosition(self.position.epoch + 1, 0)
        start = self.position.micro_batches_done * self.micro_batch_size
        chosen = rank_rows[start:start + self.micro_batch_size]
        self.position = DataPosition(self.position.epoch, self.position.micro_batches_done + 1)
        return collate_packed([fetch_windows(self.dataset, row) for row in chosen], self.seq_len, self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {**self.position.to_dict(), "seed": self.seed, "world_size": self.world_size,
                "seq_len": self.seq_len, "micro_batch_size": self.micro_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "world_size", "seq_len", "micro_batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume the data order: checkpoint has {key}={state[key]}, this run has "
                                 f"{getattr(self, key)}")
        self.position = DataPosition(int(state["epoch"]), int(state["micro_batches_done"]))


def fetch_windows(dataset, indices: list[int]) -> list[list[int]]:
    return [list(ids) for ids in dataset[list(indices)][schema.COL_INPUT_IDS]]


def validation_batches(dataset, seq_len: int, micro_batch_size: int, rank: int, world_size: int, pad_id: int,
                       max_rows: int = 0) -> list[dict[str, torch.Tensor]]:
    """This rank's validation micro-batches, in a fixed order. Every rank gets the same number of batches (empty
    rows fill the gap): under expert parallelism all ranks must run the same number of forward calls."""
    lengths = window_lengths(dataset)
    rows = pack_next_fit(lengths, np.arange(len(lengths)), seq_len) if len(lengths) else []
    if max_rows:
        rows = rows[:max_rows]
    per_rank = -(-len(rows) // world_size)
    per_rank = -(-per_rank // micro_batch_size) * micro_batch_size
    mine = rows[rank::world_size]
    mine = mine + [[]] * (per_rank - len(mine))
    batches = []
    for start in range(0, per_rank, micro_batch_size):
        chunk = mine[start:start + micro_batch_size]
        batches.append(collate_packed([fetch_windows(dataset, row) if row else [] for row in chunk], seq_len,
                                      pad_id))
    return batches


def all_validation_rows(dataset, seq_len: int, pad_id: int, max_rows: int = 0) -> dict[str, torch.Tensor]:
    """Every packed validation row in one batch (single-process evaluation, e.g. of an exported model)."""
    lengths = window_lengths(dataset)
    rows = pack_next_fit(lengths, np.arange(len(lengths)), seq_len)
    if max_rows:
        rows = rows[:max_rows]
    return collate_packed([fetch_windows(dataset, row) for row in rows], seq_len, pad_id)
