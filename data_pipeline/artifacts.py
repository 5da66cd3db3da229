"""What kind of folder is this? One rule, used by every command that writes an output folder.

Each stage of the data flow writes one kind of folder (DATA_DIR, RUN_DIR, HF_DIR, an evaluation OUT_DIR, a
synthetic MIMIC-IV or MEDS tree). A kind is recognised by files only its writer puts there, never by name. Before
any expensive work, a writer calls `check_output_dir`, which refuses:

- an output path that is a file, or whose parent (or any ancestor) is a file;
- an output that is one of the command's inputs, or (for writers that replace the whole folder) contains one;
- a folder holding a different artefact kind (a DATA_DIR is never a RUN_DIR, raw MIMIC is never replaced);
- for writers that replace the whole folder (prepare, export, synth): a non-empty folder unless `overwrite`, and
  even then only a folder of the same kind (a previous DATA_DIR, a previous export, a previous synth output).

Writers that add files in place (train appends to its RUN_DIR, eval replaces its own report files) accept an
existing folder of their own kind or one holding no recognised artefact; they never delete what they did not write.
This module lives in data_pipeline so that launch and eval can import it (the reverse is not allowed).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from sparseehr.data_pipeline.schema import (
    DATA_PATIENTS_DIR, DATA_TOKENIZER_DIR, DATA_WINDOWS_DIR, HARMONIZATION_FILE, PREPARE_REPORT_FILE,
)

DATA_DIR, RUN_DIR, HF_DIR, EVAL_OUT_DIR, MIMIC_INPUT, MEDS_INPUT = (
    "DATA_DIR", "RUN_DIR", "HF_DIR", "eval OUT_DIR", "raw MIMIC-IV hosp tables", "MEDS data set")
KINDS = (DATA_DIR, RUN_DIR, HF_DIR, EVAL_OUT_DIR, MIMIC_INPUT, MEDS_INPUT)

# Files by which each kind is recognised. RUN_DIR and eval names are those launch/ and eval/ write (a test checks
# they agree with launch.config, launch.metrics, launch.checkpoint and eval.report).
RUN_MARKERS = ("train_config.json", "metrics.jsonl", "latest")
RUN_TAG_PREFIX = "global_step"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
EVAL_MARKERS = ("report.json", "report.md")
EXPORT_INFO_FILE = "sparseehr_export.json"  # HF_DIR: source run, tag, vocab size and tokenizer hash (eval checks)
MIMIC_REQUIRED = ("patients", "admissions")
MIMIC_SUFFIXES = (".csv.gz", ".csv", ".parquet")
MEDS_DATA, MEDS_METADATA = "data", "metadata"
# Where to look for a MIMIC hosp folder inside what a user might pass: the folder itself, or the MIMIC-IV root.
MIMIC_HOSP_SUBDIR = "hosp"

# Writers that replace the whole folder (rename a finished temporary folder over it).
REPLACING_WRITERS = {DATA_DIR, HF_DIR, MIMIC_INPUT, MEDS_INPUT}
WRITER_FLAG_HINT = {DATA_DIR: "sparseehr prepare", HF_DIR: "sparseehr export", RUN_DIR: "sparseehr train",
                    EVAL_OUT_DIR: "sparseehr eval", MIMIC_INPUT: "sparseehr synth", MEDS_INPUT: "sparseehr synth"}


class OutputDirError(ValueError):
    """An output path a command must not write to; the message names the path, what it holds and why."""


def _has_table(folder: Path, name: str) -> bool:
    return any((folder / f"{name}{suffix}").is_file() for suffix in MIMIC_SUFFIXES)


def _is_mimic_hosp(folder: Path) -> bool:
    return all(_has_table(folder, name) for name in MIMIC_REQUIRED)


def _has_parquet(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    for _root, _dirs, files in os.walk(folder):
        if any(name.endswith(".parquet") for name in files):
            return True
    return False


def artifact_kind(path: str | Path) -> str | None:
    """The artefact kind a folder holds (one of KINDS), or None (missing, a file, empty or unrecognised).

    >>> artifact_kind("/nonexistent-folder") is None
    True
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / HARMONIZATION_FILE).is_file() and (path / PREPARE_REPORT_FILE).is_file():
        return DATA_DIR
    if any((path / name).is_file() for name in RUN_MARKERS) or any(
            p.is_dir() and p.name.startswith(RUN_TAG_PREFIX) for p in path.iterdir()):
        return RUN_DIR
    if (path / HF_CONFIG).is_file() and any((path / name).is_file() for name in HF_WEIGHTS):
        return HF_DIR
    if all((path / name).is_file() for name in EVAL_MARKERS):
        return EVAL_OUT_DIR
    if _is_mimic_hosp(path) or _is_mimic_hosp(path / MIMIC_HOSP_SUBDIR):
        return MIMIC_INPUT
    if _has_parquet(path / MEDS_DATA):
        return MEDS_INPUT
    # a DATA_DIR missing its reports (e.g. copied in part) still must not be treated as free space
    if (path / DATA_TOKENIZER_DIR).is_dir() and ((path / DATA_PATIENTS_DIR).is_dir()
                                                  or (path / DATA_WINDOWS_DIR).is_dir()):
        return DATA_DIR
    return None


def _describe(kind: str) -> str:
    if kind.startswith("raw"):
        return kind
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.relative_to(outer)
        return True
    except ValueError:
        return False


