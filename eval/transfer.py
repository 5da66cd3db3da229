"""How far a transfer target's coding lies from the pretraining corpus: the figures that decide zero-shot transfer.

- diagnoses per visit in each DATA_DIR (mean, p90), from the harmonized per-visit code lists;
- of the target's diagnosis occurrences: the share whose code the pretraining vocabulary lacks (unseen) and the
  share that is rare in pretraining (outside the codes covering 80% of training occurrences, data_pipeline.frequency);
- of the target's procedure tokens: the share that is the never-trained `PX:<unk>`.

    python -m sparseehr.eval.transfer PRETRAIN_DATA_DIR TARGET_DATA_DIR   # prints JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sparseehr.data_pipeline import schema
from sparseehr.data_pipeline.frequency import common_codes


def _visit_dx_counts(data_dir: Path) -> np.ndarray:
    from sparseehr.data_pipeline.datadir import load_patients

    counts: list[int] = []
    for split in schema.SPLITS:
        for visits in load_patients(data_dir, split)[schema.COL_VISIT_DX_CODES]:
            counts += [len(v) for v in visits]
    return np.array(counts)


def transfer_figures(pretrain_dir: Path, target_dir: Path) -> dict[str, float]:
    """Named figures of a (pretraining, target) pair of prepared DATA_DIRs (all target splits pooled)."""
    from transformers import AutoTokenizer

    from sparseehr.data_pipeline.datadir import load_patients

    train_counts = json.loads((Path(pretrain_dir) / schema.CODE_COUNTS_FILE).read_text())
    common = common_codes(train_counts)
    tokenizer = AutoTokenizer.from_pretrained(str(Path(target_dir) / schema.DATA_TOKENIZER_DIR))
    vocab = tokenizer.get_vocab()
    known_dx = {t[len(schema.DX_PREFIX):] for t in vocab if t.startswith(schema.DX_PREFIX)}
    px_ids = np.array([i for t, i in vocab.items() if t.startswith(schema.PX_PREFIX)])
    px_unk = vocab[schema.PX_UNK_TOKEN]
    n_dx = n_unseen = n_rare = n_px = n_px_unk = 0
    for split in schema.SPLITS:
        patients = load_patients(target_dir, split)
        for visits in patients[schema.COL_VISIT_DX_CODES]:
            for codes in visits:
                n_dx += len(codes)
                n_unseen += sum(c not in known_dx for c in codes)
                n_rare += sum(c not in common for c in codes)
        for ids in patients[schema.COL_INPUT_IDS]:
            ids = np.asarray(ids)
            n_px += int(np.isin(ids, px_ids).sum())
            n_px_unk += int((ids == px_unk).sum())
    pre, tgt = _visit_dx_counts(pretrain_dir), _visit_dx_counts(target_dir)
    return {"pretraining dx per visit, mean": float(pre.mean()), "pretraining dx per visit, p90": float(np.percentile(pre, 90)),
            "target dx per visit, mean": float(tgt.mean()), "target dx per visit, p90": float(np.percentile(tgt, 90)),
            "target dx occurrences unseen in pretraining, share": n_unseen / max(n_dx, 1),
            "target dx occurrences rare in pretraining (incl. unseen), share": n_rare / max(n_dx, 1),
            "target PX tokens that are PX:<unk>, share": n_px_unk / max(n_px, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparseehr.eval.transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pretrain", type=Path, help="prepared pretraining DATA_DIR")
    parser.add_argument("target", type=Path, help="prepared target DATA_DIR (prepared with --vocab-from PRETRAIN)")
    args = parser.parse_args(argv)
    for path in (args.pretrain, args.target):
        if not (path / schema.DATA_PATIENTS_DIR).is_dir():
            print(f"transfer: {path} is not a prepared DATA_DIR (no {schema.DATA_PATIENTS_DIR}/)", file=sys.stderr)
            return 2
    print(json.dumps(transfer_figures(args.pretrain, args.target), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
