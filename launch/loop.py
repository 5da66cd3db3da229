"""The training loop, layered train() -> train_step() -> forward_backward_step(), plus evaluate()."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparseehr.launch import rundir
from sparseehr.launch.config import TrainConfig
from sparseehr.launch.context import RunContext, TrainingError, prepare_run
from sparseehr.launch.data import validation_batches
from sparseehr.launch.metrics import MetricsWriter, peak_tflops
from sparseehr.launch.probe import CopyProbe
from sparseehr.model.expert_stats import expert_load_fractions, expert_load_std
from sparseehr.model.loss import next_token_nll


@dataclass
class StepResult:
    loss: float          # lm + coef * aux, mean over this rank's micro-batches
    lm_loss: float
    aux_loss: float
    real_tokens: int     # non-padding tokens this rank trained on
    expert_counts: torch.Tensor | None  # [num_moe_layers, num_experts] tokens routed on this rank


def forward_backward_step(engine, batch: dict[str, torch.Tensor]):
    """One micro-batch: forward, backward, and engine.step() (DeepSpeed only updates at the accumulation
    boundary, and must see step() after every backward to count micro-steps)."""
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], labels=batch["labels"], output_expert_counts=True,
                 use_cache=False)
    engine.backward(out.loss)
    engine.step()
    return out


def train_step(engine, loader, grad_accum_steps: int) -> StepResult:
    """One optimizer step = grad_accum_steps micro-batches."""
    loss = lm = aux = 0.0
    tokens = 0
    counts = None
    for _ in range(grad_accum_steps):
        batch = loader.next_batch()
        out = forward_backward_step(engine, batch)
        loss += out.loss.item()
        lm += out.lm_loss.item()
        aux += float(out.aux_loss.item()) if out.aux_loss is not None else 0.0
        tokens += int(batch["attention_mask"].sum())
        if out.expert_counts is not None:
            step_counts = out.expert_counts.detach().float().cpu()
            counts = step_counts if counts is None else counts + step_counts
    n = grad_accum_steps
    return StepResult(loss / n, lm / n, aux / n, tokens, counts)


@torch.no_grad()
def evaluate(engine, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Token-weighted LM loss over every rank's validation rows (padding excluded) and its perplexity."""
    import deepspeed.comm as dist

    engine.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in batches:
        batch = {k: v.to(engine.device) for k, v in batch.items()}
        out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     position_ids=batch["position_ids"], use_cache=False)
        nll, count = next_token_nll(out.logits, batch["labels"], batch["position_ids"])
        total += torch.tensor([float(nll), float(count)], dtype=torch.float64)
    engine.train()
    dist.all_reduce(total)
    val_loss = (total[0] / total[1].clamp_min(1)).item()
    return val_loss, math.exp(min(val_loss, 50.0))


def train(cfg: TrainConfig, eval_only: bool = False) -> dict[str, Any]:
    """Run (or continue) training as described by cfg; returns the last metrics record."""
    import deepspeed.comm as dist

    ctx: RunContext = prepare_run(cfg, eval_only=eval_only)
    engine, loader, state, checkpoints = ctx.engine, ctx.loader, ctx.state, ctx.checkpoints
    val_batches = validation_batches(ctx.val_dataset, ctx.seq_len, cfg.micro_batch_size, ctx.rank, ctx.world_size,
                                     ctx.pad_id, cfg.eval_max_rows) if ctx.val_dataset is not None else []
    if eval_only:
        if not val_batches:
            raise TrainingError(f"--eval-only: the validation split of {cfg.data_dir} has no windows")
        val_loss, val_ppl = evaluate(engine, val_batches)
        record = {"step": state.step, "val_loss": val_loss, "val_ppl": val_ppl, "eval_only": True}
        if ctx.rank == 0:
            print(f"[sparseehr] eval-only: val_loss={val_loss:.6f} val_ppl={val_ppl:.4f}", flush=True)
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            rundir.repair_metrics(cfg.out_dir)
            rundir.append_metrics(cfg.out_dir, record)
        return record

    copy_probe = CopyProbe.from_run(cfg.data_dir, ctx.val_dataset, ctx.rank, ctx.world_size, ctx.pad_id)
    writer = MetricsWriter(cfg.out_dir, ctx.rank == 0, ctx.total_steps, state.step)
    flops_per_token = ctx.flops_per_token
    peak, peak_source = peak_tflops(cfg.peak_tflops)
    if ctx.rank == 0:
        print(f"[sparseehr] {ctx.world_size} rank(s), ep={ctx.ep_size}, seq_len={ctx.seq_len}, "
              f"steps {state.step}->{ctx.total_steps}, peak {peak:.3g} TFLOPs/rank ({peak_source})", flush=True)
    record: dict[str, Any] = {}
    try:
        with checkpoints.preemption as preemption:
            while state.step < ctx.total_steps:
                started = time.perf_counter()
                lr = engine.get_lr()[0]  # the rate this step uses (the scheduler advances inside the step)
                result = train_step(engine, loader, cfg.grad_accum_steps)
                grad_norm = engine.get_global_grad_norm()
                # One all-reduce carries the step's figures and the preemption vote (any rank signalled: all stop).
                counts = result.expert_counts if result.expert_counts is not None else torch.zeros(0)
                summary = torch.cat([torch.tensor([result.loss, result.lm_loss, result.aux_loss, result.real_tokens,
                                                   float(preemption.raised)], dtype=torch.float64),
                                     counts.flatten().double()])
                dist.all_reduce(summary)
                elapsed = time.perf_counter() - started
                state.step += 1
                state.tokens_seen += int(summary[3])
                step, world = state.step, ctx.world_size
                is_last = step == ctx.total_steps
                tokens_per_s = float(summary[3]) / elapsed
                record = {"step": step, "loss": summary[0].item() / world, "lm_loss": summary[1].item() / world,
                          "aux_loss": summary[2].item() / world, "lr": lr,
                          "grad_norm": None if grad_norm is None else float(grad_norm),
                          "tokens_per_s": tokens_per_s, "step_time_s": elapsed, "tokens": state.tokens_seen,
                          "mfu": flops_per_token * tokens_per_s / (peak * 1e12 * world),
                          "epoch": loader.position.epoch}
                if counts.numel():
                    fractions = expert_load_fractions(summary[5:].view_as(counts).numpy())
                    record.update(expert_load=fractions.tolist(), expert_load_std=expert_load_std(fractions))
                if val_batches and ((cfg.eval_interval and step % cfg.eval_interval == 0) or is_last):
                    record["val_loss"], record["val_ppl"] = evaluate(engine, val_batches)
                    record.update(copy_probe(engine) if copy_probe else {})  # launch/probe.py
                if step % cfg.log_interval == 0 or is_last or "val_loss" in record:
                    record["peak_rss_mb"] = peak_rss_mb()  # collective: every rank reaches it on the same steps
                    writer.write(record)
                writer.advance()
                preempted = summary[4].item() > 0
                if checkpoints.should_save(step, ctx.total_steps, preempted):
                    checkpoints.save()
                if preempted:
                    if ctx.rank == 0:
                        print(f"[sparseehr] {preemption.signal_name or 'signal on another rank'}: checkpointed at "
                              f"step {step}; continue with --resume", flush=True)
                    break
    finally:
        writer.close()
    return record


def peak_rss_mb() -> float:
    """Largest peak resident memory of any rank so far, in MiB (ru_maxrss is KiB on Linux)."""
    import resource

    import deepspeed.comm as dist

    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak.item())


__all__ = ["train", "train_step", "forward_backward_step", "evaluate", "TrainingError"]
