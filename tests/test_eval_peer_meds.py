"""The peer benchmark's conversions on hand-built records and trajectories (no peer installed, no network)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from sparseehr.data_pipeline import schema
from sparseehr.eval.instances import PatientRecord, build_instances
from sparseehr.eval.peer_meds import (
    PREDICTION_TIME, TIME_TYPE, code_map_from_counts, label_table, rank_trajectories, target_meds_table,
)

DAY_US = 86_400 * 1_000_000
DX = "DIAGNOSIS//ICD//10//"


def trajectory(rows: list[tuple[int, int, int, str]]) -> pa.Table:
    """(subject_id, prediction_time us, time us, code) rows -> a table shaped like the peer's trajectory files."""
    return pa.table({"subject_id": pa.array([r[0] for r in rows], pa.int64()),
                     "time": pa.array([r[2] for r in rows], TIME_TYPE),
                     "code": pa.array([r[3] for r in rows], pa.string()),
                     "numeric_value": pa.nulls(len(rows), pa.float32()),
                     PREDICTION_TIME: pa.array([r[1] for r in rows], TIME_TYPE)})


def labels(keys: list[tuple[int, int]]) -> pa.Table:
    return pa.table({"subject_id": pa.array([k[0] for k in keys], pa.int64()),
                     PREDICTION_TIME: pa.array([k[1] for k in keys], TIME_TYPE),
                     "boolean_value": pa.array([False] * len(keys))})


def test_share_of_trajectories_ranks_and_codes_after_the_first_visit_are_ignored():
    t0 = 100 * DAY_US
    visit1, visit2 = t0 + 30 * DAY_US, t0 + 90 * DAY_US
    delta = "TIMELINE//DELTA//years//value_[0.05,0.1)"
    trajectories = [
        # I10 appears first of all (trajectory 0) but in 1 of 4 trajectories; E11 (two full codes) in 2 of 4.
        trajectory([(7, t0, visit1, delta), (7, t0, visit1, DX + "I10"), (7, t0, visit1, "GENDER//F"),
                    (7, t0, visit2, delta), (7, t0, visit2, DX + "J45909")]),           # J45: second visit
        trajectory([(7, t0, t0, DX + "J4520"),                                           # J45: still visit t
                    (7, t0, visit1, delta), (7, t0, visit1, DX + "E119"), (7, t0, visit1, DX + "E1165")]),
        # a timestamp holding only a time delta is no visit: the first visit is the next one
        trajectory([(7, t0, visit1 - DAY_US, delta), (7, t0, visit1, delta), (7, t0, visit1, DX + "E1165"),
                    (7, t0, visit1, "HCPCS//99213")]),
        trajectory([(7, t0, visit1, delta), (7, t0, visit1, "TIMELINE//END"), (7, t0, visit1, DX + "J45")]),
    ]
    rankings, counts = rank_trajectories(trajectories, labels([(7, t0)]), n_trajectories=4, top_n=10)
    assert rankings[0].top_codes == ("E11", "I10")
    assert "J45" not in rankings[0].top_codes
    assert rankings[0].diabetes_rank == 0 and rankings[0].diabetes_score == pytest.approx(2 / 4)
    assert counts["empty_first_visits"] == 1 and counts["missing_trajectories"] == 0


def test_ties_go_to_first_appearance_and_labels_are_told_apart():
    t_a, t_b = 10 * DAY_US, 20 * DAY_US
    trajectories = [trajectory([(1, t_a, t_a + DAY_US, DX + "K219"), (1, t_a, t_a + DAY_US, DX + "I10"),
                                (1, t_b, t_b + DAY_US, DX + "Z00")]),
                    trajectory([(1, t_a, t_a + DAY_US, DX + "I10"), (1, t_a, t_a + DAY_US, DX + "K21")])]
    rankings, counts = rank_trajectories(trajectories, labels([(1, t_b), (1, t_a)]), n_trajectories=2, top_n=10)
    assert rankings[0].top_codes == ("Z00",) and rankings[1].top_codes == ("K21", "I10")
    assert counts["missing_trajectories"] == 1          # the second trajectory has nothing for (1, t_b)
    with pytest.raises(ValueError, match="not in the label file"):
        rank_trajectories(trajectories, labels([(1, t_a)]), n_trajectories=2, top_n=10)
    with pytest.raises(ValueError, match="expected 3 trajectory files"):
        rank_trajectories(trajectories, labels([(1, t_a)]), n_trajectories=3, top_n=10)


