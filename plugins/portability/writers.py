"""Streaming writers of the three file formats. Each writes to a binary stream as rows arrive."""

from __future__ import annotations

import csv
import io

from portability.records import Record
from portability.schemas import Column, arrow_schema

FORMATS = ("csv", "jsonl", "parquet")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}
_BUFFER_BYTES = 1024 * 1024


class CsvWriter:
    """RFC 4180: UTF-8, CRLF line ends, a header row, fields quoted only when needed."""

    def __init__(self, sink, columns: list[Column]):
        self._columns = columns
        self._text = io.TextIOWrapper(io.BufferedWriter(sink, _BUFFER_BYTES), encoding="utf-8", newline="")
        self._csv = csv.writer(self._text, lineterminator="\r\n")
        self._csv.writerow([c.name for c in columns])

    def write(self, batch, records: list[Record], rows: list[list], valid: list[bool]) -> None:
        self._csv.writerows(
            record.csv_row(self._columns, row) for record, row, ok in zip(records, rows, valid, strict=True) if ok
        )

    def close(self) -> None:
        self._text.flush()
        self._text.detach().flush()


class JsonlWriter:
    """One JSON object per line, UTF-8, nested values as JSON."""

    def __init__(self, sink, columns: list[Column]):
        self._out = io.BufferedWriter(sink, _BUFFER_BYTES)

    def write(self, batch, records: list[Record], rows: list[list], valid: list[bool]) -> None:
        self._out.write("".join(r.json_line + "\n" for r, ok in zip(records, valid, strict=True) if ok).encode("utf-8"))

    def close(self) -> None:
        self._out.flush()


class ParquetWriter:
    """Typed columns straight from the Arrow batch; JSON values as their source text."""

    ROW_GROUP_ROWS = 128 * 1024

    def __init__(self, sink, columns: list[Column]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._writer = pq.ParquetWriter(
            pa.PythonFile(sink, mode="w"), arrow_schema(columns), compression="zstd",
            write_statistics=True, store_schema=True,
        )

    def write(self, batch, records: list[Record], rows: list[list], valid: list[bool]) -> None:
        kept = batch.filter(self._pa.array(valid, type=self._pa.bool_())) if not all(valid) else batch
        if kept.num_rows:
            self._writer.write_batch(kept, row_group_size=self.ROW_GROUP_ROWS)

    def close(self) -> None:
        self._writer.close()


WRITERS = {"csv": CsvWriter, "jsonl": JsonlWriter, "parquet": ParquetWriter}


class ErrorsWriter:
    """errors/<category>.jsonl: each quarantined record with the reasons it failed."""

    def __init__(self, sink):
        self._out = io.BufferedWriter(sink, _BUFFER_BYTES)

    def write(self, record: Record, problems: list[dict]) -> None:
        import json

        line = '{"errors":' + json.dumps(problems, ensure_ascii=False) + ',"record":' + record.json_line + "}\n"
        self._out.write(line.encode("utf-8"))

    def close(self) -> None:
        self._out.flush()
