"""The tokenize batch functions: staging strings -> token ids (patients) and patients -> windows.

`prepare` calls both per batch of whole patients of one partition (build.py): each call gets a pyarrow Table
and returns one, so all work inside is vectorised over the batch's flat arrays, and no result depends on which
other patients share the batch.

Windows policy: a timeline of at most max_len tokens is one window. A longer one is cut on visit boundaries:
every window starts with the patient's <bos> + demographics prefix and is filled with as many WHOLE visits as fit
(the <eor> travels with the last visit); a single visit longer than max_len - prefix_len is split at token
boundaries over consecutive windows (counted in the report as `oversize_visits_split`). Windows never span two patients.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from sparseehr.data_pipeline.schema import (
    BOS_TOKEN, COL_INPUT_IDS, COL_PREFIX_LEN, COL_PREFIX_TOKENS, COL_VISIT_DX_CODES, COL_VISIT_OFFSETS,
    COL_VISIT_TIMES, COL_VISIT_TOKENS, COL_WINDOW_INDEX, EOR_TOKEN, GAP_FIRST_TOKEN, GAP_TOKENS, SUBJECT_ID,
    VISIT_CLOSE_TOKEN, VISIT_OPEN_TOKEN,
)
from sparseehr.data_pipeline.timelines import gap_token_index
from sparseehr.data_pipeline.vocab import Vocabulary


def _offsets(array: pa.ListArray) -> np.ndarray:
    offsets = array.offsets.to_numpy()
    return offsets - offsets[0]


def token_id_type(vocab_size: int) -> type:
    """The narrowest integer type holding every id of a vocabulary: DATA_DIR is mostly token ids, so this halves
    it for any vocabulary under 65,536 tokens; readers convert ids to int64 when they use them.

    >>> [token_id_type(n).__name__ for n in (99, 256, 257, 65_536, 65_537)]
    ['uint8', 'uint8', 'uint16', 'uint16', 'int32']
    """
    if vocab_size <= 1 << 8:
        return np.uint8
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def output_schemas(vocab_size: int) -> tuple[pa.Schema, pa.Schema]:
    """(patients, windows) schemas of DATA_DIR for a vocabulary of `vocab_size` tokens (see schema.py)."""
    ids = pa.list_(pa.from_numpy_dtype(token_id_type(vocab_size)))
    patients = pa.schema([(SUBJECT_ID, pa.int64()), (COL_INPUT_IDS, ids), (COL_PREFIX_LEN, pa.int32()),
                          (COL_VISIT_OFFSETS, pa.list_(pa.int32())), (COL_VISIT_TIMES, pa.list_(pa.int64())),
                          (COL_VISIT_DX_CODES, pa.list_(pa.list_(pa.string())))])
    windows = pa.schema([(SUBJECT_ID, pa.int64()), (COL_WINDOW_INDEX, pa.int32()), (COL_INPUT_IDS, ids)])
    return patients, windows


def tokenize_batch(batch: pa.Table, vocab: Vocabulary, code_ids_of: np.ndarray) -> pa.Table:
    """Staging rows -> SUBJECT_ID, input_ids (token_id_type), prefix_len, visit_offsets, visit_times,
    visit_dx_codes. Visit codes in the staging rows are rows of their partition's token table, `code_ids_of`
    the vocabulary id of each (`vocab.encode(token_strings)`); the prefix is token strings."""
    prefix = batch[COL_PREFIX_TOKENS].combine_chunks()
    visits = batch[COL_VISIT_TOKENS].combine_chunks()      # list<list<int32>>: patient -> visit -> token rows
    times = batch[COL_VISIT_TIMES].combine_chunks()
    patient_visits = _offsets(visits)                       # [P + 1] visit offsets per patient
    visit_codes = _offsets(visits.flatten())                # [V + 1] code offsets per visit
    prefix_ids = vocab.encode(prefix.flatten())
    code_ids = code_ids_of[visits.flatten().flatten().to_numpy()]
    n_patients, n_visits = len(batch), len(visit_codes) - 1

    n_prefix = np.diff(_offsets(prefix))
    codes_per_visit = np.diff(visit_codes)
    visit_len = codes_per_visit + 3                          # GAP, VISIT:open, codes, VISIT:close
    visit_patient = np.repeat(np.arange(n_patients), np.diff(patient_visits))
    visit_len_cum = np.concatenate([[0], np.cumsum(visit_len)])
    body_len = visit_len_cum[patient_visits[1:]] - visit_len_cum[patient_visits[:-1]]
    patient_len = 1 + n_prefix + body_len + 1
    patient_start = np.concatenate([[0], np.cumsum(patient_len)])
    out = np.empty(patient_start[-1], token_id_type(len(vocab)))

    ids = vocab.ids
    out[patient_start[:-1]] = ids[BOS_TOKEN]
    out[patient_start[1:] - 1] = ids[EOR_TOKEN]
    prefix_pos = np.repeat(patient_start[:-1] + 1 - _offsets(prefix)[:-1], n_prefix) + np.arange(len(prefix_ids))
    out[prefix_pos] = prefix_ids

    # visit v starts after its patient's prefix plus the lengths of the patient's earlier visits
    visit_start_in_patient = 1 + n_prefix[visit_patient] + visit_len_cum[:-1] - visit_len_cum[patient_visits[:-1]][
        visit_patient]
    visit_start = patient_start[:-1][visit_patient] + visit_start_in_patient
    visit_time = times.flatten().to_numpy()
    is_first = np.zeros(n_visits, bool)
    is_first[patient_visits[:-1][np.diff(patient_visits) > 0]] = True
    delta = np.diff(visit_time, prepend=visit_time[:1]) if n_visits else visit_time
    gap_ids = np.array([ids[t] for t in GAP_TOKENS[1:]], np.int32)[gap_token_index(np.maximum(delta, 0))]
    gap_ids[is_first] = ids[GAP_FIRST_TOKEN]
    out[visit_start] = gap_ids
    out[visit_start + 1] = ids[VISIT_OPEN_TOKEN]
    out[visit_start + 2 + codes_per_visit] = ids[VISIT_CLOSE_TOKEN]
    code_pos = np.repeat(visit_start + 2 - visit_codes[:-1], codes_per_visit) + np.arange(len(code_ids))
    out[code_pos] = code_ids

    return pa.table({
        SUBJECT_ID: batch[SUBJECT_ID],
        COL_INPUT_IDS: pa.ListArray.from_arrays(pa.array(patient_start.astype(np.int32)), pa.array(out)),
        COL_PREFIX_LEN: pa.array((1 + n_prefix).astype(np.int32)),
        COL_VISIT_OFFSETS: pa.ListArray.from_arrays(pa.array(patient_visits.astype(np.int32)),
                                                    pa.array(visit_start_in_patient.astype(np.int32))),
        COL_VISIT_TIMES: batch[COL_VISIT_TIMES],
        COL_VISIT_DX_CODES: batch[COL_VISIT_DX_CODES],
    })


def window_spans(length: int, prefix_len: int, visit_offsets: list[int], max_len: int) -> list[tuple[int, int]]:
    """(start, end) spans of the body (after the prefix) for each window of one timeline.

    >>> window_spans(10, 3, [3, 6], 20)
    [(3, 10)]
    >>> window_spans(14, 3, [3, 6, 9], 8)   # visits [3,6) [6,9) [9,14) (the last one holds <eor>); budget 5
    [(3, 6), (6, 9), (9, 14)]
    >>> window_spans(14, 3, [3, 5], 6)      # the second visit (9 tokens) is longer than the budget 3: split
    [(3, 5), (5, 8), (8, 11), (11, 14)]
    """
    if length <= max_len:
        return [(prefix_len, length)]
    budget = max_len - prefix_len
    bounds = list(visit_offsets) + [length]
    spans: list[tuple[int, int]] = []
    start = prefix_len
    for end in bounds[1:]:
        if end - start <= budget:
            continue
        # close the window at the last visit boundary that fits, then split an oversize visit in chunks
        last_fit = max((b for b in bounds if start < b <= start + budget), default=None)
        if last_fit is not None:
            spans.append((start, last_fit))
            start = last_fit
        while end - start > budget:
            spans.append((start, start + budget))
            start += budget
    spans.append((start, length))
    return spans


def windows_batch(batch: pa.Table, max_len: int) -> pa.Table:
    """Patients -> windows (SUBJECT_ID, window_index, input_ids); short timelines pass through whole."""
    input_ids = batch[COL_INPUT_IDS].combine_chunks()
    lengths = np.diff(input_ids.offsets.to_numpy())
    if (lengths <= max_len).all():
        return pa.table({SUBJECT_ID: batch[SUBJECT_ID], COL_WINDOW_INDEX: pa.array(np.zeros(len(batch), np.int32)),
                         COL_INPUT_IDS: input_ids})
    subjects, window_index, pieces = [], [], []
    subject_ids = batch[SUBJECT_ID].to_numpy()
    prefix_lens = batch[COL_PREFIX_LEN].to_numpy()
    offsets_column = batch[COL_VISIT_OFFSETS].combine_chunks()
    flat = input_ids.flatten().to_numpy()
    starts = input_ids.offsets.to_numpy() - input_ids.offsets.to_numpy()[0]
    for row in range(len(batch)):
        ids = flat[starts[row]:starts[row + 1]]
        if lengths[row] <= max_len:
            spans = [None]
        else:
            spans = window_spans(int(lengths[row]), int(prefix_lens[row]), offsets_column[row].values.to_pylist(),
                                 max_len)
        for index, span in enumerate(spans):
            pieces.append(ids if span is None else np.concatenate([ids[:prefix_lens[row]], ids[span[0]:span[1]]]))
            subjects.append(subject_ids[row])
            window_index.append(index)
    window_offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int32)
    return pa.table({
        SUBJECT_ID: pa.array(subjects, pa.int64()),
        COL_WINDOW_INDEX: pa.array(window_index, pa.int32()),
        COL_INPUT_IDS: pa.ListArray.from_arrays(pa.array(window_offsets),
                                                pa.array(np.concatenate(pieces), input_ids.type.value_type)),
    })