def _first_file_ancestor(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_dir(out: str | Path, writes: str, overwrite: bool = False,
                     inputs: Iterable[tuple[str, str | Path | None]] = (), flag: str = "--out") -> Path:
    """Refuse an output path this writer must not touch (see the module docstring); return it as a Path.

    writes: the kind this command writes (one of KINDS). inputs: (flag, path) pairs of what the command reads.
    Raises OutputDirError with a one-line message; nothing is created or deleted here.
    """
    if writes not in KINDS:
        raise ValueError(f"unknown artefact kind {writes!r}")
    out = Path(out)
    where = f"{flag} {out}"
    blocker = _first_file_ancestor(out.absolute())
    if blocker is not None:
        raise OutputDirError(f"{where}: cannot create it, {blocker} is a file, not a folder")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"{where} is an existing file, not a folder; choose another path")
    resolved = out.resolve()
    replacing = writes in REPLACING_WRITERS
    for input_flag, input_path in inputs:
        if input_path is None:
            continue
        source = Path(input_path).resolve()
        if source == resolved:
            raise OutputDirError(f"{where} is the {input_flag} input; write the output somewhere else")
        if replacing and out.is_dir() and _is_within(source, resolved):
            raise OutputDirError(f"{where} contains the {input_flag} input {input_path}; replacing the folder "
                                 "would delete it, so write the output somewhere else")
    if not out.is_dir() or not any(out.iterdir()):
        return out
    found = artifact_kind(out)
    if found is not None and found != writes:
        raise OutputDirError(f"{where} holds {_describe(found)}; {WRITER_FLAG_HINT[writes]} writes "
                             f"{_describe(writes)} and never writes into another kind of folder")
    if not replacing:
        return out
    if not overwrite:
        raise OutputDirError(f"{where} exists and is not empty; pass --overwrite to replace it"
                             + ("" if found == writes else f" (only if it is {_describe(writes)})"))
    if found != writes:
        previous = f"earlier {writes}" if writes.startswith("raw") else f"a previous {writes}"
        raise OutputDirError(f"{where} is not {_describe(writes)} (none of the files "
                             f"{WRITER_FLAG_HINT[writes]} writes are there); --overwrite only replaces {previous}, "
                             "so choose an empty or new folder")
    return out


def remove_replaced(path: Path) -> None:
    """Delete what a finished output displaced (a folder, or a file or link left by an earlier tool)."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)




# ----------------------------------------------------------------------------------------------------------
# Damaged artefacts: checks that turn a truncated or inconsistent file into one line naming it.
# ----------------------------------------------------------------------------------------------------------
class ArtifactError(ValueError):
    """An artefact file that is truncated, corrupt or disagrees with its neighbours (a data error, exit 1)."""


def read_safetensors_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a safetensors file, after checking that the file holds every byte its header
    promises (a copy cut short, or a file that is not safetensors, fails here with its name, not deep in torch)."""
    import json
    import struct

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ArtifactError(f"{path}: truncated ({size} bytes), not a safetensors file; export the model again")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ArtifactError(f"{path}: truncated or not safetensors (header of {header_len} bytes in a "
                                f"{size}-byte file); export the model again")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: corrupt safetensors header ({exc}); export the model again") from exc
    shapes, end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(d) for d in entry["shape"])
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ArtifactError(f"{path}: corrupt safetensors header entry {name!r}") from exc
    if 8 + header_len + end > size:
        raise ArtifactError(f"{path}: truncated: its header describes {8 + header_len + end} bytes, the file has "
                            f"{size}; copy or export the model again")
    return shapes


def check_weights_match(source: str | Path, found: dict[str, tuple[int, ...]],
                        expected: dict[str, tuple[int, ...]], optional: Iterable[str] = (),
                        config_file: str | Path | None = None) -> None:
    """Refuse weights that do not fit the model their config.json describes (e.g. num_experts edited), instead
    of letting from_pretrained initialise the missing tensors at random and drop the rest with a warning."""
    optional = set(optional)
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(found) & set(expected) if tuple(found[name]) != tuple(expected[name]))
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        name = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) of another shape, e.g. {name}: file {list(found[name])}, config "
                     f"{list(expected[name])}")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model, e.g. {unexpected[0]}")
    against = f" {config_file}" if config_file else " config.json"
    raise ArtifactError(f"{source} does not match{against} ({'; '.join(parts)}): was config.json edited (e.g. "
                        "num_experts, vocab_size) or mixed with another model's weights?")


def vocabulary_hash(vocab: dict[str, int]) -> str:
    """SHA-256 of a tokenizer's (token, id) pairs: equal hashes mean every id names the same token.

    >>> vocabulary_hash({"a": 0, "b": 1}) == vocabulary_hash({"b": 1, "a": 0})
    True
    """
    import hashlib
    import json

    pairs = sorted((int(i), str(t)) for t, i in vocab.items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


__all__ = ["EXPORT_INFO_FILE", "KINDS", "DATA_DIR", "RUN_DIR", "HF_DIR", "EVAL_OUT_DIR", "MIMIC_INPUT", "MEDS_INPUT", "ArtifactError",
           "OutputDirError", "artifact_kind", "check_output_dir", "check_weights_match", "read_safetensors_header",
           "remove_replaced", "vocabulary_hash"]
