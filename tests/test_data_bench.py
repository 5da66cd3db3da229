"""`sparseehr bench prepare` on the real demo: it runs a real prepare in a child process and its figures agree
with one another (the ratio is prepare time over plain-read time, the memory is sampled, the output is measured)."""
from __future__ import annotations

import json

import pytest

from sparseehr.data_pipeline import bench


def test_bench_prepare_on_the_real_demo(tmp_path, mimic_demo_hosp, capsys):
    figures_file = tmp_path / "figures.json"
    assert bench.main(["--mimic", str(mimic_demo_hosp), "--work", str(tmp_path / "w"), "--repeats", "2",
                       "--warmup", "1", "--num-proc", "2", "--json", str(figures_file)]) == 0
    out = capsys.readouterr().out
    assert out.count("repeat ") == 2 and "median:" in out
    figures = json.loads(figures_file.read_text())
    assert (figures["patients"], figures["visits"]) == (100, 275)
    assert figures["rows"] > 0 and figures["repeats"] == 2 and figures["warmup"] == 1
    assert figures["num_proc"] == 1     # 100 patients are one partition: no worker process is forked for it
    # the JSON rounds times to ms, and the demo's plain read takes a few ms: compare within that rounding
    assert figures["plain_read_s_median"] > 0
    assert figures["ratio_median"] == pytest.approx(figures["prepare_s_median"] / figures["plain_read_s_median"],
                                                    rel=0.0005 / figures["plain_read_s_median"] + 0.001)
    assert figures["prepare_process_s_median"] >= figures["prepare_s_median"]   # start-up comes on top
    assert 0.05 < figures["peak_tree_pss_gib"] < 2    # the sampler saw the child (and its workers)
    assert figures["data_dir_bytes"] > 0 and not (tmp_path / "w" / "out").exists()   # the outputs are cleaned up


def test_compare_decoders_times_both_and_restores_isal(tmp_path, mimic_demo_hosp):
    from sparseehr.data_pipeline.readers import common

    before = common.igzip
    figures = bench.compare_decoders(mimic_demo_hosp, tmp_path, repeats=2)
    assert common.igzip is before is not None
    assert len(figures["repeats"]["isal"]) == len(figures["repeats"]["zlib"]) == 2
    assert figures["zlib_over_isal"] == pytest.approx(figures["zlib"] / figures["isal"], rel=0.01)
    assert not (tmp_path / "decoder-spill").exists()
