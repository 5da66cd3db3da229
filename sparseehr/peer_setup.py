"""The peer's side of `sparseehr bench peer`: its settings, its own virtual environment, its inputs (the claims
MEDS corpus linked, each target written as held-out MEDS subjects, one label per next-visit instance), the Llama
shape matched to our preset, and its outputs read back. The conversions themselves are sparseehr.eval.peer_meds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sparseehr.demo import DemoConfig

PEER_SYSTEMS = {"meds-eic-ar": "meds-eic-ar"}        # --system -> PyPI distribution
DEFAULT_PEER_VERSION = "0.5.1"
HELD_OUT = "held_out"                                 # the peer's split for the targets (never trained on)
READY_MARKER = ".sparseehr-ready"



@dataclass
class PeerBenchConfig:
    """Settings of one peer benchmark run; the training budget is shared by both systems."""

    data: Path                     # claims MEDS (the peer's pretraining corpus)
    claims_data: Path              # the same corpus as our DATA_DIR (what our model trains on)
    targets: dict[str, Path]       # name -> target DATA_DIR prepared with --vocab-from claims_data
    work: Path
    system: str = "meds-eic-ar"
    peer_version: str = DEFAULT_PEER_VERSION
    peer_venv: Path | None = None
    preset: str = "small"
    max_steps: int = DemoConfig.max_steps     # the recipe we ship: the demo's steps, ranks and rows
    seq_len: int = 256
    micro_batch: int = DemoConfig.micro_batch
    ranks: int = DemoConfig.ranks
    lr: float = 3e-3
    trajectories: int = 20
    step_limit: int = 48
    max_patients: int | None = None
    max_instances: int | None = None
    generate_batch: int = 128
    peer_shard_subjects: int = 2000
    min_subjects_per_code: int = 10
    min_events_per_subject: int = 2
    seed: int = 0
    overwrite: bool = False
    extra_peer_pretrain: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system not in PEER_SYSTEMS:
            raise ValueError(f"--system {self.system!r}: supported peers are {', '.join(PEER_SYSTEMS)}")
        if self.trajectories < 20:
            raise ValueError(f"--trajectories {self.trajectories}: at least 20 (scores move in steps of 1/N; fewer "
                             f"leave most of the top 20 tied)")
        for name in ("max_steps", "seq_len", "micro_batch", "ranks", "step_limit", "generate_batch",
                     "peer_shard_subjects", "min_subjects_per_code", "min_events_per_subject"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_patients", "max_instances"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.targets:
            raise ValueError("give at least one --target NAME=DATA_DIR")
        if self.peer_venv is None:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            self.peer_venv = cache / "sparseehr" / "peer" / f"{self.system}-{self.peer_version}"

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.ranks


# ------------------------------------------------------------------------------------------------------------
# Running things, timed
# ------------------------------------------------------------------------------------------------------------
def fresh(path: Path) -> Path:
    """An empty folder (the peer's stages skip work whose outputs already exist)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_logged(argv: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run a command, its output to `log`; return its wall time. A failure raises with the log's tail."""
    print("  $ " + " ".join(argv), flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{argv[0]} exited with {code} after {seconds:.0f} s; last lines of {log}:\n{tail}")
    print(f"    {seconds:.1f} s (log {log})", flush=True)
    return seconds


def peer_env(venv: Path, cfg: PeerBenchConfig) -> dict[str, str]:
    """The peer's environment: its venv's bin first on PATH (its pipeline calls MEDS_transform-pipeline by name),
    nothing of ours on PYTHONPATH, and its vocabulary and subject filters."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["MIN_SUBJECTS_PER_CODE"] = str(cfg.min_subjects_per_code)
    env["MIN_EVENTS_PER_SUBJECT"] = str(cfg.min_events_per_subject)
    env.setdefault("HYDRA_FULL_ERROR", "1")
    return env


def ensure_peer_venv(cfg: PeerBenchConfig, logs: Path) -> tuple[Path, str]:
    """Build (once) the peer's own virtual environment; return it and the installed version."""
    import torch

    venv = cfg.peer_venv
    assert venv is not None
    python = venv / "bin" / "python"
    distribution = PEER_SYSTEMS[cfg.system]
    if not (venv / READY_MARKER).is_file():
        if venv.exists():
            shutil.rmtree(venv)   # a half-built environment from an interrupted run
        venv.parent.mkdir(parents=True, exist_ok=True)
        run_logged([sys.executable, "-m", "venv", str(venv)], logs / "peer_venv.log")
        # Our torch build first (CPU or the cluster's CUDA one), so the peer does not pull another.
        torch_spec = f"torch=={torch.__version__.split('+')[0]}"
        run_logged([str(python), "-m", "pip", "install", "-q", torch_spec, f"{distribution}=={cfg.peer_version}"],
                   logs / "peer_pip.log")
        (venv / READY_MARKER).write_text(json.dumps({"installed": f"{distribution}=={cfg.peer_version}"}))
    version = subprocess.check_output([str(python), "-c", "import importlib.metadata as m; "
                                       f"print(m.version({distribution!r}))"], text=True).strip()
    if version != cfg.peer_version:
        raise RuntimeError(f"{venv} holds {distribution} {version}, not {cfg.peer_version}: pass another --peer-venv")
    freeze = subprocess.check_output([str(python), "-m", "pip", "freeze"], text=True)
    (logs / "peer_environment.txt").write_text(freeze)
    return venv, version


# ------------------------------------------------------------------------------------------------------------
# The peer's inputs: claims MEDS + the targets as held-out MEDS subjects, and the label file
# ------------------------------------------------------------------------------------------------------------
@dataclass
class TargetInputs:
    name: str
    data_dir: Path
    instances: list
    peer_ids: dict[int, int]
    labels: object               # pa.Table
    counts: dict


def claims_code_subjects(meds_root: Path) -> dict[str, int]:
    """Training-split subjects per code of the claims corpus (what the peer's vocabulary filter counts)."""
    import pyarrow.parquet as pq

    subjects: dict[str, set[int]] = {}
    for path in sorted((meds_root / "data" / "train").rglob("*.parquet")):
        table = pq.read_table(path, columns=["subject_id", "code"]).group_by(["code", "subject_id"]).aggregate([])
        for code, subject in zip(table.column("code").to_pylist(), table.column("subject_id").to_pylist()):
            subjects.setdefault(code, set()).add(subject)
    if not subjects:
        raise FileNotFoundError(f"{meds_root}/data/train: no MEDS shards (is --data a claims MEDS corpus?)")
    return {code: len(s) for code, s in subjects.items()}


def reshard_by_subject(shard: Path, out_stem: Path, subjects_per_shard: int) -> list[Path]:
    """Write `shard` as OUT_STEM-NNNN.parquet files of at most `subjects_per_shard` subjects each, every subject's
    rows whole and in their order. The peer's bin_numeric_values stage holds a whole shard at once: a 16,000-subject
    claims shard was killed at 21.6 GB on a 24 GB machine, a 2,000-subject one passes in seconds."""
    import numpy as np
    import pyarrow.parquet as pq

    from sparseehr.data_pipeline.arrays import run_starts

    table = pq.read_table(shard)
    subject = table.column("subject_id").to_numpy()
    if np.any(subject[1:] < subject[:-1]):
        raise ValueError(f"{shard}: rows are not sorted by subject_id (MEDS shards are); cannot re-shard it")
    cuts = [int(r) for r in run_starts(subject)[::subjects_per_shard]] + [len(subject)]
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
        path = out_stem.parent / f"{out_stem.name}-{number:04d}.parquet"
        pq.write_table(table.slice(start, stop - start), path)
        written.append(path)
    return written


def build_peer_inputs(cfg: PeerBenchConfig, meds_dir: Path, labels_dir: Path) -> dict[str, TargetInputs]:
    """Peer MEDS root = the claims shards (re-sharded by subject) + one held_out shard per target; labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparseehr.data_pipeline import schema
    from sparseehr.data_pipeline.datadir import load_tokenizer, read_harmonization
    from sparseehr.eval.instances import build_instances, load_splits
    from sparseehr.eval.peer_meds import code_map_from_counts, label_table, target_meds_table

    for split_dir in sorted(p for p in (cfg.data / "data").iterdir() if p.is_dir()):
        for shard in sorted(split_dir.rglob("*.parquet")):
            out = meds_dir / "data" / split_dir.name / shard.relative_to(split_dir).with_suffix("")
            reshard_by_subject(shard, out, cfg.peer_shard_subjects)
    (meds_dir / "metadata").mkdir(parents=True)
    shutil.copy(cfg.data / "metadata" / "dataset.json", meds_dir / "metadata" / "dataset.json")
    splits = pq.read_table(cfg.data / "metadata" / "subject_splits.parquet")
    next_id = int(pa.compute.max(splits.column("subject_id")).as_py()) + 1

    # Each category is written as its most widespread claims code among those the peer's vocabulary keeps.
    code_map = code_map_from_counts({code: n for code, n in claims_code_subjects(cfg.data).items()
                                     if n >= cfg.min_subjects_per_code})
    inputs: dict[str, TargetInputs] = {}
    for name, data_dir in cfg.targets.items():
        settings = read_harmonization(data_dir).get("settings", {})
        if settings.get("dx_prefix_len", 3) != 3 or settings.get("px_prefix_len", 3) != 3:
            raise ValueError(f"{data_dir}: harmonized with {settings}; the code map assumes 3-character categories")
        built = build_instances(load_splits(data_dir, schema.SPLITS, cfg.max_patients, cfg.seed))
        instances = built.instances[: cfg.max_instances] if cfg.max_instances else built.instances
        patients = list({id(inst.patient): inst.patient for inst in instances}.values())
        vocab = load_tokenizer(data_dir).convert_ids_to_tokens(list(range(len(load_tokenizer(data_dir)))))
        written = target_meds_table(patients, vocab, code_map, first_peer_id=next_id)
        next_id += len(patients)
        pq.write_table(written.table, meds_dir / "data" / HELD_OUT / f"target_{name}.parquet")
        new_splits = pa.table({"subject_id": pa.array(sorted(written.peer_ids.values()), pa.int64()),
                               "split": pa.array([HELD_OUT] * len(written.peer_ids), pa.string())})
        splits = pa.concat_tables([splits, new_splits.cast(splits.schema)])
        labels = label_table(instances, written.peer_ids)
        (labels_dir / name).mkdir(parents=True)
        pq.write_table(labels, labels_dir / name / "0.parquet")
        inputs[name] = TargetInputs(name, data_dir, instances, written.peer_ids, labels,
                                    {**written.counts, "patients": len(patients), "instances": len(instances),
                                     "instances_in_target": len(built.instances)})
        print(f"  {name}: {len(instances)} instances of {len(patients)} patients -> MEDS ({dict(written.counts)})",
              flush=True)
    pq.write_table(splits, meds_dir / "metadata" / "subject_splits.parquet")
    return inputs


# ------------------------------------------------------------------------------------------------------------
# The matched budget
# ------------------------------------------------------------------------------------------------------------
def llama_non_embedding(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> int:
    """Non-embedding parameters of HF LlamaForCausalLM (no biases, untied head): per layer q/o (h x h), k/v
    (h x kv*head_dim), a SwiGLU MLP (3 h i) and two RMSNorms; plus the final norm."""
    head_dim = hidden // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate + 2 * hidden
    return layers * per_layer + hidden


def matched_peer_shape(preset: str, vocab_size: int) -> dict:
    """The peer's Llama shape: our preset's width, depth and heads, with the MLP width that brings its
    non-embedding parameters nearest our preset's total non-embedding parameters (all experts counted)."""
    from sparseehr.model.accounting import count_parameters
    from sparseehr.model.presets import get_preset

    ours = get_preset(preset, vocab_size=vocab_size)
    counts = count_parameters(ours)
    hidden, layers = ours.hidden_size, ours.num_hidden_layers
    heads, kv_heads = ours.num_attention_heads, ours.num_key_value_heads
    fixed = llama_non_embedding(hidden, layers, heads, kv_heads, 0)
    intermediate = max(1, round((counts.non_embedding - fixed) / (3 * hidden * layers)))
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "attention_head_dim": hidden // heads, "intermediate_size": intermediate,
            "peer_non_embedding": llama_non_embedding(hidden, layers, heads, kv_heads, intermediate),
            "ours_non_embedding": counts.non_embedding, "ours_active_non_embedding": counts.active_non_embedding}


