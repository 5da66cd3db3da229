"""`sparseehr bench model`: CPU forward+backward tokens/s of SparseEHR vs transformers' own Qwen2-MoE.

    sparseehr bench model [--tokens 1024 4096 16384] [--repeats 3] [--threads 1] [--json]

Two comparisons at a matched configuration, measured in the same run (ratios = ours / Qwen2-MoE):
(a) one MoE block: our DeepSpeed-based block (router + 4 experts top-1 + sigmoid-gated shared expert) vs
    Qwen2MoeSparseMoeBlock with identical sizes;
(b) a whole model: the `small` preset vs Qwen2MoeForCausalLM with the same hidden size, layers, heads, dense
    prefix (`mlp_only_layers`), experts, top-k, shared expert, vocabulary and tied embeddings.
Both run in training mode (ours with its training capacity factor and token dropping). Each figure is the median
of `--repeats` timed calls after one warm-up call.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from typing import Callable

import torch

from sparseehr.model.presets import get_preset

SEQ_LEN = 512  # tokens per row; tokens per call = rows x SEQ_LEN


def qwen_config_matching(config, **overrides):
    from transformers import Qwen2MoeConfig

    qwen = Qwen2MoeConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size, moe_intermediate_size=config.moe_intermediate_size,
        shared_expert_intermediate_size=config.shared_expert_intermediate_size, num_experts=config.num_experts,
        num_experts_per_tok=config.num_experts_per_tok, mlp_only_layers=list(range(config.first_k_dense_replace)),
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings, qkv_bias=False, output_router_logits=True,
        router_aux_loss_coef=config.router_aux_loss_coef, **overrides)
    qwen._attn_implementation = "sdpa"
    return qwen


def time_pair(ours: Callable[[], None], theirs: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median seconds per call of each, alternating the two so that load drift on a shared machine hits both."""
    ours(), theirs()  # warm-up: allocator, lazy init
    ours_times, their_times = [], []
    for _ in range(repeats):
        for step, times in ((ours, ours_times), (theirs, their_times)):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(their_times)


def bench_block(config, tokens: int, repeats: int) -> tuple[float, float]:
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    from sparseehr.model.modeling_sparseehr import SparseEHRMoeBlock

    torch.manual_seed(0)
    ours = SparseEHRMoeBlock(config).train()
    qwen = Qwen2MoeSparseMoeBlock(qwen_config_matching(config)).train()
    for module in qwen.modules():  # Qwen's 3-D expert tensors start empty: give them real values
        for param in module.parameters(recurse=False):
            torch.nn.init.normal_(param, std=config.initializer_range)
    x = torch.randn(tokens // SEQ_LEN, SEQ_LEN, config.hidden_size, requires_grad=True)

    def ours_step() -> None:
        out = ours(x, None)
        (out.hidden_states.sum() + out.aux_loss).backward()

    def qwen_step() -> None:
        qwen(x).sum().backward()

    ours_s, qwen_s = time_pair(ours_step, qwen_step, repeats)
    return tokens / ours_s, tokens / qwen_s


def bench_model(config, tokens: int, repeats: int) -> tuple[float, float]:
    from transformers import Qwen2MoeForCausalLM

    from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM

    torch.manual_seed(0)
    ours = SparseEHRForCausalLM(config).train()
    qwen = Qwen2MoeForCausalLM(qwen_config_matching(config)).train()
    ids = torch.randint(0, config.vocab_size, (tokens // SEQ_LEN, SEQ_LEN))

    def ours_step() -> None:
        ours(ids, labels=ids).loss.backward()

    def qwen_step() -> None:
        qwen(ids, labels=ids).loss.backward()

    ours_s, qwen_s = time_pair(ours_step, qwen_step, repeats)
    return tokens / ours_s, tokens / qwen_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr bench model", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384],
                        help=f"tokens per call (multiples of {SEQ_LEN})")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine 2 threads oversubscribe)")
    parser.add_argument("--preset", default="small", help="model preset for both comparisons")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)
    bad = [t for t in args.tokens if t <= 0 or t % SEQ_LEN]
    if bad or args.repeats < 1 or args.threads < 1:
        print(f"sparseehr bench model: --tokens must be positive multiples of {SEQ_LEN} (got {bad}), "
              f"--repeats and --threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401  (its import-time log lines would otherwise pollute --json output)
    # shared_expert_gate=True: Qwen2-MoE always gates its shared expert, so the blocks do the same work.
    config = get_preset(args.preset, shared_expert_gate=True, max_position_embeddings=max(SEQ_LEN, 512))
    results = []
    for kind, bench in (("moe_block", bench_block), ("model", bench_model)):
        for tokens in args.tokens:
            ours, qwen = bench(config, tokens, args.repeats)
            results.append({"bench": kind, "tokens_per_call": tokens, "ours_tokens_per_s": ours,
                            "qwen2_moe_tokens_per_s": qwen, "ratio": ours / qwen})
            if not args.json:
                print(f"{kind:<9} {tokens:>6} tokens/call  ours {ours:>9.0f} tok/s  qwen2-moe {qwen:>9.0f} tok/s  "
                      f"ratio {ours / qwen:5.2f}", flush=True)
    if args.json:
        print(json.dumps({"preset": args.preset, "hidden_size": config.hidden_size, "threads": args.threads,
                          "repeats": args.repeats, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
