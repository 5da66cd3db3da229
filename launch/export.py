"""`sparseehr export`: a DeepSpeed checkpoint (any expert-parallel size) -> one Hugging Face folder.

DeepSpeed writes the non-expert weights to TAG/mp_rank_00_model_states.pt and each expert of each MoE layer to
TAG/layer_{L}_expert_{G}_mp_rank_00_model_states.pt with the GLOBAL expert id G already in the key names. Their
union is exactly the ep=1 state_dict (DEEPSPEED_MOE.md item 8); we check that no key is missing or duplicated,
load it into a model built from the run's config with expert_parallel_size=1, and save_pretrained it together
with the run's tokenizer. Everything is written to a temporary folder first and renamed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from sparseehr.data_pipeline.artifacts import (
    EXPORT_INFO_FILE, HF_DIR, RUN_DIR, OutputDirError, artifact_kind, check_output_dir, remove_replaced,
    vocabulary_hash,
)
from sparseehr.launch import rundir
from sparseehr.launch.engine import complete_tied_weights


class ExportError(RuntimeError):
    pass


def merge_checkpoint_state_dict(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """Main file + every expert file of one tag -> one full (ep=1) state_dict."""
    tag_dir = Path(tag_dir)
    main_path = tag_dir / rundir.MAIN_STATES_FILE
    if not main_path.is_file():
        raise ExportError(f"{main_path}: missing; {tag_dir} is not a complete DeepSpeed checkpoint")
    main = torch.load(main_path, map_location="cpu", weights_only=False)
    if "module" not in main or not isinstance(main["module"], dict):
        raise ExportError(f"{main_path}: no 'module' state_dict inside (keys: {sorted(main)[:10]})")
    merged: dict[str, torch.Tensor] = dict(main["module"])
    for path in sorted(tag_dir.iterdir()):
        if not rundir.EXPERT_FILE_PATTERN.match(path.name):
            continue
        part = torch.load(path, map_location="cpu", weights_only=False)
        clash = sorted(set(part) & set(merged))
        if clash:
            raise ExportError(f"{path}: keys already present in another checkpoint file: {clash[:5]}")
        merged.update(part)
    return merged


def build_model_from_full_state_dict(config, state_dict: dict[str, torch.Tensor], source: str):
    """An ep=1 SparseEHRForCausalLM holding exactly state_dict (strict: missing/unexpected keys are errors)."""
    from sparseehr.model import SparseEHRForCausalLM

    config.expert_parallel_size = 1
    model = SparseEHRForCausalLM(config)
    state_dict = complete_tied_weights(state_dict, config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ExportError(f"{source}: state_dict does not match the model "
                          f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                          f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})")
    model.load_state_dict(state_dict, strict=True)
    return model


def export_run(run_dir: str | Path, out_dir: str | Path, tag: str | None = None,
               overwrite: bool = False) -> Path:
    """Merge RUN_DIR's checkpoint `tag` (default: latest) into HF_DIR `out_dir`. An existing non-empty out_dir is
    only replaced with overwrite=True and only when it is a previous export; never the run or a folder holding it."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    kind = artifact_kind(run_dir)
    if kind not in (RUN_DIR, None):
        raise ExportError(f"--run {run_dir} holds {kind}, not a training RUN_DIR")
    check_output_dir(out_dir, HF_DIR, overwrite, [("--run", run_dir)])
    tag = tag or rundir.read_latest_tag(run_dir)
    if tag is None:
        raise ExportError(f"{run_dir}: no checkpoint (no 'latest' file); pass --tag or train first")
    tag_dir = run_dir / tag
    if not tag_dir.is_dir():
        raise ExportError(f"{tag_dir}: no such checkpoint tag")
    config = rundir.load_model_config(run_dir)
    model = build_model_from_full_state_dict(config, merge_checkpoint_state_dict(tag_dir), str(tag_dir))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer = rundir.load_tokenizer(run_dir, missing_ok=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
            # What eval checks when a copy of HF_DIR lost its tokenizer files: ids must mean the same tokens.
            (staging / EXPORT_INFO_FILE).write_text(json.dumps({
                "run": str(run_dir), "tag": tag, "vocab_size": len(tokenizer),
                "tokenizer_vocab_sha256": vocabulary_hash(tokenizer.get_vocab())}, indent=2) + "\n")
        trash = None
        if out_dir.exists():  # a previous export (check_output_dir refused anything else)
            trash = out_dir.parent / f".{out_dir.name}.old-{staging.name.rsplit('.', 1)[-1]}"
            os.replace(out_dir, trash)
        os.replace(staging, out_dir)
        if trash is not None:
            remove_replaced(trash)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr export", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="RUN_DIR of a training run")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the one in RUN_DIR/latest)")
    parser.add_argument("--out", required=True, help="HF_DIR to write (save_pretrained + tokenizer)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it is a previous export")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run, args.out, args.tag, args.overwrite)
    except OutputDirError as exc:
        print(f"sparseehr export: error: {exc}", file=sys.stderr)
        return 2
    except (ExportError, rundir.RunDirError, FileNotFoundError, ValueError) as exc:
        print(f"sparseehr export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.run} ({args.tag or 'latest'}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
