"""`sparseehr bench peer`: a public peer (MEDS_EIC_AR) trained on our pretraining corpus with our small preset's
budget, scored zero-shot on our targets by our own Recall@K code, beside our model and both baselines.

    sparseehr bench peer --system meds-eic-ar --data CLAIMS_MEDS --claims-data CLAIMS_DATA_DIR \\
        --target synthetic-mimic=MIMIC_DATA_DIR --target mimic-iv-demo=DEMO_DATA_DIR --work W

The peer runs from a virtual environment of its own (never our lock), built once in --peer-venv (default
~/.cache/sparseehr/peer/meds-eic-ar-VERSION). One run, in W (every folder below is deleted and rewritten on each
run: the peer's pipeline silently skips stages whose outputs it finds):
  peer/meds          the claims MEDS corpus (re-sharded by subject) + each target written as MEDS into held_out (our converter)
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
import sys
import time
from dataclasses import asdict
from pathlib import Path

from sparseehr.peer_setup import (
    DEFAULT_PEER_VERSION, HELD_OUT, PeerBenchConfig, TargetInputs, build_peer_inputs, ensure_peer_venv, fresh,
    matched_peer_shape, peer_env, peer_pretrain_overrides, peer_vocabulary_categories, read_trajectories, run_logged,
)

REPORT_KS = (1, 5, 10, 20)


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
    parser.add_argument("--max-steps", type=int, default=PeerBenchConfig.max_steps,
                        help=f"optimizer steps (both systems; default {PeerBenchConfig.max_steps}, the demo's recipe)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training row (both systems)")
    parser.add_argument("--micro-batch", type=int, default=PeerBenchConfig.micro_batch, help="rows per rank per step (ours)")
    parser.add_argument("--ranks", type=int, default=PeerBenchConfig.ranks,
                        help="our training processes (the demo's 2); the peer's batch is micro-batch x ranks rows")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--trajectories", type=int, default=20, help="N trajectories per instance (>= 20)")
    parser.add_argument("--step-limit", type=int, default=48, help="new tokens per rollout / trajectory (both)")
    parser.add_argument("--max-patients", type=int, default=None, help="seeded target patients per split")
    parser.add_argument("--max-instances", type=int, default=None,
                        help="score only the first this many instances of each target (smoke runs)")
    parser.add_argument("--generate-batch", type=int, default=PeerBenchConfig.generate_batch,
                        help="trajectories generated at once by the peer (its N copies of an instance are interleaved)")
    parser.add_argument("--peer-shard-subjects", type=int, default=PeerBenchConfig.peer_shard_subjects,
                        help="subjects per shard of the peer's copy of the corpus (its binning holds a shard in memory)")
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
            peer_shard_subjects=args.peer_shard_subjects, min_subjects_per_code=args.min_subjects_per_code,
            min_events_per_subject=args.min_events_per_subject, seed=args.seed, overwrite=args.overwrite,
            extra_peer_pretrain=args.peer_pretrain_override)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


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


def run_bench(cfg: PeerBenchConfig) -> dict:
    """Every stage of the benchmark; returns the report (also written to WORK/report.json and report.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
        # one generation pass covered every target: each target ranks its own subjects' rows
        subjects = pa.array(sorted(target.peer_ids.values()), pa.int64())
        own = [t.filter(pc.is_in(t.column("subject_id"), value_set=subjects)) for t in trajectories]
        rankings["peer"], peer_counts = rank_trajectories(own, target.labels, cfg.trajectories, max(ks))
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
        "targets": report_targets, "config": asdict(cfg),
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
    (cfg.work / "report.json").write_text(json.dumps(report, indent=2, default=str))   # paths as text
    table = report_markdown(report)
    (cfg.work / "report.md").write_text(f"# Peer benchmark\n\n{table}\n\nwall time {report['wall_time_s']:.0f} s, "
                                        f"load average {report['load_average'][0]:.1f}\n")
    print("\n" + table)
    print(f"\nwall time {report['wall_time_s']:.0f} s; report: {cfg.work / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
