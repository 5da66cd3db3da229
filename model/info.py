"""`sparseehr model-info`: parameter and FLOP accounting of a preset, beside the paper's Table 4.

    sparseehr model-info --preset paper --dense-layers 0 2 4 8

Each variant is built on the meta device (no memory, no init) and its parameter count is checked against the
closed-form accounting before anything is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

import torch

from sparseehr.model.accounting import count_module_parameters, count_parameters, flops_per_token
from sparseehr.model.presets import PRESETS, get_preset

# The paper's Table 3/4 (shared/SEEDS.md): D -> (total params, active params per token), as reported.
PAPER_TABLE4: dict[int, tuple[float, float]] = {0: (942e6, 530e6), 2: (875e6, 500e6), 4: (807e6, 470e6),
                                                8: (672e6, 415e6)}


def implied_expert_width(dense_layers: int, total: float, active: float, config) -> float:
    """Routed-expert SwiGLU width a Table 4 row implies: total - active = moe_layers * (E - k) * 3 * H * width."""
    moe_layers = config.num_hidden_layers - dense_layers
    idle_experts = config.num_experts - config.num_experts_per_tok
    return (total - active) / (moe_layers * idle_experts * 3 * config.hidden_size)


def build_rows(preset: str, dense_layers: list[int], seq_len: int | None, overrides: dict) -> list[dict]:
    rows = []
    for d in dense_layers:
        config = get_preset(preset, **{**overrides, "first_k_dense_replace": d})
        counts = count_parameters(config)
        from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM  # DeepSpeed import: only when used

        with torch.device("meta"):
            built = count_module_parameters(SparseEHRForCausalLM(config))
        if built != counts.total:
            raise RuntimeError(f"accounting formula ({counts.total}) disagrees with the built model ({built}) "
                               f"for preset {preset!r} D={d}")
        context = seq_len or config.max_position_embeddings
        row = {"dense_layers": d, **counts.as_dict(), "seq_len": context,
               "forward_flops_per_token": flops_per_token(config, context, training=False),
               "train_flops_per_token": flops_per_token(config, context, training=True)}
        if preset == "paper" and d in PAPER_TABLE4:
            paper_total, paper_active = PAPER_TABLE4[d]
            row.update(paper_total=paper_total, paper_active=paper_active,
                       total_vs_paper=counts.total / paper_total - 1,
                       active_vs_paper=counts.active_per_token / paper_active - 1,
                       paper_implied_expert_width=implied_expert_width(d, paper_total, paper_active, config))
        rows.append(row)
    return rows


def format_table(rows: list[dict], preset: str) -> str:
    lines = [f"preset {preset}: total = every parameter once (tied embedding once); active = parameters one token's "
             f"forward reads (embeddings included, idle routed experts excluded); FLOPs at seq_len "
             f"{rows[0]['seq_len']}, 2/MAC + attention over the full context, training = 3x forward",
             ""]
    header = f"{'D':>2} {'total':>9} {'active':>9} {'act-nonemb':>10} {'fwd GF/tok':>10} {'train GF/tok':>12}"
    with_paper = any("paper_total" in r for r in rows)
    if with_paper:
        header += f" | {'paper total':>11} {'diff':>6} {'paper active':>12} {'diff':>6} {'implied expert I':>16}"
    lines += [header, "-" * len(header)]
    for r in rows:
        line = (f"{r['dense_layers']:>2} {r['total'] / 1e6:>8.1f}M {r['active_per_token'] / 1e6:>8.1f}M "
                f"{r['active_non_embedding'] / 1e6:>9.1f}M {r['forward_flops_per_token'] / 1e9:>10.3f} "
                f"{r['train_flops_per_token'] / 1e9:>12.3f}")
        if "paper_total" in r:
            line += (f" | {r['paper_total'] / 1e6:>10.0f}M {r['total_vs_paper']:>+6.1%} "
                     f"{r['paper_active'] / 1e6:>11.0f}M {r['active_vs_paper']:>+6.1%} "
                     f"{r['paper_implied_expert_width']:>16.0f}")
        lines.append(line)
    by_d = {r["dense_layers"]: r for r in rows}
    if 0 in by_d and 4 in by_d:
        ours = 1 - by_d[4]["active_per_token"] / by_d[0]["active_per_token"]
        flops = 1 - by_d[4]["train_flops_per_token"] / by_d[0]["train_flops_per_token"]
        line = f"\nD=4 vs D=0: {ours:.1%} fewer active parameters, {flops:.1%} fewer training FLOPs per token"
        if with_paper:
            line += f" (paper: {1 - PAPER_TABLE4[4][1] / PAPER_TABLE4[0][1]:.1%} fewer active)"
        lines.append(line)
    if with_paper:
        lines.append("The paper's rows imply different routed-expert widths (last column), so no single "
                     "architecture reproduces all four rows; see docs/model.md.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr model-info", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--dense-layers", type=int, nargs="+", default=None,
                        help="D values (leading dense blocks) to account for; default: the preset's own D")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="context length for attention FLOPs (default: max_position_embeddings)")
    parser.add_argument("--vocab-size", type=int, default=None, help="override the preset's vocabulary size")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    overrides = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401  (its import-time log lines would otherwise pollute stdout)
    dense_layers = args.dense_layers or [get_preset(args.preset, **overrides).first_k_dense_replace]
    try:
        rows = build_rows(args.preset, dense_layers, args.seq_len, overrides)
    except ValueError as error:
        print(f"sparseehr model-info: {error}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, args.preset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
