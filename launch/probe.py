"""Copy probe: does the model learn to copy a patient's earlier codes into the next visit? Logged during training.

On a fixed sample of validation windows (teacher-forced, one forward per window), every visit after the window's
first is scored as the eval's rollout scores a visit: a diagnosis token's score is its largest probability over
the positions inside the visit (VISIT:open up to the token before VISIT:close). The probe reports the recall@10
of that visit's diagnosis tokens that occurred earlier in the window ("copy" targets), split into codes common
in training (covering 80% of training occurrences, as the eval's rare/common split) and rare ones, and the
recall@10 of codes new to the window. In-context copying of rare codes is what beats the history baseline
(issue 12); this curve shows when it emerges (Olsson et al. 2022's induction-head phase change).

Every rank scores its share of the sample; counts are summed over ranks. Each rank runs the same number of
forward calls (needed under expert parallelism).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sparseehr.data_pipeline import schema
from sparseehr.data_pipeline.frequency import common_codes
from sparseehr.launch.data import collate_packed

PROBE_K = 10
PROBE_WINDOWS = 64
PROBE_BATCH = 16


class CopyProbe:
    """Callable on the training engine; returns the probe's figures as a dict of metric name -> value."""

    def __init__(self, windows: list[list[int]], vocab: dict[str, int], common: set[str], rank: int, world_size: int,
                 pad_id: int):
        self.rank, self.world_size, self.pad_id = rank, world_size, pad_id
        per_rank = len(windows) // world_size
        self.windows = windows[rank * per_rank:(rank + 1) * per_rank]
        # One padded length for every batch of every rank: under expert parallelism the ranks' MoE all-to-alls
        # exchange fixed-shape buffers, so every forward must see the same [batch, seq_len] on each rank.
        self.seq_len = max(len(w) for w in windows[:per_rank * world_size])
        self.open_id = vocab[schema.VISIT_OPEN_TOKEN]
        self.close_id = vocab[schema.VISIT_CLOSE_TOKEN]
        dx = sorted((i, t) for t, i in vocab.items() if t.startswith(schema.DX_PREFIX) and t != schema.DX_UNK_TOKEN)
        self.dx_ids = torch.tensor([i for i, _ in dx])
        self.is_dx = np.zeros(max(vocab.values()) + 1, bool)
        self.is_dx[self.dx_ids.numpy()] = True
        self.is_common = np.zeros_like(self.is_dx)
        for i, token in dx:
            self.is_common[i] = token[len(schema.DX_PREFIX):] in common

    @classmethod
    def from_run(cls, data_dir: str | Path, val_dataset, rank: int, world_size: int, pad_id: int,
                 n_windows: int = PROBE_WINDOWS) -> "CopyProbe | None":
        """The probe over the first `n_windows` validation windows holding at least two visits (None if none)."""
        if val_dataset is None:
            return None
        data_dir = Path(data_dir)
        vocab = json.loads((data_dir / schema.DATA_TOKENIZER_DIR / "tokenizer.json").read_text())["model"]["vocab"]
        counts = json.loads((data_dir / schema.CODE_COUNTS_FILE).read_text())
        open_id = vocab[schema.VISIT_OPEN_TOKEN]
        windows = []
        for ids in val_dataset[schema.COL_INPUT_IDS]:
            if sum(1 for t in ids if t == open_id) >= 2:
                windows.append(list(ids))
                if len(windows) == n_windows:
                    break
        if len(windows) < world_size:
            return None
        return cls(windows, vocab, set(common_codes(counts)), rank, world_size, pad_id)

    def _count(self, ids: np.ndarray, probs: np.ndarray, totals: np.ndarray) -> None:
        """Add one window's hits/targets to totals = [copy_common hit, n, copy_rare hit, n, new hit, n]."""
        opens = np.flatnonzero(ids == self.open_id)
        closes = np.flatnonzero(ids == self.close_id)
        seen: set[int] = set(ids[: opens[0]][self.is_dx[ids[: opens[0]]]].tolist()) if opens.size else set()
        for v, start in enumerate(opens):
            after = closes[closes > start]
            if after.size == 0:
                break                                   # the window cut this visit: no complete target
            end = int(after[0])
            visit_dx = set(ids[start + 1:end][self.is_dx[ids[start + 1:end]]].tolist())
            if v > 0 and visit_dx:
                scores = probs[start:end].max(axis=0)   # positions open .. last code: predict the visit's tokens
                # A vocabulary with fewer than K diagnosis codes ranks them all (every code is in its top K).
                top = set(self.dx_ids[torch.from_numpy(scores).topk(min(PROBE_K, scores.size)).indices].tolist())
                for token in visit_dx:
                    slot = 4 if token not in seen else (0 if self.is_common[token] else 2)
                    totals[slot] += token in top
                    totals[slot + 1] += 1
            seen |= visit_dx

    @torch.no_grad()
    def __call__(self, engine) -> dict[str, float]:
        import deepspeed.comm as dist

        engine.eval()
        totals = np.zeros(6, dtype=np.float64)
        for start in range(0, len(self.windows), PROBE_BATCH):
            chunk = self.windows[start:start + PROBE_BATCH]
            batch = collate_packed([[w] for w in chunk], self.seq_len, self.pad_id)
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=batch["position_ids"], use_cache=False)
            probs = torch.softmax(out.logits.float(), dim=-1)[..., self.dx_ids.to(out.logits.device)].cpu().numpy()
            for row, window in enumerate(chunk):
                self._count(np.asarray(window), probs[row, :len(window)], totals)
        engine.train()
        summed = torch.tensor(totals)
        dist.all_reduce(summed)
        t = summed.numpy()

        def ratio(hit: float, n: float) -> float | None:
            return float(hit / n) if n else None

        return {"copy_r10_common": ratio(t[0], t[1]), "copy_r10_rare": ratio(t[2], t[3]),
                "copy_r10_all": ratio(t[0] + t[2], t[1] + t[3]), "new_r10": ratio(t[4], t[5])}
