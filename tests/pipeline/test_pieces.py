"""Cutting a category's batches into pieces, and reading them ahead of the exporter."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portability.pipeline.export import cut_pieces
from portability.resources.readahead import read_ahead


def _batches(sizes: list[int]) -> list[pa.RecordBatch]:
    start, batches = 0, []
    for size in sizes:
        batches.append(pa.record_batch([pa.array(range(start, start + size), pa.int64())], names=["id"]))
        start += size
    return batches


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 12), max_size=12), piece_rows=st.integers(1, 10))
def test_pieces_hold_every_row_once_in_order(sizes, piece_rows):
    pieces = [(index, [b["id"].to_pylist() for b in batches]) for index, batches in
              cut_pieces(_batches(sizes), piece_rows)]
    assert [index for index, _ in pieces] == list(range(len(pieces)))
    rows = [row for _, piece in pieces for batch in piece for row in batch]
    assert rows == list(range(sum(sizes)))
    piece_sizes = [sum(len(b) for b in piece) for _, piece in pieces]
    assert all(size == piece_rows for size in piece_sizes[:-1])  # only the last piece is short
    assert 0 < piece_sizes[-1] <= piece_rows or piece_sizes == [0]  # an empty category: one empty piece
    assert all(batch for _, piece in pieces for batch in piece)  # no empty batches handed on


def test_read_ahead_passes_batches_and_the_readers_error():
    def failing():
        yield from _batches([3, 4])
        raise RuntimeError("connection lost")

    with read_ahead(failing()) as batches:
        got = []
        with pytest.raises(RuntimeError, match="connection lost"):
            for batch in batches:
                got.append(batch.num_rows)
    assert got == [3, 4]


def test_read_ahead_stops_reading_when_the_consumer_gives_up():
    read = []

    def endless():
        while True:
            read.append(1)
            yield _batches([1])[0]

    with pytest.raises(ValueError), read_ahead(endless(), depth=2) as batches:
        for _ in batches:
            raise ValueError("the exporter failed")
    count = len(read)
    assert count <= 5  # read ahead by at most the queue's depth (and the one being put)
