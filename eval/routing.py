"""`sparseehr eval routing`: which tokens each expert of each MoE layer receives (the paper's Tables 2 and 8).

For every patient timeline of a split (truncated to the model window like next-visit contexts: prefix + most
recent whole visits), one forward pass with `output_router_logits=True`; each real (non-padding) token is counted
for the `num_experts_per_tok` experts with the highest router logits, by token type (schema.token_type) and, for
diagnosis tokens, by ICD-10-CM chapter (from simple_icd_10_cm's chapter tree).
Per layer: routing entropy (mean over tokens of the entropy of the router softmax, in nats, and normalised by
log E), load entropy (of the experts' share of routed assignments) and utilisation std (population std over
experts of that share; 0 = perfectly balanced).
"""
from __future__ import annotations

import argparse
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from sparseehr.data_pipeline import schema
from sparseehr.eval.instances import load_splits, truncate_context
from sparseehr.eval.report import REPORT_JSON, REPORT_MD, json_writer, markdown_table, text_writer, write_outputs
from sparseehr.model.expert_stats import expert_load_std, layer_load_std

HEATMAP = "routing_heatmap.png"
UNKNOWN_CHAPTER = "unknown"


@lru_cache(maxsize=None)
def icd10_chapter(code: str) -> str:
    """ICD-10-CM chapter of a code, as "<number> <range>", e.g. "4 E00-E89"; codes shortened to a canonical prefix
    fall back to their longest valid prefix; "unknown" when nothing matches.

    >>> icd10_chapter("E119"), icd10_chapter("I10"), icd10_chapter("<unk>")
    ('4 E00-E89', '9 I00-I99', 'unknown')
    """
    import simple_icd_10_cm as cm

    for length in range(len(code), 2, -1):
        candidate = code[:length]
        if cm.is_valid_item(candidate):
            chapter = cm.get_ancestors(candidate)[-1] if not cm.is_chapter(candidate) else candidate
            description = cm.get_description(chapter)
            code_range = description[description.rfind("(") + 1: description.rfind(")")]
            return f"{chapter} {code_range}"
    return UNKNOWN_CHAPTER


