"""One piece of a category: validate its staged rows and write its part of each text file.

Each text file (CSV, JSON Lines, and the quarantine file) gets one deflated piece per piece
(see `archive.deflate`), streamed to staging as it is produced. Batches go through Arrow kernels
from end to end: validation, rendering, CSV writing; nothing per row in Python except for
the rare suspect rows the full validator judges.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from portability.archive.deflate import LARGE_CHUNK_BYTES, PieceDeflater, PipelinedWriter
from portability.pipeline.model import PieceResult, Plan
from portability.pipeline.progress import Progress, idle
from portability.records.rendering import RenderedBatch, csv_batch, json_lines, text_bytes
from portability.records.schemas import SchemaSet
from portability.records.validation import BatchValidator, InvalidRecords

TEXT_FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}
_CSV_OPTIONS = {"eol": "\r\n", "quoting_style": "needed"}  # RFC 4180: CRLF; text cells quoted


def csv_header(columns) -> bytes:
    import io

    sink = io.BytesIO()
    empty = pa.RecordBatch.from_arrays([pa.array([], pa.string()) for _ in columns], names=[c.name for c in columns])
    pa_csv.write_csv(empty, sink, pa_csv.WriteOptions(include_header=True, **_CSV_OPTIONS))
    return sink.getvalue()


def _write_csv_rows(rendered: RenderedBatch, writer: PipelinedWriter) -> None:
    """The batch's CSV rows, written to `writer` as one chunk (the same bytes however they are produced)."""
    # The whole batch in one pass (the writer's default is 1,024 rows a time, each growing the sink again).
    options = pa_csv.WriteOptions(include_header=False, batch_size=max(rendered.num_rows, 1), **_CSV_OPTIONS)
    pa_csv.write_csv(csv_batch(rendered), pa.PythonFile(_CsvSink(writer), mode="w"), options)


class _CsvSink:
    """Where Arrow's CSV writer puts a batch's text: its own buffer, which it reuses or frees once `write` returns.

    A large chunk (a huge value) is deflated from that buffer before `write` returns, instead of
    being copied into a stream first: one copy of the value's CSV text less at the peak. A usual
    chunk is copied, as the stream did, and deflated on the writer's thread.
    """

    closed = False

    def __init__(self, writer: PipelinedWriter):
        self._writer = writer

    def write(self, data) -> int:
        if len(data) >= LARGE_CHUNK_BYTES:
            self._writer.write_now(data)
        else:
            self._writer.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def export_piece(plan: Plan, category: str, piece: int, reader, schemas: SchemaSet, *, store, bucket: str,
                 open_sink: Callable[[str], AbstractContextManager], invalid_rows_key: str,
                 running: dict | None = None, references=(), progress: Progress | None = None) -> PieceResult:
    """Validate a piece's batches and write its deflated piece of each text file.

    `open_sink(kind)` (kind: a format or 'errors') gives the stream a piece of that file is deflated into;
    the errors stream is opened only for a piece with invalid records. `running` hashes, by
    kind, are updated with the raw bytes written. `references` are the mapping's for the
    category: a record pointing outside the account is quarantined with that reason. `progress` counts
    the rows and the piece, and times validating and writing a batch at a time.
    """
    progress = progress or idle()
    validator = BatchValidator(schemas, category, references)
    columns = validator.columns
    formats = [f for f in plan.formats if f in TEXT_FORMATS]
    rows = exported = 0
    running = running or {}
    invalid_rows: list[int] = []
    with ExitStack() as stack:
        def writer(kind: str) -> PipelinedWriter:
            pipelined = PipelinedWriter(PieceDeflater(stack.enter_context(open_sink(kind)), running.get(kind)))
            stack.callback(pipelined.stop)  # on failure too: no thread outlives the piece
            return pipelined

        writers = {fmt: writer(fmt) for fmt in formats}
        errors = None
        if piece == 0 and "csv" in writers:
            writers["csv"].write(csv_header(columns))
        validating, writing = progress.timed("validating"), progress.timed("writing")
        for batch in reader:
            with validating:
                rendered = RenderedBatch(batch, columns)
                verdict = validator.check(rendered)
            if verdict.problems:
                if plan.on_invalid == "fail":
                    row = min(verdict.problems)
                    raise InvalidRecords(_invalid_message(category, piece * plan.piece_rows + rows + row,
                                                          rendered, row, verdict.problems[row]))
                with writing:
                    if errors is None:
                        errors = writer("errors")
                    errors.write(_error_lines(rendered, verdict.problems))
                    invalid_rows += [rows + row for row in sorted(verdict.problems)]
                    rendered = rendered.filter(verdict.valid)
            with writing:
                if rendered.num_rows:
                    if "csv" in writers:
                        _write_csv_rows(rendered, writers["csv"])
                    if "jsonl" in writers:
                        writers["jsonl"].write(text_bytes(json_lines(rendered)))
            rows += batch.num_rows
            exported += rendered.num_rows
            progress.add_rows(category, batch.num_rows)
        with writing:  # the deflaters finish what they hold
            deflated_pieces = {fmt: writer.close() for fmt, writer in writers.items()}
            deflated_errors = errors.close() if errors else None
    if invalid_rows:
        # Parquet is assembled at packaging from the staged pieces; it needs to know which rows to leave out.
        store.put_bytes(bucket, invalid_rows_key, json.dumps(invalid_rows).encode(), content_type="application/json")
    progress.piece_done(category)
    return PieceResult(piece, rows, exported, len(invalid_rows), deflated_pieces, deflated_errors)


def _error_lines(rendered: RenderedBatch, problems: dict[int, list[dict]]) -> bytes:
    """errors/<category>.jsonl lines: each quarantined record with the reasons it failed."""
    rows = sorted(problems)
    records = json_lines(rendered.take(rows)).to_pylist()
    return "".join(
        '{"errors":' + json.dumps(problems[row], ensure_ascii=False) + ',"record":' + record.rstrip("\n") + "}\n"
        for row, record in zip(rows, records, strict=True)
    ).encode("utf-8")


def _invalid_message(category: str, position: int, rendered: RenderedBatch, row: int, problems: list[dict]) -> str:
    # Names the record by position and id and the rule it broke, never by its values (they are personal data).
    names = [c.name for c in rendered.columns]
    record_id = rendered.batch.column(names.index("id"))[row].as_py() if "id" in names else None
    where = ", ".join(f"{p['path']} ({p['keyword']})" for p in problems[:3])
    return (
        f"{category}: record #{position + 1}{f' (id {record_id})' if record_id is not None else ''} fails its "
        f"schema at {where}; nothing was published because on_invalid=fail. Fix the source record or export "
        "with on_invalid=quarantine."
    )


def valid_mask(rows: int, invalid_rows: list[int]) -> pa.Array:
    """A piece-long mask without the quarantined rows (for assembling Parquet)."""
    return pc.invert(pc.is_in(pa.array(range(rows), pa.int64()), value_set=pa.array(invalid_rows, pa.int64())))
