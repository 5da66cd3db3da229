"""`sparseehr bench peer`: a public peer (MEDS_EIC_AR) trained on our pretraining corpus with our small preset's
budget, scored zero-shot on our targets by our own Recall@K code, beside our model and both baselines.

    sparseehr bench peer --system meds-eic-ar --data CLAIMS_MEDS --claims-data CLAIMS_DATA_DIR \\
        --target synthetic-mimic=MIMIC_DATA_DIR --target mimic-iv-demo=DEMO_DATA_DIR --work W

One run, in W (every folder below is deleted and rewritten on each run: the peer's pipeline silently skips
stages whose outputs it finds):
  peer/venv          the peer in a virtual environment of its own (never our lock; cached in --peer-venv)
  peer/meds          the claims MEDS corpus (linked) + each target written as MEDS into held_out (our converter)
  peer/labels        one MEDS label row per next-visit instance (prediction_time = end of visit t)
  peer/processed     MEICAR_process_data;  peer/pretrain  MEICAR_pretrain;  peer/trajectories  N per instance
  ours/run, ours/hf  our small preset trained on CLAIMS_DATA_DIR with the same steps, rows and row length
  report.json, report.md   R@10/R@20 with patient-bootstrap CIs, instances, training tokens, wall times, tokens/s
The pure conversions (vocabulary, target MEDS, labels, trajectories -> rankings) are sparseehr.eval.peer_meds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PEER_SYSTEMS = {"meds-eic-ar": "meds-eic-ar"}        # --system -> PyPI distribution
DEFAULT_PEER_VERSION = "0.5.1"
HELD_OUT = "held_out"                                 # the peer's split for the targets (never trained on)
READY_MARKER = ".sparseehr-ready"
REPORT_KS = (1, 5, 10, 20)


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
    max_steps: int = 1000
    seq_len: int = 256
    micro_batch: int = 16
    ranks: int = 1
    lr: float = 3e-3
    trajectories: int = 20
    step_limit: int = 48
    max_patients: int | None = None
    max_instances: int | None = None
    generate_batch: int = 40
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
                     "min_subjects_per_code",
                     "min_events_per_subject"):
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


def parse_args(argv: list[str] | None) -> PeerBenchConfig:
    parser = argparse.ArgumentParser(prog="sparseehr bench peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="meds-eic-ar", help="the peer (only meds-eic-ar)")
    parser.add_argument("--data", type=Path, required=True, help="claims MEDS corpus (sparseehr synth --system claims)")
    parser.add_argument("--claims-data", type=Path, required=True,
                        help="DATA_DIR of the same corpus (sparseehr prepare --meds CLAIMS_MEDS)")
    parser.add_argument("--target", action="append", required=True, metavar="NAME=DATA_DIR",
                        help="a target DATA_DIR prepared with --vocab-from CLAIMS_DATA_DIR (repeat for several)")
    parser.add_argument("--work", type=Path, required=True, help="folder for every intermediate and the report")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier peer benchmark in --work")
    parser.add_argument("--peer-version", default=DEFAULT_PEER_VERSION)
    parser.add_argument("--peer-venv", type=Path, default=None,
                        help="the peer's own virtual environment (built when absent; default ~/.cache/sparseehr/peer)")
    parser.add_argument("--preset", default="small", help="our model and training preset")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (both systems)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training row (both systems)")
    parser.add_argument("--micro-batch", type=int, default=16, help="rows per rank per step (ours)")
    parser.add_argument("--ranks", type=int, default=1, help="our training processes; the peer's batch is "
                                                             "micro-batch x ranks rows")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--trajectories", type=int, default=20, help="N trajectories per instance (>= 20)")
    parser.add_argument("--step-limit", type=int, default=48, help="new tokens per rollout / trajectory (both)")
    parser.add_argument("--max-patients", type=int, default=None, help="seeded target patients per split")
    parser.add_argument("--max-instances", type=int, default=None,
                        help="score only the first this many instances of each target (smoke runs)")
    parser.add_argument("--generate-batch", type=int, default=40,
                        help="trajectories generated at once by the peer (its N copies of an instance are interleaved)")
    parser.add_argument("--min-subjects-per-code", type=int, default=10, help="the peer's vocabulary filter")
    parser.add_argument("--min-events-per-subject", type=int, default=2, help="the peer's subject filter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra Hydra override for MEICAR_pretrain (e.g. trainer.val_check_interval=20)")
    args = parser.parse_args(argv)
    targets: dict[str, Path] = {}
    for item in args.target:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--target {item!r}: expected NAME=DATA_DIR")
        if name in targets:
            parser.error(f"--target {name}: given twice")
        targets[name] = Path(path)
    try:
        return PeerBenchConfig(
            data=args.data, claims_data=args.claims_data, targets=targets, work=args.work, system=args.system,
            peer_version=args.peer_version, peer_venv=args.peer_venv, preset=args.preset, max_steps=args.max_steps,
            seq_len=args.seq_len, micro_batch=args.micro_batch, ranks=args.ranks, lr=args.lr,
            trajectories=args.trajectories, step_limit=args.step_limit, max_patients=args.max_patients,
            max_instances=args.max_instances, generate_batch=args.generate_batch,
            min_subjects_per_code=args.min_subjects_per_code,
            min_events_per_subject=args.min_events_per_subject, seed=args.seed, overwrite=args.overwrite,
            extra_peer_pretrain=args.peer_pretrain_override)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


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


def build_peer_inputs(cfg: PeerBenchConfig, meds_dir: Path, labels_dir: Path) -> dict[str, TargetInputs]:
    """Peer MEDS root = the claims shards (linked) + one held_out shard per target; labels per target."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparseehr.data_pipeline import schema
    from sparseehr.data_pipeline.datadir import load_tokenizer, read_harmonization
    from sparseehr.eval.instances import build_instances, load_splits
    from sparseehr.eval.peer_meds import code_map_from_counts, label_table, target_meds_table

    for split_dir in sorted(p for p in (cfg.data / "data").iterdir() if p.is_dir()):
        for shard in sorted(split_dir.rglob("*.parquet")):
            link = meds_dir / "data" / split_dir.name / shard.relative_to(split_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(shard.resolve())
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
def train_ours(cfg: PeerBenchConfig, run_dir: Path, hf_dir: Path, logs: Path) -> dict:
    """Our preset on CLAIMS_DATA_DIR (separate process, as `sparseehr demo` trains), then the HF export."""
    from sparseehr.launch.export import main as export_main
    from sparseehr.stages import train_command

    args = ["--preset", cfg.preset, "--data", str(cfg.claims_data), "--out", str(run_dir),
            "--max-steps", str(cfg.max_steps), "--seq-len", str(cfg.seq_len), "--micro-batch", str(cfg.micro_batch),
            "--lr", str(cfg.lr), "--seed", str(cfg.seed), "--ckpt-interval", str(cfg.max_steps)]
    if cfg.max_steps < 20:   # the small preset warms up for 20 steps; a smoke run is shorter than that
        args += ["--warmup-steps", str(max(1, cfg.max_steps // 2))]
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    seconds = run_logged(train_command(cfg.ranks, args), logs / "ours_train.log", env=env)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tokens = max((r.get("tokens", 0) for r in records), default=0)
    if export_main(["--run", str(run_dir), "--out", str(hf_dir), "--overwrite"]) != 0:
        raise RuntimeError(f"sparseehr export of {run_dir} failed")
    return {"wall_s": seconds, "tokens": int(tokens), "tokens_per_s": tokens / seconds if seconds else None,
            "token_slots": cfg.max_steps * cfg.rows_per_step * cfg.seq_len}


def score_ours(cfg: PeerBenchConfig, hf_dir: Path, target: TargetInputs, top_n: int) -> tuple[list, dict]:
    import torch

    from sparseehr.data_pipeline.datadir import load_tokenizer
    from sparseehr.eval.scorers import ModelScorer, ScoringConfig, check_same_vocabulary, load_model

    tokenizer = load_tokenizer(target.data_dir)
    check_same_vocabulary(hf_dir, tokenizer, target.data_dir)
    scorer = ModelScorer(load_model(hf_dir, "cuda" if torch.cuda.is_available() else "cpu"), tokenizer,
                         ScoringConfig(mode="rollout", step_limit=cfg.step_limit, seed=cfg.seed), name="model")
    start = time.perf_counter()
    rankings = scorer.rank(target.instances, top_n)
    seconds = time.perf_counter() - start
    return rankings, {"wall_s": seconds, "instances_per_s": len(rankings) / seconds if seconds else None}


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


def run_bench(cfg: PeerBenchConfig) -> dict:
    """Every stage of the benchmark; returns the report (also written to WORK/report.json and report.md)."""
    from sparseehr.data_pipeline.datadir import load_tokenizer, load_train_code_counts
    from sparseehr.data_pipeline.frequency import common_codes
    from sparseehr.eval import baselines
    from sparseehr.eval.nextvisit import DEFAULT_KS, evaluate_rankings, target_vocabulary_summary
    from sparseehr.eval.peer_meds import rank_trajectories

    work = cfg.work
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    peer_dir, ours_dir = work / "peer", work / "ours"
    timings: dict[str, float] = {}

    print("[1/7] the peer's own environment", flush=True)
    venv, version = ensure_peer_venv(cfg, logs)
    env = peer_env(venv, cfg)
    bin_dir = venv / "bin"

    print("[2/7] the peer's inputs: claims MEDS + targets as held-out MEDS subjects, one label per instance",
          flush=True)
    meds_dir, labels_dir = fresh(peer_dir / "meds"), fresh(peer_dir / "labels")
    targets = build_peer_inputs(cfg, meds_dir, labels_dir)

    print("[3/7] MEICAR_process_data", flush=True)
    intermediate, processed = fresh(peer_dir / "intermediate"), peer_dir / "processed"
    if processed.exists():
        shutil.rmtree(processed)
    timings["peer_process_data_s"] = run_logged(
        [str(bin_dir / "MEICAR_process_data"), f"input_dir={meds_dir}", f"intermediate_dir={intermediate}",
         f"output_dir={processed}"], logs / "peer_process_data.log", env=env)

    peer_categories = peer_vocabulary_categories(processed)

    print(f"[4/7] train ours ({cfg.preset}, {cfg.max_steps} steps x {cfg.rows_per_step} rows x {cfg.seq_len})",
          flush=True)
    for folder in (ours_dir / "run", ours_dir / "hf"):
        if folder.exists():
            shutil.rmtree(folder)
    ours_train = train_ours(cfg, ours_dir / "run", ours_dir / "hf", logs)

    print("[5/7] MEICAR_pretrain with the matched shape and budget", flush=True)
    shape = matched_peer_shape(cfg.preset, len(load_tokenizer(cfg.claims_data)))
    pretrain_dir = peer_dir / "pretrain"
    if pretrain_dir.exists():
        shutil.rmtree(pretrain_dir)
    peer_seconds = run_logged([str(bin_dir / "MEICAR_pretrain"), f"datamodule.config.tensorized_cohort_dir={processed}",
                               f"output_dir={pretrain_dir}", *peer_pretrain_overrides(cfg, shape)],
                              logs / "peer_pretrain.log", env=env)
    slots = cfg.max_steps * cfg.rows_per_step * cfg.seq_len
    peer_train = {"wall_s": peer_seconds, "token_slots": slots, "tokens_per_s": slots / peer_seconds}

    print(f"[6/7] MEICAR_generate_trajectories (N={cfg.trajectories}, {cfg.step_limit} new tokens)", flush=True)
    generated = peer_dir / "trajectories"
    if generated.exists():
        shutil.rmtree(generated)
    peer_generate_s = run_logged(
        [str(bin_dir / "MEICAR_generate_trajectories"), f"model_initialization_dir={pretrain_dir}",
         f"output_dir={generated}", f"datamodule.config.tensorized_cohort_dir={processed}",
         f"datamodule.config.task_labels_dir={labels_dir}", f"datamodule.batch_size={cfg.generate_batch}",
         "datamodule.num_workers=0", f"inference.generate_for_splits=[{HELD_OUT}]",
         f"inference.N_trajectories_per_task_sample={cfg.trajectories}", "seq_lens.frac_seq_len_as_context=null",
         f"seq_lens.max_generated_trajectory_len={cfg.step_limit}",
         # the new-token budget itself: without it the peer generates up to max_seq_len - the batch's input length
         f"rolling_generation.max_new_tokens={cfg.step_limit}", "trainer.accelerator=cpu", "trainer.devices=1",
         "trainer.precision=32", f"seed={cfg.seed + 1}"], logs / "peer_generate.log", env=env)
    trajectories = read_trajectories(generated / HELD_OUT, cfg.trajectories)
    generated_rows = sum(t.num_rows for t in trajectories)

    print("[7/7] score every system on exactly our instances", flush=True)
    ks = sorted(set(DEFAULT_KS) | set(REPORT_KS))
    report_targets = {}
    n_all = sum(len(t.instances) for t in targets.values())
    for name, target in targets.items():
        counts = load_train_code_counts(target.data_dir)
        rankings = {}
        rankings["model"], ours_score = score_ours(cfg, ours_dir / "hf", target, max(ks))
        for baseline in baselines.BASELINE_NAMES:
            rankings[baseline] = baselines.make_baseline(baseline, counts).rank(target.instances, max(ks))
        rankings["peer"], peer_counts = rank_trajectories(trajectories, target.labels, cfg.trajectories, max(ks))
        common = common_codes(counts)
        blocks = {system: evaluate_rankings(target.instances, r, ks, common, seed=cfg.seed)
                  for system, r in rankings.items()}
        share = len(target.instances) / n_all if n_all else 0.0
        report_targets[name] = {
            "data": str(target.data_dir), "n_instances": len(target.instances),
            "n_patients": target.counts["patients"], "conversion": target.counts, "peer_trajectories": dict(peer_counts),
            "targets_vs_peer_vocabulary": target_vocabulary_summary(target.instances, peer_categories),
            "scoring": {"model": ours_score,
                        # one generation run covers every target: its time is split by instance share
                        "peer": {"wall_s": peer_generate_s * share,
                                 "instances_per_s": n_all / peer_generate_s if peer_generate_s else None,
                                 "generated_rows_per_s": generated_rows / peer_generate_s if peer_generate_s else None}},
            "systems": blocks,
        }
    return {
        "peer": {"system": cfg.system, "version": version, "venv": str(venv), "shape": shape,
                 "min_subjects_per_code": cfg.min_subjects_per_code,
                 "min_events_per_subject": cfg.min_events_per_subject, "trajectories_per_instance": cfg.trajectories},
        "budget": {"max_steps": cfg.max_steps, "rows_per_step": cfg.rows_per_step, "seq_len": cfg.seq_len,
                   "step_limit": cfg.step_limit},
        "training": {"model": ours_train, "peer": peer_train},
        "peer_process_data_s": timings["peer_process_data_s"], "peer_generate_s": peer_generate_s,
        "targets": report_targets, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }


SYSTEM_LABELS = {"model": "ours (SparseEHR)", "peer": "peer (MEDS_EIC_AR)", "baseline:frequency": "baseline:frequency",
                 "baseline:history": "baseline:history"}


def report_markdown(report: dict) -> str:
    def with_ci(block: dict, k: int) -> str:
        low, high = block["recall_at_k_ci"][str(k)]
        return f"{block['recall_at_k'][str(k)]:.3f} [{low:.3f}, {high:.3f}]"

    train = report["training"]
    lines = ["| target | system | R@10 [95% CI] | R@20 [95% CI] | instances | training tokens | train wall s | "
             "train tokens/s | scoring wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, target in report["targets"].items():
        for system in ("model", "peer", "baseline:frequency", "baseline:history"):
            block = target["systems"][system]
            if system in ("model", "peer"):
                t = train[system]
                tokens = f"{t['tokens']:,} real" if system == "model" else f"{t['token_slots']:,} slots"
                extra = (f"{tokens} | {t['wall_s']:.0f} | {t['tokens_per_s']:.0f} | "
                         f"{target['scoring'][system]['wall_s']:.0f}")
            else:
                extra = "- | - | - | -"
            lines.append(f"| {name} | {SYSTEM_LABELS[system]} | {with_ci(block, 10)} | {with_ci(block, 20)} | "
                         f"{target['n_instances']} | {extra} |")
    shape = report["peer"]["shape"]
    lines += ["", f"Peer: {report['peer']['system']} {report['peer']['version']}, Llama hidden {shape['hidden_size']}, "
                  f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']}/{shape['num_key_value_heads']} "
                  f"heads, MLP {shape['intermediate_size']}: {shape['peer_non_embedding']:,} non-embedding parameters "
                  f"(ours: {shape['ours_non_embedding']:,} total, {shape['ours_active_non_embedding']:,} active per "
                  f"token). Budget: {report['budget']['max_steps']} steps x {report['budget']['rows_per_step']} rows x "
                  f"{report['budget']['seq_len']} tokens; {report['peer']['trajectories_per_instance']} trajectories "
                  f"per instance, at most {report['budget']['step_limit']} new tokens each (ours: one rollout).",
              f"Peer preprocessing {report['peer_process_data_s']:.0f} s; generation {report['peer_generate_s']:.0f} s "
              f"for all targets."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    for flag, path in (("--data", cfg.data), ("--claims-data", cfg.claims_data), *[(f"--target {n}", p) for n, p in
                                                                                  cfg.targets.items()]):
        if not path.is_dir():
            print(f"sparseehr bench peer: {flag} {path}: no such folder", file=sys.stderr)
            return 2
    if (cfg.work / "report.json").exists() and not cfg.overwrite:
        print(f"sparseehr bench peer: {cfg.work} holds an earlier peer benchmark; pass --overwrite to replace it",
              file=sys.stderr)
        return 2
    cfg.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        report = run_bench(cfg)
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print(f"sparseehr bench peer: {error}", file=sys.stderr)
        return 1
    report["wall_time_s"] = time.perf_counter() - start
    report["load_average"] = os.getloadavg()
    table = report_markdown(report)
    (cfg.work / "report.json").write_text(json.dumps(report, indent=2))
    (cfg.work / "report.md").write_text(f"# Peer benchmark\n\n{table}\n\nwall time {report['wall_time_s']:.0f} s, "
                                        f"load average {report['load_average'][0]:.1f}\n")
    print("\n" + table)
    print(f"\nwall time {report['wall_time_s']:.0f} s; report: {cfg.work / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
