"""The next-token loss, one definition for training (the model's forward) and evaluation (launch, eval).

Labels follow the Hugging Face convention: `labels` are the input ids, IGNORE_INDEX where no loss is wanted, and
the shift happens here (targets[t] = labels[t + 1]). Under packing, a position whose position id restarts at 0
begins another patient, so it is never the target of the previous patient's last token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] labels -> [B, T] targets: targets[:, t] = labels[:, t + 1], IGNORE_INDEX at the end and before each
    segment restart.

    >>> next_token_targets(torch.tensor([[5, 6, 7, 8]]), torch.tensor([[0, 1, 0, 1]])).tolist()
    [[6, -100, 8, -100]]
    """
    # Shift the labels, not the logits: slicing [B, T, V] logits costs a copy forward and a zero-filled
    # full-size gradient backward.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if position_ids is not None:
        pos = position_ids if position_ids.dim() == 2 else position_ids[None]
        restarts = F.pad(pos[:, 1:] == 0, (0, 1), value=False)
        targets = targets.masked_fill(restarts.expand_as(targets), IGNORE_INDEX)
    return targets


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(target_t | tokens <= t) over positions with a target, their count), in fp32.

    Returning the sum and the count (not their ratio) lets callers weight by tokens across micro-batches and ranks.
    """
    targets = next_token_targets(labels, position_ids)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (targets != IGNORE_INDEX).sum()
