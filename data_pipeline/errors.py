"""The one error type of the data pipeline: bad input, reported with file, column and row."""
from __future__ import annotations

from pathlib import Path


class PrepareError(Exception):
    """Bad or inconsistent input. The message always names the file, and the column and row when known.

    ``row`` is the 1-based line number in a CSV (the header is line 1, so data row i is line i + 2 for a 0-based
    index i) or the 0-based row index in a parquet file; ``None`` when the problem is not tied to one row.
    """

    def __init__(self, file: str | Path, message: str, column: str | None = None, row: int | str | None = None):
        self.file = str(file)
        self.column = column
        self.row = row
        self.reason = message
        where = [f"file {self.file}"]
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(f"{', '.join(where)}: {message}")

    def __reduce__(self):
        # the message is built from the fields: pickle those (errors cross from prepare's worker processes)
        return (type(self), (self.file, self.reason, self.column, self.row))
