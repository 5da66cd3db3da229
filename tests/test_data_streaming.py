"""TableStream: CSV read in record-aligned chunks by a read-ahead thread gives what one whole-file read gives."""
from __future__ import annotations

import gzip
import threading

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.readers import common, streaming
from sparseehr.data_pipeline.readers.streaming import TableStream, last_record_end

COLUMNS = {"subject_id": pa.int64(), "note": pa.string(), "seq_num": pa.int64()}


def _write(path, rows: list[str]) -> None:
    text = "subject_id,note,seq_num,unused\n" + "".join(rows)
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(text)


# quoted fields holding newlines, commas and doubled quotes, a CRLF line and a last line without a newline
ROWS = [f'{i},"line one\nline ""two"", {i}",{i % 3},x\n' if i % 4 == 0 else f"{i},plain {i},{i % 3},y\r\n"
        for i in range(40)] + ['99,"tail, no newline",1,z']


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(streaming, "CSV_CHUNK_BYTES", 11)
    monkeypatch.setattr(streaming, "CSV_PARSE_BLOCK_BYTES", 16)


def _streamed(path) -> tuple[pa.Table, list[int]]:
    blocks = list(TableStream(path, COLUMNS, read_ahead=3))
    return pa.concat_tables([b for _, b in blocks]), [offset for offset, _ in blocks]


def _reference(path) -> pa.Table:
    convert = pacsv.ConvertOptions(include_columns=list(COLUMNS), column_types=COLUMNS)
    return pacsv.read_csv(path, convert_options=convert)


@pytest.mark.parametrize("isal", [True, False])
def test_chunks_split_only_between_records(tmp_path, tiny_chunks, monkeypatch, isal):
    if not isal:
        monkeypatch.setattr(common, "igzip", None)   # the zlib fallback decodes the same bytes
    path = tmp_path / "t.csv.gz"
    _write(path, ROWS)
    table, offsets = _streamed(path)
    assert table.to_pylist() == _reference(path).to_pylist()
    assert table.num_rows == 41 and table["note"][4].as_py() == 'line one\nline "two", 4'
    assert len(offsets) > 10 and offsets == sorted(offsets) and offsets[0] == 0


@pytest.fixture
def read_csv_calls(monkeypatch):
    """(use_threads, error message or None) of every read_csv call made with ReadOptions."""
    calls, real_read_csv = [], pacsv.read_csv

    def recording_read_csv(source, read_options=None, **kwargs):
        if read_options is None:                            # _reference's whole-file read
            return real_read_csv(source, **kwargs)
        try:
            table = real_read_csv(source, read_options=read_options, **kwargs)
        except pa.ArrowInvalid as exc:
            calls.append((read_options.use_threads, str(exc)))
            raise
        calls.append((read_options.use_threads, None))
        return table

    monkeypatch.setattr(pacsv, "read_csv", recording_read_csv)
    return calls


def test_threaded_parsing_never_meets_a_straddling_value(tmp_path, monkeypatch, read_csv_calls):
    """pyarrow 15-18 hang after a few "straddling object" errors from a threaded read_csv: chunks with quoted
    newlines or lines longer than a block must go to the one-block, one-thread parse; short plain lines keep the
    parallel multi-block parse."""
    monkeypatch.setattr(streaming, "CSV_CHUNK_BYTES", 400)
    monkeypatch.setattr(streaming, "CSV_PARSE_BLOCK_BYTES", 64)
    quoted = [f'{i},"two\nlines {i}",{i % 3},x\n' for i in range(60)]
    long = [f"7,{'w' * 150},1,x\n"] * 6                       # lines longer than a 64-byte block, no quotes
    plain = [f"{i},p{i},{i % 3},y\n" for i in range(60)]
    for name, rows, parallel in (("quoted", quoted, False), ("long", long, False), ("plain", plain, True)):
        read_csv_calls.clear()
        path = tmp_path / f"{name}.csv.gz"
        _write(path, rows)
        table, _ = _streamed(path)
        assert table.to_pylist() == _reference(path).to_pylist(), name
        assert not any(error for _, error in read_csv_calls), f"{name}: a read_csv call failed: {read_csv_calls}"
        assert {threads for threads, _ in read_csv_calls} == {parallel}, name


def test_whole_file_read_retries_a_straddling_value_on_one_thread(tmp_path, monkeypatch, read_csv_calls):
    monkeypatch.setattr(common, "CSV_BLOCK_BYTES", 64)
    path = tmp_path / "wide.csv.gz"
    _write(path, [f"{i},{'w' * 300},{i % 3},x\n" for i in range(5)])     # a field wider than the first block
    assert common.read_table(path, COLUMNS).to_pylist() == _reference(path).to_pylist()
    threaded = [error for threads, error in read_csv_calls if threads]
    assert len(threaded) == 1 and "straddl" in threaded[0], read_csv_calls
    assert [error for threads, error in read_csv_calls if not threads][-1] is None


def test_last_record_end():
    assert last_record_end(b'1,"a\nb"\n2,"c\n') == 8     # the second newline is inside an open quote
    assert last_record_end(b'1,"a\nb') == 0
    assert last_record_end(b'1,""\n2,x') == 5            # an empty quoted field


def test_a_bad_value_in_a_late_chunk_names_its_row(tmp_path, tiny_chunks):
    path = tmp_path / "bad.csv.gz"
    rows = [f"{i},n,{i},u\n" for i in range(30)]
    rows[23] = "23,n,twenty,u\n"
    _write(path, rows)
    with pytest.raises(PrepareError) as error:
        _streamed(path)
    assert "twenty" in str(error.value) and "seq_num" in str(error.value) and "25" in str(error.value)


def test_a_missing_column_is_raised_when_the_stream_is_read(tmp_path):
    path = tmp_path / "short.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("subject_id,note\n1,a\n")
    stream = TableStream(path, COLUMNS)       # opening starts the decode; the error waits for the consumer
    with pytest.raises(PrepareError, match="seq_num"):
        list(stream)


def test_closing_an_unread_stream_stops_its_thread(tmp_path, tiny_chunks):
    path = tmp_path / "t.csv.gz"
    _write(path, ROWS * 20)
    before = threading.active_count()
    stream = TableStream(path, COLUMNS, read_ahead=1)   # its producer fills the queue and waits
    stream.close()
    assert threading.active_count() == before
