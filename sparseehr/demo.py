"""`sparseehr demo`: the main job, from raw records to a zero-shot transfer report.

    synth claims (MEDS)  ─> prepare ─> train (DeepSpeed) ─> export (HF) ─┬─> in-distribution diabetes screening
    synth mimic (CSV.gz) ─> prepare --vocab-from claims ─────────────────┼─> eval next-visit + screening
    real MIMIC-IV demo   ─> prepare --vocab-from claims ─────────────────┘      (model beside both baselines)
                                          learning curve (each kept checkpoint on the synthetic target) <─┘

It ends with one table (model vs baselines: R@10, R@20 with patient-bootstrap 95% intervals, screening balanced
accuracy, for both targets and the pretraining system's own held-out patients), the learning curve, and the
paths of every report and plot. Every stage writes its own folder under --out; `--resume` skips finished stages.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sparseehr.stages import StageError, StageRunner, read_json, run_subprocess, train_command

EP_DIVIDES = 4  # the presets' expert count: ep_size must divide it

TARGET_SYNTH = "synthetic-mimic"
TARGET_DEMO = "mimic-iv-demo"
TARGET_IN_DIST = "claims-held-out"   # in-distribution screening on the pretraining system (the paper's setting)
SYSTEMS = ("model", "baseline:frequency", "baseline:history")


def default_mimic_demo() -> Path:
    """The real MIMIC-IV demo: $SPARSEEHR_MIMIC_DEMO, else ../shared/data/... beside the checkout or the cwd."""
    if os.environ.get("SPARSEEHR_MIMIC_DEMO"):
        return Path(os.environ["SPARSEEHR_MIMIC_DEMO"])
    relative = Path("shared/data/mimic-iv-demo-2.2/hosp")
    for base in (Path(__file__).resolve().parents[2], Path.cwd().parent, Path.cwd()):
        if (base / relative).is_dir():
            return base / relative
    return Path.cwd().parent / relative


@dataclass
class DemoConfig:
    """Settings of the main job. Defaults fit a 2-core CPU in about 15 minutes."""

    out: Path
    preset: str = "small"
    claims_patients: int = 20000
    mimic_patients: int = 2000
    seed: int = 0
    max_len: int = 256
    max_steps: int = 700   # what fits the 15-minute budget on a 2-core CPU with every eval stage (README)
    micro_batch: int = 16
    lr: float = 3e-3
    ranks: int = 2
    ep_size: int = 1
    eval_patients: int | None = None
    curve_points: int = 4
    curve_patients: int = 150
    step_limit: int = 24
    mimic_demo: Path | None = None
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("claims_patients", "mimic_patients", "max_len", "max_steps", "micro_batch", "ranks",
                     "ep_size", "eval_patients", "step_limit", "curve_points", "curve_patients"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.ep_size > 1 and (self.ranks % self.ep_size or EP_DIVIDES % self.ep_size):
            raise ValueError(f"--ep-size {self.ep_size} must divide --ranks {self.ranks} and the {EP_DIVIDES} experts")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: pick one")


def parse_args(argv: list[str] | None) -> DemoConfig:
    defaults = DemoConfig(out=Path("runs/demo"))
    parser = argparse.ArgumentParser(prog="sparseehr demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=defaults.out, help="job folder (default runs/demo)")
    parser.add_argument("--preset", default=defaults.preset, help="model + training preset (default small)")
    parser.add_argument("--claims-patients", type=int, default=defaults.claims_patients)
    parser.add_argument("--mimic-patients", type=int, default=defaults.mimic_patients)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-len", type=int, default=defaults.max_len, help="tokens per training window")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="optimizer steps")
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--ranks", type=int, default=defaults.ranks, help="training processes (deepspeed launcher)")
    parser.add_argument("--ep-size", type=int, default=defaults.ep_size, help="expert-parallel size")
    parser.add_argument("--eval-patients", type=int, default=defaults.eval_patients,
                        help="evaluate a seeded subset of this many patients per split of the synthetic target "
                             "(default: all)")
    parser.add_argument("--step-limit", type=int, default=defaults.step_limit, help="rollout tokens per visit")
    parser.add_argument("--curve-points", type=int, default=defaults.curve_points,
                        help="checkpoints kept (evenly spaced) and evaluated for the learning curve")
    parser.add_argument("--curve-patients", type=int, default=defaults.curve_patients,
                        help="seeded synthetic-target patients per split for each learning-curve point")
    parser.add_argument("--mimic-demo", type=Path, default=None,
                        help="real MIMIC-IV hosp folder (default: ../shared/data/mimic-iv-demo-2.2/hosp)")
    parser.add_argument("--resume", action="store_true", help="skip stages finished by an earlier run")
    parser.add_argument("--overwrite", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    return DemoConfig(**{key.replace("-", "_"): value for key, value in vars(args).items()})


# Everything a demo job writes at the top of --out (what --overwrite may delete).
DEMO_ENTRIES = {"raw", "data", "run", "hf", "eval", "train.log", "summary.json", "summary.md"}


def _in_process(main, argv: list[str]) -> int:
    print("  $ sparseehr " + " ".join(argv), flush=True)
    return main(argv)


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return the summary written to OUT/summary.json."""
    from sparseehr.data_pipeline.cli import main as prepare_main
    from sparseehr.data_pipeline.simulator.cli import main as synth_main
    from sparseehr.eval.cli import main as eval_main
    from sparseehr.launch.export import main as export_main

    out = cfg.out
    mimic_demo = cfg.mimic_demo or default_mimic_demo()
    have_demo = mimic_demo.is_dir()
    if not have_demo:
        print(f"note: the real MIMIC-IV demo was not found at {mimic_demo}; set --mimic-demo or "
              f"SPARSEEHR_MIMIC_DEMO to add it as a second target", flush=True)
    targets = {TARGET_SYNTH: out / "data" / "mimic"}
    if have_demo:
        targets[TARGET_DEMO] = out / "data" / "mimic_demo"
    stages = StageRunner(out, resume=cfg.resume, total=8 + int(have_demo) + 3 * len(targets))
    common = ["--max-len", str(cfg.max_len), "--no-progress"]

    raw_claims, raw_mimic = out / "raw" / "claims", out / "raw" / "mimic"
    stages.run("synthesize claims (pretraining system, MEDS)", raw_claims, lambda: _in_process(synth_main, [
        "--system", "claims", "--patients", str(cfg.claims_patients), "--seed", str(cfg.seed),
        "--out", str(raw_claims), "--overwrite"]))
    stages.run("synthesize mimic (transfer target, MIMIC-IV CSV)", raw_mimic, lambda: _in_process(synth_main, [
        "--system", "mimic", "--patients", str(cfg.mimic_patients), "--seed", str(cfg.seed + 1),
        "--out", str(raw_mimic), "--overwrite"]))
    claims_data = out / "data" / "claims"
    stages.run("prepare claims", claims_data, lambda: _in_process(prepare_main, [
        "--meds", str(raw_claims), "--out", str(claims_data), "--overwrite", *common]))
    stages.run("prepare synthetic mimic with the claims vocabulary", targets[TARGET_SYNTH], lambda: _in_process(
        prepare_main, ["--mimic", str(raw_mimic / "hosp"), "--vocab-from", str(claims_data),
                       "--out", str(targets[TARGET_SYNTH]), "--overwrite", *common]))
    if have_demo:
        stages.run("prepare the real MIMIC-IV demo with the claims vocabulary", targets[TARGET_DEMO],
                   lambda: _in_process(prepare_main, [
                       "--mimic", str(mimic_demo), "--vocab-from", str(claims_data),
                       "--out", str(targets[TARGET_DEMO]), "--overwrite", *common]))

    run_dir, hf_dir = out / "run", out / "hf"
    train_args = ["--preset", cfg.preset, "--data", str(claims_data), "--out", str(run_dir),
                  "--max-steps", str(cfg.max_steps), "--seq-len", str(cfg.max_len),
                  "--micro-batch", str(cfg.micro_batch), "--lr", str(cfg.lr), "--seed", str(cfg.seed),
                  "--ep-size", str(cfg.ep_size), "--resume",
                  # evenly spaced checkpoints, all kept: the learning curve evaluates each of them
                  "--ckpt-interval", str(max(cfg.max_steps // cfg.curve_points, 1)),
                  "--keep-last", str(cfg.curve_points + 1)]
    if cfg.ep_size > 1:
        train_args += ["--deepspeed", "zero2_ep.json"]
    stages.run(f"train the {cfg.preset} hybrid MoE with DeepSpeed ({cfg.ranks} rank(s), ep={cfg.ep_size})",
               run_dir, lambda: run_subprocess(train_command(cfg.ranks, train_args), out / "train.log"))
    stages.run("export to Hugging Face", hf_dir, lambda: _in_process(export_main, [
        "--run", str(run_dir), "--out", str(hf_dir), "--overwrite"]))  # only ever its own earlier export

    from sparseehr.curve import main as curve_main

    curve_dir = out / "eval" / TARGET_SYNTH / "curve"
    stages.run(f"learning curve on {TARGET_SYNTH} (each kept checkpoint, {cfg.curve_patients} patients/split)",
               curve_dir, lambda: _in_process(curve_main, [
                   "--run", str(run_dir), "--data", str(targets[TARGET_SYNTH]), "--out", str(curve_dir),
                   "--max-patients", str(cfg.curve_patients), "--step-limit", str(cfg.step_limit),
                   "--seed", str(cfg.seed)]))
    # In distribution, as the paper screens: the pretraining system's own held-out patients, k_cls chosen on its
    # validation split and tested on its test split (never seen in training).
    in_dist_dir = out / "eval" / TARGET_IN_DIST / "screening"
    stages.run(f"{TARGET_IN_DIST}: diabetes screening (select on validation, test on test)", in_dist_dir,
               lambda: _in_process(eval_main, [
                   "screening", "--model", str(hf_dir), "--data", str(claims_data), "--out", str(in_dist_dir),
                   "--select-on", "validation", "--test-on", "test", "--step-limit", str(cfg.step_limit),
                   "--seed", str(cfg.seed)]))

    reports: dict[str, dict[str, Path]] = {}
    for target, data_dir in targets.items():
        # Zero-shot: the model never saw any split of a target, so all splits are pooled (docs/eval.md).
        subset = ["--max-patients", str(cfg.eval_patients)] if target == TARGET_SYNTH and cfg.eval_patients else []
        next_visit_dir = out / "eval" / target / "next-visit"
        screening_dir = out / "eval" / target / "screening"
        routing_dir = out / "eval" / target / "routing"
        scoring = ["--step-limit", str(cfg.step_limit), "--seed", str(cfg.seed), *subset]
        stages.run(f"{target}: next-visit Recall@K (model + baselines)", next_visit_dir, lambda: _in_process(
            eval_main, ["next-visit", "--model", str(hf_dir), "--data", str(data_dir), "--out",
                        str(next_visit_dir), "--split", "train", "validation", "test", *scoring]))
        stages.run(f"{target}: diabetes screening", screening_dir, lambda: _in_process(eval_main, [
            "screening", "--model", str(hf_dir), "--data", str(data_dir), "--out", str(screening_dir),
            "--select-on", "train", "--test-on", "validation", "test", *scoring]))
        stages.run(f"{target}: routing analysis", routing_dir, lambda: _in_process(eval_main, [
            "routing", "--model", str(hf_dir), "--data", str(data_dir), "--out", str(routing_dir),
            "--split", "train", "validation", "test", *subset]))
        reports[target] = {"next_visit": next_visit_dir, "screening": screening_dir, "routing": routing_dir}

    summary = summarize(reports)
    summary["in_distribution_screening"] = summarize_screening(in_dist_dir)
    summary["curve"] = read_json(curve_dir / "curve.json")
    summary["reports"][TARGET_IN_DIST] = {"screening": str(in_dist_dir)}
    summary["reports"][TARGET_SYNTH]["curve"] = str(curve_dir)
    summary["timings_s"] = stages.timings
    summary["config"] = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(cfg).items()}
    return summary


def _metric(report: dict, system: str, *keys: str):
    """A metric of the evaluated model (system 'model') or of a baseline inside the same report."""
    node = report if system == "model" else report.get("baselines", {}).get(system, {})
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def summarize_screening(screening_dir: Path) -> list[dict]:
    """In-distribution screening rows: BA with its bootstrap interval, AUROC, k_cls, cases, per system."""
    report = read_json(screening_dir / "report.json")
    return [{"system": system,
             "balanced_accuracy": _metric(report, system, "test", "balanced_accuracy"),
             "balanced_accuracy_ci": _metric(report, system, "test", "balanced_accuracy_ci"),
             "auroc": _metric(report, system, "test", "auroc"),
             "k_cls": _metric(report, system, "k_cls"),
             "n_cases": _metric(report, "model", "cohort", "test", "n_cases")} for system in SYSTEMS]


def summarize(reports: dict[str, dict[str, Path]]) -> dict:
    """One row per (target, system): R@10, R@20, screening balanced accuracy, plus report paths."""
    rows = []
    for target, paths in reports.items():
        next_visit = read_json(paths["next_visit"] / "report.json")
        screening = read_json(paths["screening"] / "report.json")
        for system in SYSTEMS:
            rows.append({
                "target": target,
                "system": system,
                "recall_at_10": _metric(next_visit, system, "recall_at_k", "10"),
                "recall_at_20": _metric(next_visit, system, "recall_at_k", "20"),
                "recall_at_10_ci": _metric(next_visit, system, "recall_at_k_ci", "10"),
                "recall_at_20_ci": _metric(next_visit, system, "recall_at_k_ci", "20"),
                "screening_balanced_accuracy": _metric(screening, system, "test", "balanced_accuracy"),
                "screening_k_cls": _metric(screening, system, "k_cls"),
                "n_instances": next_visit.get("n_instances"),
                "n_screening_cases": _metric(screening, "model", "cohort", "test", "n_cases"),
            })
    paths = {target: {kind: str(path) for kind, path in value.items()} for target, value in reports.items()}
    return {"rows": rows, "reports": paths}


def format_table(summary: dict) -> str:
    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def with_ci(value, ci) -> str:
        return cell(value) if not ci else f"{cell(value)} [{ci[0]:.3f}, {ci[1]:.3f}]"

    lines = ["| target | system | R@10 [95% CI] | R@20 [95% CI] | screening BA (k_cls) | instances | screening cases |",
             "|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        k_cls = row["screening_k_cls"]
        lines.append(f"| {row['target']} | {row['system']} | {with_ci(row['recall_at_10'], row.get('recall_at_10_ci'))} | "
                     f"{with_ci(row['recall_at_20'], row.get('recall_at_20_ci'))} | "
                     f"{cell(row['screening_balanced_accuracy'])}"
                     f"{'' if k_cls is None else f' ({k_cls})'} | {row['n_instances']} | {row['n_screening_cases']} |")
    if summary.get("in_distribution_screening"):
        lines += ["", f"In-distribution diabetes screening ({TARGET_IN_DIST}: the pretraining system's test patients, "
                      "k_cls chosen on its validation split, 1:1 controls):", "",
                  "| system | BA [95% CI] | AUROC | k_cls | test cases |", "|---|---|---|---|---|"]
        for row in summary["in_distribution_screening"]:
            lines.append(f"| {row['system']} | {with_ci(row['balanced_accuracy'], row['balanced_accuracy_ci'])} | "
                         f"{cell(row['auroc'])} | {row['k_cls']} | {row['n_cases']} |")
    if summary.get("curve"):
        from sparseehr.curve import curve_markdown

        lines += ["", f"Learning curve on {TARGET_SYNTH} (subset per point; see curve.md / curve.png):", "",
                  curve_markdown(summary["curve"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except ValueError as error:
        print(f"sparseehr demo: {error}", file=sys.stderr)
        return 2
    if cfg.out.exists() and any(cfg.out.iterdir()) and not (cfg.resume or cfg.overwrite):
        print(f"sparseehr demo: {cfg.out} exists; pass --resume to continue it or --overwrite to start over",
              file=sys.stderr)
        return 2
    if cfg.overwrite and cfg.out.exists():
        foreign = sorted(p.name for p in cfg.out.iterdir() if p.name not in DEMO_ENTRIES) if cfg.out.is_dir() else [
            cfg.out.name]
        if foreign:  # --overwrite deletes a previous demo job, never a folder holding anything else
            print(f"sparseehr demo: --overwrite: {cfg.out} holds {', '.join(foreign[:5])}, which a demo job does "
                  f"not write; refusing to delete it (choose another --out)", file=sys.stderr)
            return 2
        shutil.rmtree(cfg.out)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        summary = run_demo(cfg)
    except StageError as error:
        print(f"sparseehr demo: {error}", file=sys.stderr)
        return 1
    summary["wall_time_s"] = time.perf_counter() - start
    table = format_table(summary)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (cfg.out / "summary.md").write_text(f"# SparseEHR demo\n\n{table}\n\nwall time {summary['wall_time_s']:.0f} s\n")
    print("\n" + table)
    print(f"\nwall time {summary['wall_time_s']:.0f} s; summary: {cfg.out / 'summary.md'}")
    for target, paths in summary["reports"].items():
        for kind, path in paths.items():
            plots = ", ".join(sorted(p.name for p in Path(path).glob("*.png")))
            print(f"  {target} {kind}: {path}/report.md{f'  plots: {plots}' if plots else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
