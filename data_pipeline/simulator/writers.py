"""Streaming, deterministic writers: gzip CSV with MIMIC's exact text format, parquet shards, atomic output dirs."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

GZIP_LEVEL = 1   # speed over size: synthetic tables are regenerated at will; any gzip reader reads them


class CsvGzWriter:
    """Appends pyarrow tables to one .csv.gz, rendered like the MIMIC-IV release: an unquoted header, unquoted
    values, empty fields for nulls, 'YYYY-MM-DD HH:MM:SS' timestamps. gzip mtime and file name are blanked so the
    same rows give the same bytes."""

    def __init__(self, path: Path, schema: pa.Schema, level: int = GZIP_LEVEL):
        self.path = path
        self.schema = schema
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=level, mtime=0)
        self._gz.write((",".join(schema.names) + "\n").encode())
        self._options = pacsv.WriteOptions(include_header=False, quoting_style="none")

    def write(self, table: pa.Table) -> None:
        if table.schema != self.schema:
            raise ValueError(f"{self.path.name}: schema {table.schema} differs from {self.schema}")
        if table.num_rows == 0:
            return
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer, self._options)
        self._gz.write(buffer.getbuffer())

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


class ParquetStream:
    """Appends tables to one parquet file (created on the first non-empty write)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self._writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        if self._writer is None:     # still write an empty file so readers find every expected path
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(self.schema.empty_table(), self.path, compression="zstd")
        else:
            self._writer.close()


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    os.chmod(out, 0o755)
