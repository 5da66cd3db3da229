"""Expert-load statistics, one definition for training's metrics.jsonl and the routing report.

The load of an MoE layer is the fraction of routed tokens each expert received; its imbalance is the population
standard deviation of those fractions (0 = perfectly balanced; one expert taking everything gives
sqrt(E - 1) / E). A model's figure is the mean of its layers' figures, as in the paper's Table 3 "expert util std".
"""
from __future__ import annotations

import numpy as np


def expert_load_fractions(counts) -> np.ndarray:
    """[num_moe_layers, num_experts] token counts -> per-layer fraction of tokens per expert (float64; a layer
    that routed nothing gives zeros).

    >>> expert_load_fractions([[3, 1], [0, 0]]).tolist()
    [[0.75, 0.25], [0.0, 0.0]]
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    return counts / np.maximum(totals, 1.0)


def layer_load_std(fractions) -> float:
    """Population std of one layer's per-expert fractions.

    >>> round(layer_load_std([0.75, 0.25]), 6)
    0.25
    """
    return float(np.std(np.asarray(fractions, dtype=np.float64)))


def expert_load_std(fractions) -> float:
    """Mean over MoE layers of layer_load_std; 0.0 for a model without MoE layers.

    >>> round(expert_load_std([[0.75, 0.25], [0.5, 0.5]]), 6)
    0.125
    """
    if len(fractions) == 0:
        return 0.0
    return float(np.mean([layer_load_std(layer) for layer in fractions]))
