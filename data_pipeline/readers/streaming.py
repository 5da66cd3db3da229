"""Tables read block by block, in bounded memory, decoded ahead of their consumer by a background thread.

pyarrow decompresses and parses CSV without the GIL, so while the reader turns one block into events (and
spills them), the next blocks are being decoded. A `TableStream` starts decoding when it is opened, not when
it is first iterated: a reader opens its event tables first and then reads the tables it must hold whole
(MIMIC's patients and admissions), so gzip decoding, one core per file, runs beside that read instead of
after it (measured in docs/data.md). Errors still surface in reading order: a stream hands its first error to
the consumer, which raises it, naming file, column and row as `read_table` does, when it reaches that block.
"""
from __future__ import annotations

import queue
import threading
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sparseehr.data_pipeline.errors import PrepareError
from sparseehr.data_pipeline.readers import common

STREAM_ROWS = 1 << 20   # parquet rows per streamed batch
# Chunks a stream decodes ahead of its consumer: enough that the event tables' decode overlaps the admissions
# read; bounded, so memory stays flat whatever the table's size.
READ_AHEAD_BLOCKS = 4

_END = object()


class ReadAhead:
    """Iterate `items` in a background thread, up to `depth` items ahead, from construction on; the producer's
    first error is raised in the consumer's thread. `close()` stops the producer (also when never iterated)."""

    def __init__(self, items, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(items,), daemon=True)
        self._thread.start()

    def _offer(self, item) -> bool:
        """Queue `item` unless the consumer has stopped (then drop it): a blocked put would never return."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
            self._offer(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._offer(exc)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# Decoded CSV bytes parsed per call of pyarrow's read_csv, which parses the chunk's 1 MiB blocks in parallel
# (its streaming reader, open_csv, parses one block after another: 1.6 s against 0.8 s for MIMIC-IV-volume
# diagnoses). Memory per stream is about (READ_AHEAD_BLOCKS + 2) chunks.
CSV_CHUNK_BYTES = 8 << 20
CSV_PARSE_BLOCK_BYTES = 1 << 20


def last_record_end(buffer: bytes) -> int:
    """Index just past the last newline of `buffer` that ends a CSV record (not one inside a quoted field), or 0.
    `buffer` starts at a record boundary; a quote inside a quoted field is doubled, so a newline is outside
    every quoted field exactly when an even number of quotes precede it.

    >>> last_record_end(b'a,b\\n1,"x\\ny"\\n2,"z') , last_record_end(b'1,"x\\ny')
    (12, 0)
    """
    end = buffer.rfind(b"\n")
    quotes = buffer.count(b'"', 0, end) if end >= 0 else 0
    while end >= 0:
        if quotes % 2 == 0:
            return end + 1
        previous = buffer.rfind(b"\n", 0, end)
        quotes -= buffer.count(b'"', previous + 1, end)
        end = previous
    return 0


def _record_chunks(source, chunk_bytes: int):
    """The stream's bytes in pieces of about `chunk_bytes`, each ending at a record boundary (a record longer
    than a chunk makes its piece longer)."""
    carry = b""
    while True:
        data = source.read(chunk_bytes)
        if not data:
            if carry:
                yield carry            # the last record, without a final newline
            return
        buffer = carry + data if carry else data
        cut = last_record_end(buffer)
        if cut == 0:
            carry = buffer
            continue
        yield buffer[:cut]
        carry = buffer[cut:]


def _lines_fit(chunk: bytes, block: int) -> bool:
    """True when no line of `chunk` is longer than `block` bytes: a line longer than `block` would contain a whole
    aligned window of `block // 2` bytes, so it is enough that each such window holds a newline (a few finds)."""
    half = max(block // 2, 1)
    return all(chunk.find(b"\n", start, start + half) >= 0 for start in range(0, len(chunk) - half + 1, half))


def _parse_chunk(chunk: bytes, header: list[str], convert: pacsv.ConvertOptions) -> pa.Table:
    """One record-aligned chunk as a table. Blocks are parsed in parallel only when no value can straddle a
    block boundary (no quote in the chunk, no line longer than a block): pyarrow 15-18's threaded read_csv
    hangs the process after a handful of "straddling object" errors (seen with make test-oldest), so the
    threaded call must never fail that way. Otherwise the chunk is one block, parsed on this thread; it ends
    at a record boundary, so nothing can straddle."""
    parallel = b'"' not in chunk and _lines_fit(chunk, CSV_PARSE_BLOCK_BYTES)
    options = pacsv.ReadOptions(column_names=header, use_threads=parallel,
                                block_size=CSV_PARSE_BLOCK_BYTES if parallel else max(len(chunk), 1))
    return pacsv.read_csv(pa.BufferReader(chunk), convert_options=convert, read_options=options)


def _csv_tables(path: Path, columns: dict[str, pa.DataType], header_out: list):
    """The header check (a PrepareError for a missing column), then the CSV's data records as tables, in file
    order; runs in the producer thread."""
    header, convert = common._csv_convert_options(path, columns)
    header_out.append(header)
    with common.open_decoded(path) as source:
        source.readline()             # the header, checked above
        for chunk in _record_chunks(source, CSV_CHUNK_BYTES):
            yield _parse_chunk(chunk, header, convert)


class TableStream:
    """`read_table`, streamed: iterating yields (offset of the block's first data row, block table) in file
    order, so a table of any size is read in bounded memory. A CSV starts decoding, `read_ahead` blocks deep,
    when the stream is made. Close it (or iterate it to the end) to stop its thread."""

    def __init__(self, path: Path, columns: dict[str, pa.DataType], not_null: tuple[str, ...] = (),
                 read_ahead: int = 2) -> None:
        self.path, self.columns, self.not_null = path, columns, not_null
        self._header: list = []
        self._ahead = None
        if path.suffix != ".parquet":
            self._ahead = ReadAhead(_csv_tables(path, columns, self._header), read_ahead)

    def __iter__(self):
        try:
            yield from (self._parquet() if self._ahead is None else self._csv())
        finally:
            self.close()

    def _csv(self):
        done = 0
        try:
            for table in self._ahead:
                common._check_not_null(self.path, table, self.not_null, csv_rows=True, offset=done)
                yield done, table
                done += table.num_rows
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as exc:
            common._raise_located(self.path, self.columns, exc, self._header[0])

    def _parquet(self):
        path, columns = self.path, self.columns
        try:
            handle = pq.ParquetFile(path)
            names = handle.schema_arrow.names
        except (pa.ArrowInvalid, OSError) as exc:
            raise PrepareError(path, f"cannot read parquet ({exc})") from exc
        for name in columns:
            if name not in names:
                raise PrepareError(path, f"required column is missing (file has {names})", column=name)
        offset = 0
        try:
            for batch in handle.iter_batches(batch_size=STREAM_ROWS, columns=list(columns)):
                try:
                    table = pa.Table.from_arrays([batch.column(n).cast(t) for n, t in columns.items()],
                                                 names=list(columns))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    common.read_parquet_columns(path, columns, self.not_null)   # raises, naming the row
                    raise
                common._check_not_null(path, table, self.not_null, csv_rows=False, offset=offset)
                yield offset, table
                offset += table.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise PrepareError(path, f"cannot read parquet ({exc})") from exc

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()


def iter_table(path: Path, columns: dict[str, pa.DataType], not_null: tuple[str, ...] = ()):
    """A TableStream opened and iterated at once (decoding 2 blocks ahead)."""
    yield from TableStream(path, columns, not_null)