def peer_pretrain_overrides(cfg: PeerBenchConfig, shape: dict) -> list[str]:
    """Hydra overrides: the micro config reshaped to `shape`, our steps / rows per step / row length, CPU fp32."""
    gpt = "lightning_module.model.gpt_kwargs"
    return ["lightning_module=micro",
            f"{gpt}.num_hidden_layers={shape['num_hidden_layers']}",
            f"{gpt}.num_attention_heads={shape['num_attention_heads']}",
            f"{gpt}.attention_head_dim={shape['attention_head_dim']}",
            f"{gpt}.intermediate_size={shape['intermediate_size']}",
            f"+{gpt}.num_key_value_heads={shape['num_key_value_heads']}",
            f"max_seq_len={cfg.seq_len}", f"datamodule.batch_size={cfg.rows_per_step}",
            f"trainer.max_steps={cfg.max_steps}", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.precision=32", "trainer.log_every_n_steps=1",
            # one validation, at the last step, counted across epochs: the checkpoint it picks is the final model
            # (as ours is), and a budget shorter than an epoch still validates (its early stopping needs it)
            "trainer.check_val_every_n_epoch=null", f"trainer.val_check_interval={cfg.max_steps}",
            "datamodule.num_workers=0", f"seed={cfg.seed + 1}", *cfg.extra_peer_pretrain]


# ------------------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------------------
def peer_vocabulary_categories(processed: Path) -> set[str]:
    """Our diagnosis categories the peer can emit: those of the codes in its fitted vocabulary."""
    import pyarrow.parquet as pq

    from sparseehr.eval.peer_meds import peer_code_category

    codes_file = processed / "metadata" / "codes.parquet"
    if not codes_file.is_file():
        raise FileNotFoundError(f"{codes_file}: MEICAR_process_data wrote no vocabulary")
    codes = pq.read_table(codes_file, columns=["code"]).column("code").to_pylist()
    return {c for c in (peer_code_category(code) for code in codes if code) if c}


def read_trajectories(folder: Path, n: int):
    import pyarrow.parquet as pq

    files = [folder / f"{i}.parquet" for i in range(n)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"the peer wrote no trajectory file {missing[0]} ({len(missing)} of {n} missing)")
    return [pq.read_table(f) for f in files]
