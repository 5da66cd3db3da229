"""Clinical utility of a finished sweep point, through sparseehr.eval's own code path.

The point's last checkpoint is exported (sparseehr.launch.export) to a temporary HF_DIR and scored as
`sparseehr eval` scores a model: instances from a seeded subset of the *validation* patients
(eval.instances.load_splits / build_instances), rollout scoring (eval.scorers.ModelScorer, the paper's mode),
Recall@10/@20 as the mean over instances (eval.metrics.recall_matrix / mean_recall: the `recall_at_k` of an eval
report), and the diabetes-screening AUROC of the continuous diabetes score (eval.cohort.build_screening_cohort,
eval.metrics.auroc) over the cohort drawn from those same instances, so one rollout pass serves both. The AUROC
is null where the subset holds no case or no control. A subset keeps it cheap: every point of a sweep pays it.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparseehr.scaling.table import UTILITY

KS = (10, 20)


@dataclass(frozen=True)
class UtilityConfig:
    """patients: validation patients scored per point (0 = measure nothing, the fields stay null)."""

    patients: int = 64
    step_limit: int = 24       # new tokens per rollout; the eval CLI's 48 doubles the cost for ~no change in R@20
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patients < 0:
            raise ValueError(f"utility patients must be >= 0, got {self.patients}")
        if self.step_limit < 1 or self.batch_size < 1:
            raise ValueError("utility step_limit and batch_size must be >= 1")


def empty_utility() -> dict[str, Any]:
    return {name: None for name in UTILITY}


def measure_utility(run_dir: Path, data_dir: Path, config: UtilityConfig) -> dict[str, Any]:
    """recall_at_10, recall_at_20, screening_auroc (or None) and how they were measured, for RUN_DIR's last
    checkpoint on DATA_DIR's validation split."""
    if config.patients == 0:
        return empty_utility()
    import numpy as np

    from sparseehr.data_pipeline import schema
    from sparseehr.data_pipeline.datadir import load_tokenizer
    from sparseehr.eval.cohort import build_screening_cohort
    from sparseehr.eval.instances import build_instances, load_splits
    from sparseehr.eval.metrics import auroc, mean_recall, recall_matrix
    from sparseehr.eval.scorers import ModelScorer, ScoringConfig, check_same_vocabulary, load_model
    from sparseehr.launch.export import export_run

    started = time.perf_counter()
    instances = build_instances(load_splits(data_dir, [schema.SPLIT_VALIDATION], config.patients,
                                            config.seed)).instances
    if not instances:
        raise ValueError(f"{data_dir}: {config.patients} validation patients give no next-visit instance")
    staging = Path(tempfile.mkdtemp(prefix=".utility-", dir=run_dir.parent))
    try:  # the weights stay in RUN_DIR's checkpoint; the HF copy lives only while it is scored
        hf_dir = export_run(run_dir, staging / "hf")
        check_same_vocabulary(hf_dir, load_tokenizer(data_dir), data_dir)
        scorer = ModelScorer(load_model(hf_dir, "cpu"), load_tokenizer(data_dir),
                             ScoringConfig(mode="rollout", step_limit=config.step_limit,
                                           batch_size=config.batch_size, seed=config.seed), name=run_dir.name)
        rankings = scorer.rank(instances, max(KS))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    hits, sizes = recall_matrix([r.top_codes for r in rankings], [inst.targets for inst in instances], KS)
    recall = mean_recall(hits, sizes)
    cohort = build_screening_cohort(instances, 1.0, config.seed)
    ranking_of = {id(inst): ranking for inst, ranking in zip(instances, rankings)}
    screening = None
    if cohort.n_cases and cohort.n_controls:
        value = auroc(cohort.labels, np.array([ranking_of[id(inst)].diabetes_score for inst in cohort.instances]))
        screening = None if math.isnan(value) else float(value)
    return {"recall_at_10": float(recall[0]), "recall_at_20": float(recall[1]), "screening_auroc": screening,
            "utility": {**asdict(config), "split": schema.SPLIT_VALIDATION, "scoring": "rollout",
                        "n_patients": len({inst.subject_id for inst in instances}), "n_instances": len(instances),
                        "screening_cases": cohort.n_cases, "screening_controls": cohort.n_controls,
                        "wall_s": time.perf_counter() - started}}
