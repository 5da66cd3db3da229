"""What a run reports: metrics.jsonl records (written through launch/rundir.py), a tqdm bar, and MFU.

MFU = achieved model FLOPs / peak FLOPs, with model FLOPs per token from sparseehr.model.accounting
(flops_per_token(config, seq_len, training=True): forward + backward, active parameters only). The peak comes
from --peak-tflops, else a table for known GPUs (dense bf16 tensor-core figures), else — on CPU, where no
datasheet number applies — a measured fp32 matmul throughput of this machine, so CPU "MFU" reads as a fraction
of what this CPU's matmul achieves.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sparseehr.launch import rundir

# Dense (no sparsity) bf16 peak TFLOPs per device.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def measured_matmul_tflops(size: int = 1024, trials: int = 8) -> float:
    """Best-of-`trials` fp32 matmul throughput of this process's threads (a CPU stand-in for a datasheet peak).
    The best trial, not the mean: on a shared machine other load only ever makes a trial slower."""
    # A private generator: drawing from the global one would shift a resumed run's random stream.
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    torch.mm(a, b)
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e12)
    return best


def peak_tflops(override: float | None) -> tuple[float, str]:
    """(peak TFLOPs per rank, where the figure came from)."""
    if override:
        return override, "--peak-tflops"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value, f"table ({name})"
    return measured_matmul_tflops(), "measured fp32 matmul"


class MetricsWriter:
    """Appends to RUN_DIR/metrics.jsonl (rank 0 only) and drives the progress bar. A torn last record left by an
    earlier kill is cut off first, so every append starts on a fresh line."""

    def __init__(self, run_dir: str | Path, enabled: bool, total_steps: int, start_step: int) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.bar = None
        if enabled:
            rundir.repair_metrics(self.run_dir)
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rundir.append_metrics(self.run_dir, record)
        shown = {k: record[k] for k in ("loss", "lr", "tokens_per_s", "mfu", "val_loss", "copy_r10_rare")
                 if record.get(k) is not None}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
