"""`sparseehr synth`: generate a synthetic claims (MEDS) or MIMIC-IV (hosp CSV) health system.

    sparseehr synth --system mimic --patients 2000 --seed 0 --out runs/mimic
    sparseehr synth --system claims --patients 20000 --seed 0 --out runs/claims
    sparseehr synth --system mimic --patients 2000 --out runs/mimic --compare-to PATH/mimic-iv-demo-2.2/hosp
    sparseehr synth --compare-to PATH/hosp --out runs/mimic          # compare an existing output, no generation
    sparseehr synth --system mimic --patients 300000 --out /tmp/m --bench --repeats 3 --overwrite
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CHUNK = 20_000


def generate(system: str, n_patients: int, seed: int, out: Path, chunk_size: int = DEFAULT_CHUNK,
             overwrite: bool = False) -> Path:
    """Write one synthetic health system to `out` (atomically) and return `out`.

    Output bytes depend only on (system, n_patients, seed, chunk_size): chunk c draws from
    numpy.random.default_rng([seed, c]).
    """
    from .codes import build_codebook
    from .writers import atomic_output_dir

    if system not in ("claims", "mimic"):
        raise ValueError(f"unknown system {system!r} (choose claims or mimic)")
    if n_patients < 1 or chunk_size < 1 or seed < 0:
        raise ValueError("patients and chunk size must be >= 1 and seed >= 0")
    from sparseehr.data_pipeline.artifacts import MEDS_INPUT, MIMIC_INPUT, check_output_dir

    # --overwrite replaces only an earlier synthetic tree of the same layout, never a DATA_DIR or a user's folder
    check_output_dir(out, MIMIC_INPUT if system == "mimic" else MEDS_INPUT, overwrite)
    book = build_codebook()
    with atomic_output_dir(out, overwrite) as tmp:
        if system == "mimic":
            from .mimic import MimicChunkWriter, MimicSettings

            writer = MimicChunkWriter(tmp, book, MimicSettings())
        else:
            from .claims import ClaimsChunkWriter, ClaimsSettings

            writer = ClaimsChunkWriter(tmp, book, ClaimsSettings())
        for c, first in enumerate(range(0, n_patients, chunk_size)):
            rng = np.random.default_rng([seed, c])
            writer.write_chunk(rng, first, min(chunk_size, n_patients - first))
        if system == "mimic":
            writer.close()
        else:
            writer.close(f"sparseehr-synth-{system}", seed, n_patients)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparseehr synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=("claims", "mimic"), help="which health system to generate")
    p.add_argument("--patients", type=int, help="number of patients")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same bytes)")
    p.add_argument("--out", type=Path, required=True, help="output folder (mimic: OUT/hosp, claims: OUT/data ...)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="patients per chunk (part of the seed)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--compare-to", type=Path, help="a real MIMIC-IV hosp folder to compare the mimic output with")
    p.add_argument("--bench", action="store_true", help="print wall time and peak RSS of the generation")
    p.add_argument("--repeats", type=int, default=1, help="with --bench: runs, each in a fresh process (median)")
    return p


def _bench(args: argparse.Namespace) -> int:
    """Run the generation `repeats` times in child processes; report median wall time and max peak RSS."""
    walls, rss = [], []
    for r in range(args.repeats):
        cmd = [sys.executable, "-c", "import sys; from sparseehr.data_pipeline.simulator.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "--system", args.system, "--patients", str(args.patients),
               "--seed", str(args.seed), "--out", str(args.out), "--chunk-size", str(args.chunk_size), "--overwrite"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        rss.append(usage.ru_maxrss / 1024)      # KiB -> MiB (Linux)
        if os.waitstatus_to_exitcode(status) != 0:
            print(f"bench run {r} failed", file=sys.stderr)
            return 1
        print(f"run {r}: wall {walls[-1]:.1f} s, peak RSS {rss[-1]:.0f} MiB", flush=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    print(f"synth bench: system={args.system} patients={args.patients} repeats={args.repeats} "
          f"median wall {float(np.median(walls)):.1f} s, max peak RSS {max(rss):.0f} MiB, output {size:.0f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.bench:
            if not (args.system and args.patients):
                raise ValueError("--bench needs --system and --patients")
            if args.repeats < 1:
                raise ValueError("--repeats must be >= 1")
            return _bench(args)
        if args.patients is not None:
            if not args.system:
                raise ValueError("--system is required to generate")
            start = time.perf_counter()
            generate(args.system, args.patients, args.seed, args.out, args.chunk_size, args.overwrite)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"wrote {args.system} system, {args.patients} patients, seed {args.seed} -> {args.out} "
                  f"({time.perf_counter() - start:.1f} s, peak RSS {peak:.0f} MiB)")
        elif args.compare_to is None:
            raise ValueError("give --patients (and --system) to generate, or --compare-to to compare --out")
        if args.compare_to is not None:
            from .compare import compare_table

            hosp = args.out / "hosp" if (args.out / "hosp").is_dir() else args.out
            table, ok = compare_table(hosp, args.compare_to)
            print(f"synthetic {hosp} vs real {args.compare_to}\n\n{table}\n")
            print("all figures within x1.5 of the real data" if ok else "some figures are outside x1.5 (NO above)")
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"sparseehr synth: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