def token_categories(tokenizer) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(type names, type index per token id, chapter names, chapter index per token id or -1 for non-DX)."""
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    types = sorted({schema.token_type(tok) for tok in vocab})
    type_of = np.zeros(size, dtype=np.int64)
    chapter_of = np.full(size, -1, dtype=np.int64)
    chapters_by_token = {}
    for tok, i in vocab.items():
        type_of[i] = types.index(schema.token_type(tok))
        if tok.startswith(schema.DX_PREFIX):
            chapters_by_token[i] = icd10_chapter(tok[len(schema.DX_PREFIX):])
    chapter_names = sorted(set(chapters_by_token.values()),
                           key=lambda c: (c == UNKNOWN_CHAPTER, int(c.split()[0]) if c[0].isdigit() else 0))
    for i, chapter in chapters_by_token.items():
        chapter_of[i] = chapter_names.index(chapter)
    return types, type_of, chapter_names, chapter_of


def routing_statistics(assign_counts: np.ndarray, entropy_sum: np.ndarray, n_tokens: int, n_experts: int) -> dict:
    """Per-layer summary from assignment counts [E] and the summed per-token router entropy."""
    total = assign_counts.sum()
    share = assign_counts / total if total else np.zeros(n_experts)
    nonzero = share[share > 0]
    load_entropy = float(-(nonzero * np.log(nonzero)).sum())
    mean_entropy = float(entropy_sum / n_tokens) if n_tokens else float("nan")
    return {"expert_share": share.tolist(), "utilisation_std": layer_load_std(share),
            "routing_entropy": mean_entropy, "routing_entropy_normalised": mean_entropy / math.log(n_experts),
            "load_entropy": load_entropy, "load_entropy_normalised": load_entropy / math.log(n_experts)}


@torch.no_grad()
def count_routing(model, sequences: list[np.ndarray], type_of: np.ndarray, n_types: int, chapter_of: np.ndarray,
                  n_chapters: int, batch_size: int, pad_id: int) -> dict[str, np.ndarray]:
    """Forward passes over the sequences; returns by_type [L, E, n_types], by_chapter [L, E, n_chapters],
    entropy_sum [L] and n_tokens."""
    config = model.config
    n_layers, n_experts, k = len(config.moe_layer_indices), config.num_experts, config.num_experts_per_tok
    by_type = np.zeros((n_layers, n_experts, n_types), dtype=np.int64)
    by_chapter = np.zeros((n_layers, n_experts, n_chapters), dtype=np.int64)
    entropy_sum = np.zeros(n_layers)
    n_tokens = 0
    device = next(model.parameters()).device
    type_of_t, chapter_of_t = torch.from_numpy(type_of), torch.from_numpy(chapter_of)
    for begin in range(0, len(sequences), batch_size):
        batch = sequences[begin: begin + batch_size]
        longest = max(len(s) for s in batch)
        input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(batch):                       # right padding: positions need no shifting
            input_ids[row, : len(seq)] = torch.from_numpy(seq)
            mask[row, : len(seq)] = 1
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False,
                    output_router_logits=True)
        real = mask.view(-1).bool()
        token_ids = input_ids.view(-1)[real]
        types, chapters = type_of_t[token_ids], chapter_of_t[token_ids]
        n_tokens += int(real.sum())
        for layer, logits in enumerate(out.router_logits):
            logits = logits.float().cpu()[real]                              # [N, E]
            probs = torch.softmax(logits, dim=-1)
            entropy_sum[layer] += float(-(probs * torch.log(probs.clamp_min(1e-30))).sum())
            chosen = torch.topk(logits, k, dim=-1).indices                   # [N, k]
            for slot in range(k):
                experts = chosen[:, slot]
                np.add.at(by_type[layer], (experts.numpy(), types.numpy()), 1)
                is_dx = chapters >= 0
                np.add.at(by_chapter[layer], (experts[is_dx].numpy(), chapters[is_dx].numpy()), 1)
    return {"by_type": by_type, "by_chapter": by_chapter, "entropy_sum": entropy_sum, "n_tokens": n_tokens}


def heatmap_writer(layers: list[int], types: list[str], by_type: np.ndarray):
    """One panel per MoE layer: experts x token types, each column normalised to the share of that type's
    tokens sent to each expert (so specialisation shows regardless of how common a type is)."""
    def write(path: Path) -> None:
        import matplotlib.pyplot as plt  # report.py has already selected the Agg backend

        fig, axes = plt.subplots(1, len(layers), figsize=(2.2 + 1.6 * len(types) * len(layers) / 2, 3.2),
                                 squeeze=False)
        for ax, layer, counts in zip(axes[0], layers, by_type):
            share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
            image = ax.imshow(share, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_title(f"layer {layer}")
            ax.set_xticks(range(len(types)), types, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(counts.shape[0]), [f"expert {e}" for e in range(counts.shape[0])], fontsize=7)
        fig.colorbar(image, ax=axes[0].tolist(), label="share of the type's tokens")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return write


def routing_markdown(report: dict) -> str:
    lines = [f"# Routing analysis: {report['model']}", "",
             f"Data `{report['data']}` split `{report['split']}`: {report['n_sequences']} timelines, "
             f"{report['n_tokens']} tokens; top-{report['num_experts_per_tok']} of {report['num_experts']} experts.",
             "", "## Per layer", "",
             markdown_table(["layer", "utilisation std", "routing entropy (norm.)", "load entropy (norm.)",
                             "expert shares"],
                            [[lay["layer"], lay["utilisation_std"], lay["routing_entropy_normalised"],
                              lay["load_entropy_normalised"], " / ".join(f"{s:.2f}" for s in lay["expert_share"])]
                             for lay in report["layers"]]), ""]
    for lay in report["layers"]:
        lines += [f"## Layer {lay['layer']}: routed tokens by token type", "",
                  markdown_table(["expert"] + report["token_types"],
                                 [[e] + row for e, row in enumerate(lay["by_token_type"])]), "",
                  f"## Layer {lay['layer']}: routed diagnosis tokens by ICD-10 chapter", "",
                  markdown_table(["expert"] + report["icd10_chapters"],
                                 [[e] + row for e, row in enumerate(lay["by_icd10_chapter"])]), ""]
    lines += [f"![routing heatmap]({HEATMAP})", ""]
    return "\n".join(lines)


def run_routing(args: argparse.Namespace) -> int:
    from sparseehr.data_pipeline.datadir import load_tokenizer
    from sparseehr.eval.scorers import check_same_vocabulary, load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device)
    if not model.config.moe_layer_indices:
        raise ValueError(f"{args.model}: the model has no MoE layer to analyse")
    tokenizer = load_tokenizer(args.data)
    check_same_vocabulary(args.model, tokenizer, args.data)
    patients = load_splits(args.data, args.split, args.max_patients, args.seed)
    window = int(model.config.max_position_embeddings)
    sequences = [truncate_context(p.input_ids, p.prefix_len, p.visit_offsets, window) for p in patients]
    if not sequences:
        raise ValueError(f"{args.data}: split {args.split} has no patients")
    types, type_of, chapters, chapter_of = token_categories(tokenizer)
    counted = count_routing(model, sequences, type_of, len(types), chapter_of, len(chapters), args.batch_size,
                            tokenizer.pad_token_id)
    layers = list(model.config.moe_layer_indices)
    n_experts = model.config.num_experts
    layer_reports = [{"layer": layer,
                      **routing_statistics(counted["by_type"][i].sum(axis=1), counted["entropy_sum"][i],
                                           counted["n_tokens"], n_experts),
                      "by_token_type": counted["by_type"][i].tolist(),
                      "by_icd10_chapter": counted["by_chapter"][i].tolist()} for i, layer in enumerate(layers)]
    report = {
        "task": "routing", "model": str(args.model), "data": str(args.data), "split": "+".join(args.split),
        "n_sequences": len(sequences), "n_tokens": counted["n_tokens"], "num_experts": n_experts,
        "num_experts_per_tok": model.config.num_experts_per_tok, "token_types": types, "icd10_chapters": chapters,
        # The same statistic as training's metrics.jsonl `expert_load_std` (one definition, model/expert_stats.py).
        "utilisation_std_mean": expert_load_std([lay["expert_share"] for lay in layer_reports]),
        "layers": layer_reports,
    }
    write_outputs(args.out, {REPORT_JSON: json_writer(report), REPORT_MD: text_writer(routing_markdown(report)),
                             HEATMAP: heatmap_writer(layers, types, counted["by_type"])})
    print(f"[eval] routing report: {args.out / REPORT_JSON}")
    return 0
