"""`sparseehr bench prepare`: time and memory of `sparseehr prepare` against a plain pyarrow read.

    sparseehr bench prepare                          # simulate a MIMIC-scale hosp folder (300k patients), bench it
    sparseehr bench prepare --mimic DIR --repeats 3  # bench an existing MIMIC-IV hosp folder
    sparseehr bench prepare --meds --work W          # MEDS stress set (300k subjects, 100M rows, 32 shards), cached in W
    sparseehr bench prepare --meds DIR               # bench an existing MEDS data set

Each repeat reads the five raw tables with plain `pyarrow.csv.read_csv` (all columns, default options) in this
process (for MEDS: a plain multithreaded `pyarrow.dataset` scan of the columns prepare reads), then runs a full prepare in a fresh child process while a sampler sums the memory of the child and all
of its descendants (`datasets.map` workers) every 50 ms: PSS (proportional set size, pages shared with forked
workers split among them, i.e. the real footprint; the target) and plain RSS (an upper bound). Reads and prepares alternate, so both see
the same machine load; figures are medians over repeats, the ratio is prepare time / plain read time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RAW_TABLES = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "hcpcsevents")
TARGET_RATIO, TARGET_RSS_GIB = 3.0, 2.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(k) for k in handle.read().split()]
    except OSError:
        pass
    return kids


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes. PSS splits pages shared with forked workers among the sharers, so
    summed over a process tree it is the tree's real footprint; summed RSS counts shared pages once per process."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return rss, pss or rss


def _tree_memory(root: int) -> tuple[int, int]:
    """Summed (RSS, PSS) of `root` and all its descendants."""
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        one_rss, one_pss = _memory(pid)
        rss, pss = rss + one_rss, pss + one_pss
        stack += _children(pid)
    return rss, pss


def plain_read(hosp: Path) -> tuple[float, int]:
    """Seconds to read every raw table with plain pyarrow, and the rows read."""
    import pyarrow.csv as pacsv

    rows, started = 0, time.perf_counter()
    for name in RAW_TABLES:
        path = hosp / f"{name}.csv.gz"
        if path.exists():
            rows += pacsv.read_csv(path).num_rows
    return time.perf_counter() - started, rows


def run_prepare(source: Path, out: Path, num_proc: int | None, kind: str = "mimic") -> dict:
    """One prepare (kind mimic or meds) in a child process; returns its in-process time, process wall time and peak
    tree RSS."""
    code = ("import json, sys; from sparseehr.data_pipeline.build import PrepareConfig, prepare; "
            "r = prepare(PrepareConfig(out=sys.argv[1], **{sys.argv[4]: sys.argv[2]}, "
            "num_proc=int(sys.argv[3]) if sys.argv[3] != 'None' else None, "
            "overwrite=True, progress=False)); "
            # VmHWM: this process's own high-water mark (ru_maxrss would carry the forked bench's pages over exec)
            "hwm = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
            "print(json.dumps(dict({k: r[k] for k in ('elapsed_s', 'timings_s', 'patients', 'visits', "
            "'events_read', 'num_proc')}, vm_hwm=hwm)))")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, str(out), str(source), str(num_proc), kind],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _tree_memory(child.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"prepare failed ({child.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result.update(process_wall_s=wall, peak_tree_rss=peak[0], peak_tree_pss=peak[1], out_bytes=out_bytes)
    return result


def compare_decoders(hosp: Path, work: Path, repeats: int) -> dict:
    """The MIMIC reader (read + spill, in this process) with gzip decoded by ISA-L and by zlib (the fallback when
    the isal package is missing), alternating, so both see the same machine load; medians in seconds."""
    from sparseehr.data_pipeline.readers import common
    from sparseehr.data_pipeline.readers.mimic import read_mimic

    isal, seconds = common.igzip, {"isal": [], "zlib": []}
    if isal is None:
        raise RuntimeError("the isal package is not installed: nothing to compare")
    try:
        for _ in range(repeats):
            for name, module in (("isal", isal), ("zlib", None)):
                common.igzip = module
                started = time.perf_counter()
                read_mimic(hosp, work / "decoder-spill", 20_000)
                seconds[name].append(time.perf_counter() - started)
                shutil.rmtree(work / "decoder-spill")
    finally:
        common.igzip = isal
    medians = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    return dict(medians, zlib_over_isal=round(medians["zlib"] / medians["isal"], 3),
                repeats={name: [round(v, 3) for v in values] for name, values in seconds.items()})


def _simulate(patients: int, work: Path, regenerate: bool) -> Path:
    target = work / f"mimic-{patients}"
    if regenerate and target.exists():
        shutil.rmtree(target)
    if not (target / "hosp" / "diagnoses_icd.csv.gz").exists():
        from sparseehr.data_pipeline.simulator.cli import main as synth_main

        code = synth_main(["--system", "mimic", "--patients", str(patients), "--seed", "0", "--out", str(target)])
        if code:
            raise RuntimeError(f"sparseehr synth failed with exit code {code}")
    return target / "hosp"


def _source(args: argparse.Namespace, work: Path):
    """(kind, input folder, plain-read function) for the chosen input."""
    if args.meds is None:
        hosp = Path(args.mimic) if args.mimic else _simulate(args.patients, work, args.regenerate)
        return "mimic", hosp, plain_read
    from sparseehr.data_pipeline.bench_meds import build_meds_stress, plain_scan

    if args.meds:
        return "meds", Path(args.meds), plain_scan
    if args.regenerate:
        shutil.rmtree(work / f"meds-stress-{args.patients}-{args.meds_rows}-{args.shards}", ignore_errors=True)
    root = build_meds_stress(work, args.patients, args.meds_rows, args.shards,
                             simulate=lambda n: _simulate(n, work, False))
    return "meds", root, plain_scan


def _input_bytes(kind: str, source: Path) -> int:
    if kind == "meds":
        return sum(p.stat().st_size for p in (source / "data").rglob("*.parquet"))
    return sum((source / f"{n}.csv.gz").stat().st_size for n in RAW_TABLES if (source / f"{n}.csv.gz").exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparseehr bench prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mimic", metavar="DIR", help="existing MIMIC-IV hosp folder (default: simulate one)")
    source.add_argument("--meds", metavar="DIR", nargs="?", const="",
                        help="bench MEDS input: DIR, or without DIR the generated stress set (cached in --work)")
    parser.add_argument("--patients", type=int, default=300_000,
                        help="simulated patients, or MEDS stress subjects (default 300000)")
    parser.add_argument("--meds-rows", type=int, default=100_000_000, help="MEDS stress rows (default 100M)")
    parser.add_argument("--shards", type=int, default=32, help="MEDS stress shards (default 32)")
    parser.add_argument("--work", metavar="DIR", help="where simulated data and outputs go (default: a temp dir)")
    parser.add_argument("--regenerate", action="store_true", help="simulate again even if WORK holds the data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed plain reads first, so no repeat pays for a cold page cache (default 1)")
    parser.add_argument("--num-proc", type=int, default=None,
                        help="prepare's worker processes (default: prepare's own default, the usable cores up to 4)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target (ratio, peak RSS) is missed")
    parser.add_argument("--compare-decoders", action="store_true",
                        help="MIMIC only: also time the reader with gzip decoded by ISA-L and by zlib")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.patients < 1 or args.shards < 1 or args.warmup < 0:
        parser.error("--repeats, --patients and --shards must be >= 1, --warmup >= 0")

    own_work = args.work is None
    work = Path(args.work or tempfile.mkdtemp(prefix="sparseehr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        kind, source, read = _source(args, work)
        print(f"data: {source} ({_input_bytes(kind, source) / 2**20:.1f} MiB on disk), num_proc {args.num_proc}, "
              f"{args.repeats} repeats, {os.cpu_count()} CPUs")
        # A cold read here runs at the disk's speed (1.4 GB of MEDS parquet: 89 s cold, 2.6 s cached), which
        # would make the first repeat a measurement of the disk, not of prepare.
        for _ in range(args.warmup):
            read(source)
        reads, prepares = [], []
        for repeat in range(args.repeats):
            read_s, rows = read(source)
            # hand the plain read's freed memory back now: the allocator would otherwise return it page by page
            # in the background while the prepare child runs, and bill the bench's clean-up to prepare
            import pyarrow as pa

            pa.default_memory_pool().release_unused()
            result = run_prepare(source, work / "out", args.num_proc, kind)
            reads.append(read_s)
            prepares.append(result)
            print(f"repeat {repeat + 1}: plain {'scan' if kind == 'meds' else 'read'} {read_s:.2f} s | prepare "
                  f"{result['elapsed_s']:.2f} s (process {result['process_wall_s']:.2f} s) | ratio "
                  f"{result['elapsed_s'] / read_s:.2f} (with start-up {result['process_wall_s'] / read_s:.2f}) | "
                  f"peak PSS {result['peak_tree_pss'] / 2**30:.2f} GiB (summed RSS {result['peak_tree_rss'] / 2**30:.2f}) | "
                  f"DATA_DIR {result['out_bytes'] / 2**20:.1f} MiB | steps {result['timings_s']}", flush=True)
        read_median = statistics.median(reads)
        prepare_median = statistics.median(p["elapsed_s"] for p in prepares)
        peak = max(p["peak_tree_pss"] for p in prepares)
        peak_rss = max(p["peak_tree_rss"] for p in prepares)
        max_child = max(p["vm_hwm"] for p in prepares)
        figures = {
            "rows": rows, "patients": prepares[0]["patients"], "visits": prepares[0]["visits"],
            "plain_read_s_median": round(read_median, 3), "prepare_s_median": round(prepare_median, 3),
            "prepare_process_s_median": round(statistics.median(p["process_wall_s"] for p in prepares), 3),
            "ratio_median": round(prepare_median / read_median, 3),
            "ratio_with_startup_median": round(statistics.median(p["process_wall_s"] / r
                                                                 for p, r in zip(prepares, reads)), 3),
            "source": kind, "input_bytes": _input_bytes(kind, source), "data_dir_bytes": prepares[-1]["out_bytes"],
            "data_dir_to_input": round(prepares[-1]["out_bytes"] / _input_bytes(kind, source), 3),
            "ratio_per_repeat_median": round(statistics.median(p["elapsed_s"] / r for p, r in zip(prepares, reads)), 3),
            "rows_per_s": round(rows / prepare_median), "peak_tree_pss_gib": round(peak / 2**30, 3),
            "peak_tree_rss_sum_gib": round(peak_rss / 2**30, 3),
            "peak_single_process_rss_gib": round(max_child / 2**30, 3), "num_proc": prepares[0]["num_proc"],
            "repeats": args.repeats, "warmup": args.warmup, "cpus": os.cpu_count(),
        }
        # the target counts the child's start-up (imports) too: that is the time a user waits
        ok = figures["ratio_with_startup_median"] <= TARGET_RATIO and figures["peak_tree_pss_gib"] <= TARGET_RSS_GIB
        print(f"median: plain read {read_median:.2f} s, prepare {prepare_median:.2f} s, ratio "
              f"{figures['ratio_median']:.2f}, with start-up {figures['ratio_with_startup_median']:.2f} (target <= "
              f"{TARGET_RATIO:g} with start-up), {figures['rows_per_s']:,} rows/s, "
              f"peak memory {figures['peak_tree_pss_gib']:.2f} GiB PSS incl. workers (target <= {TARGET_RSS_GIB:g}; summed "
              f"RSS {figures['peak_tree_rss_sum_gib']:.2f} GiB counts pages shared with forked workers twice), "
              f"largest single process {figures['peak_single_process_rss_gib']:.2f} GiB, DATA_DIR "
              f"{figures['data_dir_to_input']:.2f}x the input bytes -> "
              f"{'within targets' if ok else 'TARGET MISSED'}")
        if args.compare_decoders and kind == "mimic":
            figures["reader_decoders_s"] = decoders = compare_decoders(source, work, args.repeats)
            print(f"reader (read + spill) medians: ISA-L {decoders['isal']:.2f} s, zlib {decoders['zlib']:.2f} s "
                  f"(zlib / ISA-L {decoders['zlib_over_isal']:.2f}); repeats {decoders['repeats']}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 1 if (args.check and not ok) else 0
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "out", ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
