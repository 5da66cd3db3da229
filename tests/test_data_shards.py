"""A DatasetDict written in place, shard by shard (shards.py), loads as `save_to_disk` of the same rows does."""
from __future__ import annotations

import datasets
import pyarrow as pa
import pytest

from sparseehr.data_pipeline.shards import finish_dataset_dict, shard_name, write_shard

SCHEMA = pa.schema([("subject_id", pa.int64()), ("input_ids", pa.list_(pa.uint8())),
                    ("visit_dx_codes", pa.list_(pa.list_(pa.string())))])


def _rows(subjects: list[int]) -> pa.Table:
    return pa.table({"subject_id": subjects,
                     "input_ids": [[s % 7, 3] for s in subjects],
                     "visit_dx_codes": [[["E11"], []] if s % 2 else [["I10", "N18"]] for s in subjects]}
                    ).cast(SCHEMA)


def test_shards_load_like_save_to_disk(tmp_path):
    # three partitions; the second has no validation rows (an empty shard must load too)
    parts = {"train": [[1, 2], [5], [8, 9, 11]], "validation": [[3], [], [10]]}
    for split, shards in parts.items():
        (tmp_path / "ours" / split).mkdir(parents=True)
        for index, subjects in enumerate(shards):
            table = _rows(subjects)
            # a table built without the exact schema (int32 ids) is cast to it
            if index == 0:
                table = table.cast(pa.schema([("subject_id", pa.int64()), ("input_ids", pa.list_(pa.int32())),
                                              ("visit_dx_codes", pa.list_(pa.list_(pa.string())))]))
            write_shard(table, tmp_path / "ours" / split / shard_name(index, len(shards)), SCHEMA)
    finish_dataset_dict(tmp_path / "ours", tuple(parts), 3)

    reference = datasets.DatasetDict({split: datasets.Dataset(pa.concat_tables([_rows(s) for s in shards]))
                                      for split, shards in parts.items()})
    reference.save_to_disk(str(tmp_path / "reference"))

    ours, theirs = datasets.load_from_disk(str(tmp_path / "ours")), datasets.load_from_disk(str(tmp_path / "reference"))
    assert list(ours) == ["train", "validation"]
    for split in parts:
        assert ours[split].features == theirs[split].features
        assert ours[split].to_list() == theirs[split].to_list()
    assert ours["train"]["subject_id"] == [1, 2, 5, 8, 9, 11]
    assert ours["validation"].features["input_ids"].feature.dtype == "uint8"
    # a split folder loads on its own, as a saved Dataset does, and so does one shard
    assert datasets.load_from_disk(str(tmp_path / "ours" / "validation"))["subject_id"] == [3, 10]
    shard = datasets.Dataset.from_file(str(tmp_path / "ours" / "train" / shard_name(2, 3)))
    assert shard["subject_id"] == [8, 9, 11] and shard.features == theirs["train"].features


def test_missing_shard_is_an_error(tmp_path):
    (tmp_path / "train").mkdir()
    write_shard(_rows([1]), tmp_path / "train" / shard_name(0, 2), SCHEMA)
    with pytest.raises(FileNotFoundError, match="data-00001-of-00002"):
        finish_dataset_dict(tmp_path, ("train",), 2)
    assert not (tmp_path / "dataset_dict.json").exists()