VOCAB = [schema.BOS_TOKEN, "AGE:40-44", "SEX:F", "GAP:first", "GAP:1-3M", schema.VISIT_OPEN_TOKEN,
         schema.VISIT_CLOSE_TOKEN, "DX:E11", "DX:I10", "PX:0DT", "CPT:99213", schema.EOR_TOKEN]
ID = {token: i for i, token in enumerate(VOCAB)}


def record(subject_id: int, visits: list[tuple[int, list[str], list[str]]]) -> PatientRecord:
    """visits: (start seconds, dx codes, other tokens) -> a DATA_DIR patient row."""
    ids, offsets = [ID["<bos>"], ID["AGE:40-44"], ID["SEX:F"]], []
    for i, (_, dx, other) in enumerate(visits):
        offsets.append(len(ids))
        ids += [ID["GAP:first" if i == 0 else "GAP:1-3M"], ID[schema.VISIT_OPEN_TOKEN]]
        ids += [ID.get("DX:" + code, ID["DX:I10"]) for code in dx] + [ID[t] for t in other]
        ids.append(ID[schema.VISIT_CLOSE_TOKEN])
    ids.append(ID[schema.EOR_TOKEN])
    return PatientRecord.from_row({
        schema.COL_SUBJECT_ID: subject_id, schema.COL_INPUT_IDS: ids, schema.COL_PREFIX_LEN: 3,
        schema.COL_VISIT_OFFSETS: offsets, schema.COL_VISIT_TIMES: [v[0] for v in visits],
        schema.COL_VISIT_DX_CODES: [v[1] for v in visits]}, row_index=0)


def test_target_meds_and_labels_put_each_prediction_time_between_visit_t_and_t_plus_1():
    counts = {DX + "E119": 3, DX + "E1165": 8, DX + "I10": 5, "PROCEDURE//ICD//10//0DTJ4ZZ": 2,
              "HCPCS//99213": 9}
    code_map = code_map_from_counts(counts)
    day = 86_400
    # Visits 2 and 3 start at the same second: the writer must still keep them apart.
    patient = record(42, [(1000 * day, ["E11", "ZZZ"], ["CPT:99213"]), (1030 * day, ["I10"], ["PX:0DT"]),
                          (1030 * day, ["E11"], [])])
    written = target_meds_table([patient], VOCAB, code_map, first_peer_id=500)
    assert written.peer_ids == {42: 500}
    rows = list(zip(written.table.column("time").cast(pa.int64()).to_pylist(), written.table.column("code").to_pylist()))
    assert (None, "GENDER//F") in rows
    birth = [t for t, c in rows if c == "MEDS_BIRTH"]
    assert len(birth) == 1 and round((1000 * day * 1e6 - birth[0]) / (365.25 * day * 1e6)) == 42   # AGE 40-44
    assert (1000 * day * 10**6, DX + "E1165") in rows and (1000 * day * 10**6, "HCPCS//99213") in rows
    assert written.counts["codes_without_claims_counterpart"] == 1                                # ZZZ
    instances = build_instances([patient]).instances
    table = label_table(instances, written.peer_ids)
    assert table.num_rows == len(instances) == 2
    for inst, pred in zip(instances, table.column(PREDICTION_TIME).cast(pa.int64()).to_pylist()):
        visit_rows = sorted({t for t, c in rows if t is not None and c != "MEDS_BIRTH"})
        before = [t for t in visit_rows if t < pred]
        assert len(before) == inst.target_visit            # visits 0..t are before the prediction time, t+1 after
        assert visit_rows[inst.target_visit] > pred
