"""Big text files built from independently deflated pieces, the technique pigz uses.

Each piece of a file (a fixed range of rows) is compressed on its own and ends with a sync
flush, which leaves the deflate stream byte-aligned and open. Pieces can therefore be
compressed by different tasks in any order, and their concatenation, closed by one empty
final block, is a single valid deflate stream: the ZIP entry of the whole file. The CRC-32
of the whole file is combined from the pieces' CRCs, so nothing is compressed twice.

Compression is ISA-L's deflate (python-isal): much faster than zlib at a similar ratio, and
readable by any inflater. Its output depends only on the input (and the CPU family's code path),
so the same rows give the same bytes however the pieces are spread over tasks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from isal import isal_zlib

LEVEL = 2                  # ISA-L's level 2: near level 3's ratio on our text at a fraction of its time
FINAL_BLOCK = b"\x03\x00"  # an empty, final, fixed-Huffman block: closes the concatenated stream
INFLATE_BYTES = 1024 * 1024           # the most InflatingDigest inflates at once
LARGE_CHUNK_BYTES = 16 * 1024 * 1024  # a chunk this big is deflated before PipelinedWriter.write returns


@dataclass(frozen=True)
class DeflatedPiece:
    """One compressed piece: its raw length and CRC-32, and its compressed length."""

    raw_bytes: int
    crc32: int
    deflated_bytes: int

    def to_dict(self) -> dict:
        return {"raw_bytes": self.raw_bytes, "crc32": self.crc32, "deflated_bytes": self.deflated_bytes}


class PieceDeflater:
    """Deflates one piece into `sink`, keeping the raw length and CRC-32 (and updating `running`, a hash, if given)."""

    def __init__(self, sink, running=None):
        self._sink = sink
        self._running = running
        self._compressor = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, -15)
        self._raw = self._deflated = self._crc = 0

    def write(self, data) -> None:
        if not len(data):
            return
        self._crc = isal_zlib.crc32(data, self._crc)
        self._raw += len(data)
        if self._running is not None:
            self._running.update(data)
        self._emit(self._compressor.compress(data))

    def close(self) -> DeflatedPiece:
        self._emit(self._compressor.flush(isal_zlib.Z_SYNC_FLUSH))
        return DeflatedPiece(self._raw, self._crc, self._deflated)

    def _emit(self, data: bytes) -> None:
        if data:
            self._sink.write(data)
            self._deflated += len(data)


class PipelinedWriter:
    """A PieceDeflater fed from another thread: the caller hands over raw bytes and goes on with the next batch.

    ISA-L, CRC-32 and SHA-256 release the GIL, so one file's deflating and hashing run beside the
    Arrow work of the next batch and the other files' deflating. Bytes keep their order: each
    writer has one thread. At most `depth` chunks wait, so memory stays bounded. A chunk of
    `LARGE_CHUNK_BYTES` or more (a batch holding a huge value) is deflated before `write` returns,
    so that it is freed before the caller renders the next one: a huge value is then held in one
    rendered form at a time, not in several at once.
    """

    def __init__(self, writer: PieceDeflater, depth: int = 1):
        import queue
        import threading

        self._writer = writer
        self._chunks: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="deflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(data)
                except BaseException as exc:  # raised in the caller's thread at its next write or close
                    self._error = exc
            data = None  # freed now, not when the next chunk comes
            self._chunks.task_done()

    def write(self, data) -> None:
        """Deflate `data` after what waits; a large chunk is done before this returns (see `write_now`)."""
        if len(data) >= LARGE_CHUNK_BYTES:
            self.write_now(data)
            return
        self._raise_if_failed()
        if len(data):
            self._chunks.put(data)

    def write_now(self, data) -> None:
        """Deflate `data` in this thread, after what waits: once this returns the caller may free or reuse it."""
        self._chunks.join()  # the thread is idle afterwards, waiting for the next chunk
        self._raise_if_failed()
        self._writer.write(data)

    def close(self) -> DeflatedPiece:
        self.stop()
        self._raise_if_failed()
        return self._writer.close()

    def stop(self) -> None:
        """Let the thread finish what it holds and end; safe to call more than once."""
        if self._thread.is_alive():
            self._chunks.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def combine(deflated_pieces: list[DeflatedPiece]) -> DeflatedPiece:
    """The whole file's raw length, CRC-32 and compressed length (with the final block)."""
    crc = raw = deflated = 0
    for deflated_piece in deflated_pieces:
        crc = isal_zlib.crc32_combine(crc, deflated_piece.crc32, deflated_piece.raw_bytes)
        raw += deflated_piece.raw_bytes
        deflated += deflated_piece.deflated_bytes
    return DeflatedPiece(raw, crc, deflated + len(FINAL_BLOCK))


class InflatingDigest:
    """Inflates the compressed stream as it passes, for the file's SHA-256 and a CRC/length check."""

    def __init__(self):
        self._inflater = isal_zlib.decompressobj(-15)
        self._sha256 = hashlib.sha256()
        self._crc = self._raw = 0

    def update(self, compressed: bytes) -> None:
        # At most INFLATE_BYTES at a time: a megabyte of deflated text can stand for a gigabyte.
        data = self._inflater.decompress(compressed, INFLATE_BYTES)
        while True:
            self._sha256.update(data)
            self._crc = isal_zlib.crc32(data, self._crc)
            self._raw += len(data)
            if not self._inflater.unconsumed_tail:
                return
            data = self._inflater.decompress(self._inflater.unconsumed_tail, INFLATE_BYTES)

    def finish(self, expected: DeflatedPiece) -> str:
        """The SHA-256 of the raw file, after checking it is exactly the bytes the pieces reported."""
        tail = self._inflater.flush()
        if tail:
            self.update(tail)
        if (self._raw, self._crc) != (expected.raw_bytes, expected.crc32) or not self._inflater.eof:
            raise ValueError(
                f"staged pieces inflate to {self._raw} bytes with CRC {self._crc:08x}, but the pieces reported "
                f"{expected.raw_bytes} bytes with CRC {expected.crc32:08x}: a staged object changed; rerun the export"
            )
        return self._sha256.hexdigest()
