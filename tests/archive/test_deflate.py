"""Deflated pieces: a huge chunk is deflated in place and at once, and gives the same bytes as any chunk."""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.csv as pa_csv

from portability.archive import deflate
from portability.archive.deflate import FINAL_BLOCK, InflatingDigest, PieceDeflater, PipelinedWriter, combine
from portability.pipeline import pieces
from portability.records.rendering import RenderedBatch, csv_batch
from portability.records.schemas import SchemaSet, arrow_schema


def _deflated(chunks: list[bytes], pipelined: bool) -> tuple[bytes, deflate.DeflatedPiece, str]:
    sink, running = io.BytesIO(), hashlib.sha256()
    writer = PieceDeflater(sink, running)
    if pipelined:
        writer = PipelinedWriter(writer)
    for chunk in chunks:
        writer.write(chunk)
    deflated_piece = writer.close()
    return sink.getvalue(), deflated_piece, running.hexdigest()


def test_a_large_chunk_gives_the_same_deflated_piece_as_a_plain_writer(monkeypatch):
    monkeypatch.setattr(deflate, "LARGE_CHUNK_BYTES", 1000)
    chunks = [b"a,b\r\n" * 10, b'"x"' * 2000, b"small\r\n", bytes(range(256)) * 50, b"end\r\n"]
    assert _deflated(chunks, pipelined=True) == _deflated(chunks, pipelined=False)


def test_a_large_chunk_is_deflated_before_write_returns(monkeypatch):
    monkeypatch.setattr(deflate, "LARGE_CHUNK_BYTES", 1000)
    running = hashlib.sha256()
    writer = PipelinedWriter(PieceDeflater(io.BytesIO(), running))
    writer.write(b"s" * 10)          # waits on the thread
    big = bytearray(b"L" * 5000)
    writer.write(big)                # done by now: the caller may reuse the buffer
    big[:] = b"?" * 5000
    writer.close()
    assert running.hexdigest() == hashlib.sha256(b"s" * 10 + b"L" * 5000).hexdigest()


def test_csv_rows_written_from_arrows_own_buffer_are_the_streams_bytes(monkeypatch):
    columns = SchemaSet().columns("templates")
    text = {c.name: c.kind for c in columns}
    rows = [{name: 'He said "hi"\nthen =left' for name in text}, {name: "x" * 3000 for name in text},
            {name: None for name in text}]
    schema = arrow_schema(columns)
    batch = pa.RecordBatch.from_pylist(
        [{name: (i if schema.field(name).type == pa.int64() else value if schema.field(name).type == pa.string()
                 else None) for name, value in row.items()} for i, row in enumerate(rows)], schema=schema)
    rendered = RenderedBatch(batch, columns)
    stream = pa.BufferOutputStream()
    options = pa_csv.WriteOptions(include_header=False, batch_size=rendered.num_rows, **pieces._CSV_OPTIONS)
    pa_csv.write_csv(csv_batch(rendered), stream, options)
    expected = stream.getvalue().to_pybytes()
    for large in (10**9, 100):  # copied to the writer's thread; deflated from Arrow's buffer at once
        monkeypatch.setattr(pieces, "LARGE_CHUNK_BYTES", large)
        sink = io.BytesIO()
        writer = PipelinedWriter(PieceDeflater(sink))
        pieces._write_csv_rows(rendered, writer)
        deflated_piece = writer.close()
        assert (sink.getvalue(), deflated_piece) == _deflated([expected], pipelined=False)[:2]


def test_inflating_digest_inflates_a_deflate_bomb_a_megabyte_at_a_time():
    raw = b"x" * (40 * 1024 * 1024)
    sink = io.BytesIO()
    writer = PieceDeflater(sink)
    writer.write(raw)
    deflated_piece = writer.close()
    compressed = sink.getvalue() + FINAL_BLOCK
    assert len(compressed) < 100_000
    digest = InflatingDigest()
    inflated_at_most = 0
    original = digest._inflater

    class Watching:
        def __getattr__(self, name):
            return getattr(original, name)

        def decompress(self, data, max_length=0):
            nonlocal inflated_at_most
            out = original.decompress(data, max_length)
            inflated_at_most = max(inflated_at_most, len(out))
            return out

    digest._inflater = Watching()
    digest.update(compressed)
    assert digest.finish(combine([deflated_piece])) == hashlib.sha256(raw).hexdigest()
    assert inflated_at_most <= deflate.INFLATE_BYTES
