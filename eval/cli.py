"""`sparseehr eval next-visit | screening | routing`: evaluations of an HF_DIR (or a baseline) on a DATA_DIR.

Every report holds the model (or the baseline named by --model) beside both baselines on the same instances.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from sparseehr.data_pipeline import schema
from sparseehr.data_pipeline.artifacts import DATA_DIR, EVAL_OUT_DIR, OutputDirError, artifact_kind, check_output_dir
from sparseehr.eval import baselines
from sparseehr.eval.cohort import build_screening_cohort
from sparseehr.data_pipeline.frequency import DEFAULT_COMMON_COVERAGE, common_codes
from sparseehr.eval.instances import build_instances, load_splits
from sparseehr.eval.nextvisit import DEFAULT_KS, evaluate_rankings, target_vocabulary_summary
from sparseehr.eval.report import (REPORT_JSON, REPORT_MD, json_writer, markdown_table, recall_plot_writer,
                                   sweep_plot_writer, text_writer, write_outputs)
from sparseehr.eval.screening import DEFAULT_K_CLS, evaluate_screening, predictions_table

RECALL_PLOT = "recall_at_k.png"
SELECT, TEST = "validation", "test"      # cohort roles in the screening report (k_cls choice, final metrics)
SWEEP_PLOT = "screening_sweep.png"


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help=f"HF_DIR (save_pretrained + tokenizer) or one of {', '.join(baselines.BASELINE_NAMES)}")
    parser.add_argument("--data", required=True, type=Path, help="DATA_DIR written by `sparseehr prepare`")
    parser.add_argument("--out", required=True, type=Path, help="OUT_DIR for report.json, report.md and plots")
    parser.add_argument("--max-patients", type=int, default=None,
                        help="evaluate a seeded random subset of this many patients per split (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seeds patient subsets, cohorts, bootstrap, sampling")
    parser.add_argument("--device", default=None, help="torch device for the model (default: cuda if available)")


def _add_scoring(parser: argparse.ArgumentParser) -> None:
    from sparseehr.eval.scorers import SCORING_MODES
    parser.add_argument("--scoring", choices=SCORING_MODES, default="rollout",
                        help="rollout (default, the paper's), first-step, or sampled")
    parser.add_argument("--samples", type=int, default=None,
                        help="rollouts per instance, only with --scoring sampled (default 10)")
    parser.add_argument("--step-limit", type=int, default=48, help="max new tokens per rollout")
    parser.add_argument("--batch-size", type=int, default=16, help="instances per generation batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    nv = sub.add_parser("next-visit", help="next-visit ICD-10 Recall@K, rare/common split, beside baselines")
    _add_common(nv)
    _add_scoring(nv)
    nv.add_argument("--split", choices=schema.SPLITS, nargs="+", default=[schema.SPLIT_TEST],
                    help="split(s) to evaluate (several are pooled: e.g. all three for a zero-shot target)")
    nv.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="cut-offs K")
    nv.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (patients resampled)")
    nv.add_argument("--common-coverage", type=float, default=DEFAULT_COMMON_COVERAGE,
                    help="common codes = most frequent training codes covering this share of occurrences")

    sc = sub.add_parser("screening", help="diabetes (E08-E13) screening from next-visit rankings")
    _add_common(sc)
    _add_scoring(sc)
    sc.add_argument("--k-cls", type=int, nargs="+", default=list(DEFAULT_K_CLS), help="k_cls grid")
    sc.add_argument("--controls-per-case", type=float, default=1.0, help="controls per case (1.0 = balanced)")
    sc.add_argument("--select-on", choices=schema.SPLITS, nargs="+", default=[schema.SPLIT_VALIDATION],
                    help="split(s) whose cohort chooses k_cls (default validation)")
    sc.add_argument("--test-on", choices=schema.SPLITS, nargs="+", default=[schema.SPLIT_TEST],
                    help="split(s) whose cohort is tested (default test); must not overlap --select-on")

    ro = sub.add_parser("routing", help="per MoE layer and expert: routed tokens by token type and ICD-10 chapter")
    ro.add_argument("--model", required=True, type=Path, help="HF_DIR")
    ro.add_argument("--data", required=True, type=Path)
    ro.add_argument("--out", required=True, type=Path)
    ro.add_argument("--split", choices=schema.SPLITS, nargs="+", default=[schema.SPLIT_TEST])
    ro.add_argument("--max-patients", type=int, default=None)
    ro.add_argument("--batch-size", type=int, default=8)
    ro.add_argument("--seed", type=int, default=0)
    ro.add_argument("--device", default=None)
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for name in ("k", "k_cls"):
        values = getattr(args, name, None)
        if values is not None and (min(values) < 1 or len(set(values)) != len(values)):
            parser.error(f"--{name.replace('_', '-')} values must be distinct integers >= 1")
    if getattr(args, "max_patients", None) is not None and args.max_patients < 1:
        parser.error("--max-patients must be >= 1")
    if getattr(args, "samples", None) is not None and args.scoring != "sampled":
        parser.error("--samples applies only to --scoring sampled")
    if getattr(args, "scoring", None) == "sampled" and args.samples is None:
        args.samples = 10
    if getattr(args, "select_on", None) and set(args.select_on) & set(args.test_on):
        parser.error("--select-on and --test-on must not share a split (k_cls would be chosen on test data)")
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such DATA_DIR")
    kind = artifact_kind(args.data)
    if kind != DATA_DIR:
        parser.error(f"--data {args.data} holds {kind or 'no DATA_DIR files'}, not a DATA_DIR: run `sparseehr "
                     f"prepare` on it first")
    model_dir = None if str(args.model) in baselines.BASELINE_NAMES else Path(args.model)
    try:  # every output path is checked here, before any instance is built or scored
        check_output_dir(args.out, EVAL_OUT_DIR, inputs=[("--model", model_dir), ("--data", args.data)])
    except OutputDirError as error:
        parser.error(str(error))


def check_model_before_scoring(args: argparse.Namespace) -> None:
    """Weights complete and matching config.json, vocabulary the same as the data's: minutes of scoring are never
    spent before a damaged or mismatched model is found."""
    if str(args.model) in baselines.BASELINE_NAMES:
        return
    from sparseehr.data_pipeline.datadir import load_tokenizer
    from sparseehr.eval.scorers import check_model_weights, check_same_vocabulary

    check_model_weights(args.model)
    check_same_vocabulary(args.model, load_tokenizer(args.data), args.data)


# ------------------------------------------------------------------------------------------------------------
# Shared set-up
# ------------------------------------------------------------------------------------------------------------
def make_systems(args: argparse.Namespace, counts: dict[str, int]) -> tuple[object, dict, dict]:
    """(primary scorer, baseline scorers by name, scoring description)."""
    baseline_scorers = {name: baselines.make_baseline(name, counts) for name in baselines.BASELINE_NAMES}
    if args.model in baselines.BASELINE_NAMES:
        return baseline_scorers[args.model], baseline_scorers, {"mode": "baseline"}
    import torch

    from sparseehr.data_pipeline.datadir import load_tokenizer
    from sparseehr.eval.scorers import ModelScorer, ScoringConfig, check_same_vocabulary, load_model

    model_dir = Path(args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.data)
    check_same_vocabulary(model_dir, tokenizer, args.data)
    config = ScoringConfig(mode=args.scoring, step_limit=args.step_limit, samples=args.samples or 1,
                           batch_size=args.batch_size, seed=args.seed)
    scorer = ModelScorer(load_model(model_dir, device), tokenizer, config, name=str(model_dir))
    return scorer, baseline_scorers, config.describe()


def _rank_all(primary, baseline_scorers: dict, instances, top_n: int) -> dict[str, list]:
    rankings = {"model": primary.rank(instances, top_n)}
    for name, scorer in baseline_scorers.items():
        rankings[name] = rankings["model"] if scorer is primary else scorer.rank(instances, top_n)
    return rankings


def _scorer_vocabulary(scorer, counts: dict[str, int]) -> set[str]:
    return scorer.vocabulary if hasattr(scorer, "vocabulary") else set(counts)


# ------------------------------------------------------------------------------------------------------------
# next-visit
# ------------------------------------------------------------------------------------------------------------
def run_next_visit(args: argparse.Namespace) -> int:
    from sparseehr.data_pipeline.datadir import load_train_code_counts

    counts = load_train_code_counts(args.data)
    built = build_instances(load_splits(args.data, args.split, args.max_patients, args.seed))
    primary, baseline_scorers, scoring = make_systems(args, counts)
    ks = sorted(args.k)
    common = common_codes(counts, args.common_coverage)
    rankings = _rank_all(primary, baseline_scorers, built.instances, max(ks))
    blocks = {name: evaluate_rankings(built.instances, r, ks, common, args.bootstrap, args.seed)
              for name, r in rankings.items()}
    report = {
        "task": "next-visit", "model": args.model, "data": str(args.data), "split": "+".join(args.split), "ks": ks,
        "scoring": scoring, "n_instances": len(built.instances), "n_patients": built.n_patients,
        "n_patients_in_split": built.n_patients_seen, "n_pairs_without_dx_target": built.n_pairs_without_dx_target,
        "targets": target_vocabulary_summary(built.instances, _scorer_vocabulary(primary, counts)),
        "common_coverage": args.common_coverage, "n_common_codes": len(common),
        "instances_per_s": getattr(primary, "last_instances_per_s", None),
        **blocks["model"],
        "baselines": {name: blocks[name] for name in baselines.BASELINE_NAMES},
    }
    curves = {"model" if args.model not in baselines.BASELINE_NAMES else args.model: blocks["model"],
              **{name: blocks[name] for name in baselines.BASELINE_NAMES if name != args.model}}
    write_outputs(args.out, {
        REPORT_JSON: json_writer(report),
        REPORT_MD: text_writer(next_visit_markdown(report, ks)),
        RECALL_PLOT: recall_plot_writer(ks, curves, f"Next-visit Recall@K ({'+'.join(args.split)})"),
    })
    print(f"[eval] next-visit report: {args.out / REPORT_JSON}")
    return 0


def describe(settings: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def next_visit_markdown(report: dict, ks: Sequence[int]) -> str:
    systems = {"model": report, **report["baselines"]}
    targets = report["targets"]
    lines = [f"# Next-visit evaluation: {report['model']}", "",
             f"Data `{report['data']}` split `{report['split']}`: {report['n_instances']} instances from "
             f"{report['n_patients']} patients; scoring: {describe(report['scoring'])}.",
             f"Target codes: {targets['n_target_codes']}, of which {targets['n_out_of_vocabulary']} are outside "
             f"the scorer's vocabulary (kept in Y, counted as misses).", "",
             "## Recall@K (mean over instances, 95% patient-bootstrap interval)", "",
             markdown_table(["system"] + [f"R@{k}" for k in ks],
                            [[name] + [f"{b['recall_at_k'][str(k)]:.3f} [{b['recall_at_k_ci'][str(k)][0]:.3f}, "
                                       f"{b['recall_at_k_ci'][str(k)][1]:.3f}]" for k in ks]
                             for name, b in systems.items()]), "",
             "## Micro Recall@K (total hits / total target codes)", "",
             markdown_table(["system"] + [f"R@{k}" for k in ks],
                            [[name] + [b["recall_at_k_micro"][str(k)] for k in ks] for name, b in systems.items()]),
             "", f"## Rare and common codes (common = top codes covering {report['common_coverage']:.0%} of training "
             f"diagnosis occurrences, {report['n_common_codes']} codes)", ""]
    for name, block in systems.items():
        rare, common = block["rare_common"]["rare"], block["rare_common"]["common"]
        lines += [f"### {name}", "", markdown_table(
            ["K", "overall", f"rare (n={rare['n_instances']})", f"common (n={common['n_instances']})"],
            [[k, block["recall_at_k"][str(k)], rare["recall_at_k"][str(k)], common["recall_at_k"][str(k)]]
             for k in ks]), ""]
    lines += ["## Codes the patient already had vs new codes", "",
              "Micro recall (hits / target codes) on the target codes seen at an earlier visit of the patient and on "
              "the rest: the first is what copying the history reaches, the second what only a model of how "
              "conditions evolve reaches.", ""]
    split_ks = [k for k in ks if k in (10, 20)]
    parts = (("in_history", "seen"), ("new", "new"))
    rows = [[name] + [block["history_split"][part]["recall_at_k_micro"][str(k)] for part, _ in parts for k in split_ks]
            for name, block in systems.items()]
    counts = report["history_split"]
    lines += [markdown_table(["system"] + [f"{label} R@{k}" for _, label in parts for k in split_ks], rows), "",
              f"Target codes seen before: {counts['in_history']['n_target_codes']}; new: "
              f"{counts['new']['n_target_codes']}.", ""]
    lines += [f"![Recall@K]({RECALL_PLOT})", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# screening
# ------------------------------------------------------------------------------------------------------------
def _prediction_file(name: str) -> str:
    return f"predictions/{name.replace(':', '_')}.parquet"


def run_screening(args: argparse.Namespace) -> int:
    from sparseehr.data_pipeline.datadir import load_train_code_counts

    counts = load_train_code_counts(args.data)
    cohorts = {}
    for role, splits in ((SELECT, args.select_on), (TEST, args.test_on)):
        instances = build_instances(load_splits(args.data, splits, args.max_patients, args.seed)).instances
        cohorts[role] = build_screening_cohort(instances, args.controls_per_case, args.seed)
        print(f"[eval] screening cohort {role} ({'+'.join(splits)}): {cohorts[role].summary()}", flush=True)
        if cohorts[role].n_cases == 0:
            print(f"[eval] warning: no diabetes case in {'+'.join(splits)}: screening metrics there are undefined",
                  flush=True)
    primary, baseline_scorers, scoring = make_systems(args, counts)
    k_grid = sorted(args.k_cls)
    ranked = {split: _rank_all(primary, baseline_scorers, cohort.instances, max(k_grid))
              for split, cohort in cohorts.items()}
    results = {name: evaluate_screening(cohorts[SELECT], ranked[SELECT][name], cohorts[TEST], ranked[TEST][name],
                                        k_grid)
               for name in ranked[TEST]}
    report = {
        "task": "screening", "model": args.model, "data": str(args.data), "scoring": scoring,
        "cohort": {"definition": "cases: first visit with E08-E13, none before; controls: patients never coded "
                                 "E08-E13, one instance each", "controls_per_case": args.controls_per_case,
                   "seed": args.seed, "validation_splits": args.select_on, "test_splits": args.test_on,
                   **{role: c.summary() for role, c in cohorts.items()}},
        "k_cls_grid": k_grid, **results["model"],
        "baselines": {name: results[name] for name in baselines.BASELINE_NAMES},
    }
    writers = {REPORT_JSON: json_writer(report), REPORT_MD: text_writer(screening_markdown(report)),
               SWEEP_PLOT: sweep_plot_writer({name: r["validation_sweep"] for name, r in results.items()
                                              if not (name == "model" and args.model in baselines.BASELINE_NAMES)},
                                             "Diabetes screening: validation sweep")}
    for name, result in results.items():
        table = predictions_table(cohorts[TEST], ranked[TEST][name], result["k_cls"])
        writers[_prediction_file(name)] = lambda path, t=table: pq.write_table(t, path)
    write_outputs(args.out, writers)
    print(f"[eval] screening report: {args.out / REPORT_JSON}")
    return 0


def screening_markdown(report: dict) -> str:
    systems = {"model": report, **report["baselines"]}
    cohort = report["cohort"]
    keys = ("precision", "recall", "accuracy", "f1", "balanced_accuracy")
    lines = [f"# Diabetes screening (ICD-10-CM E08-E13): {report['model']}", "",
             f"Cohort ({cohort['controls_per_case']} controls per case, seed {cohort['seed']}): validation "
             f"{describe(cohort['validation'])}; test {describe(cohort['test'])}.",
             f"Scoring: {describe(report['scoring'])}.", "",
             "## Validation sweep of k_cls (model)", "",
             markdown_table(["k_cls", "P", "R", "Acc", "F1", "BA"],
                            [[row["k_cls"]] + [row[k] for k in keys] for row in report["validation_sweep"]]), "",
             "## Test at the chosen k_cls", "",
             markdown_table(["system", "k_cls", "Acc", "P", "R", "F1", "BA", "AUROC", "AUPRC"],
                            [[name, r["k_cls"]] + [r["test"][k] for k in ("accuracy", "precision", "recall", "f1",
                                                                          "balanced_accuracy", "auroc", "auprc")]
                             for name, r in systems.items()]), "",
             f"k_cls choice (model): {report['k_cls_selection']}.", "", f"![sweep]({SWEEP_PLOT})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    started = time.perf_counter()
    try:
        check_model_before_scoring(args)
        if args.command == "next-visit":
            code = run_next_visit(args)
        elif args.command == "screening":
            code = run_screening(args)
        else:
            from sparseehr.eval.routing import run_routing
            code = run_routing(args)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"sparseehr eval {args.command}: error: {error}", file=sys.stderr)
        return 1
    print(f"[eval] {args.command} done in {time.perf_counter() - started:.1f}s")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
