"""The command's archive, uploaded while its files are made: each big file's parts are sent as it is written.

On the staged route every piece's deflated pieces are stored in staging and packaging copies
them into the archive, so each byte is stored twice (a local S3 server spends more CPU storing
a byte than the export spends deflating it). On the command's one-pass route the archive's
multipart upload is opened before the source is read, and each text file's deflated bytes go,
as they are made, into parts at numbers reserved for that file: S3 orders parts by number, not
by arrival. Only what packaging writes around them is held back: each file's first `EDGE_BYTES`
(they share a part with the ZIP header, whose CRC and sizes are known only at the end) and its
last ones (every part but the archive's last must hold 5 MiB), or the whole of a smaller file.
They are held in local temporary files, at most 18 MiB a file and gone when the run ends: this
route runs in one process, and storing them in the bucket cost a PUT and a GET of each.

Packaging then writes the archive exactly as on the staged route, into a `PartRouter`, which
sends what it is given as parts between the sent parts and steps over those. So the
archive's bytes are the same on both routes; its SHA-256 is read back from the stored object.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

from portability.resources.readahead import read_ahead
from portability.resources.storage import MIN_PART_BYTES, ObjectStore, PartUpload, StorageError

EDGE_BYTES = MIN_PART_BYTES     # a big file's held-back head, and the least its held-back tail holds
SENT_PART_BYTES = 8 * 1024 * 1024  # a part sent while the file is written: 10,000 of them make 80 GB
MAX_PARTS = 10_000            # S3's most parts in one upload
ROUTER_NUMBERS = 8            # numbers before each file's sent parts, for what packaging writes there
FINAL_NUMBERS = 64            # numbers after every sent part: the small files, descriptions and directory
_MIN_SLOT = 64                # the fewest sent-part numbers a file gets, whatever the estimates say
_READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FileLayout:
    """Where one file's deflated bytes are: head held back, sent parts, tail held back."""

    head_bytes: int
    sent_parts: tuple[tuple[int, int], ...]  # (part number, bytes), in order
    tail_bytes: int

    @property
    def total(self) -> int:
        return self.head_bytes + sum(size for _, size in self.sent_parts) + self.tail_bytes


def allot_numbers(files: list[tuple[str, str]], weights: dict[str, float]) -> dict[tuple[str, str], range]:
    """The sent-part numbers of each (category, kind) in archive order, shared out by each category's weight.

    Every file gets `ROUTER_NUMBERS` numbers before its sent parts, so packaging can send what comes
    before them (its header and head, smaller files) as parts numbered in between.
    """
    spare = MAX_PARTS - FINAL_NUMBERS - len(files) * (ROUTER_NUMBERS + _MIN_SLOT)
    if spare < 0:
        raise ValueError(f"{len(files)} files do not fit in one upload's {MAX_PARTS} parts")
    total = sum(max(weights.get(category, 0), 1) for category, _ in files)
    ranges, number = {}, 1
    for category, kind in files:
        share = int(spare * max(weights.get(category, 0), 1) / total)
        number += ROUTER_NUMBERS
        ranges[(category, kind)] = range(number, number + _MIN_SLOT + share)
        number += _MIN_SLOT + share
    return ranges


class FileParts:
    """One text file's deflated bytes, written in order: the head and tail held back, the rest sent as parts.

    What is sent is copied straight into part-sized buffers that are reused once their part is
    sent, instead of a growing buffer cut from the front, whose churn kept faulting fresh pages in.
    """

    def __init__(self, upload: PartUpload, numbers: range, hold: Callable[[str, bytes | bytearray], None],
                 what: str, on_close: Callable[[FileLayout], None], buffers: PartBuffers | None = None):
        self._upload, self._numbers, self._hold = upload, iter(numbers), hold
        self._what, self._on_close = what, on_close
        self._buffers = buffers or PartBuffers()
        self._head = bytearray()
        self._head_bytes: int | None = None
        # A full part is sent only once EDGE_BYTES follow it: the file may end right after, and its
        # tail must fill a part. So at most one full buffer waits while the next one fills.
        self._waiting: bytearray | None = None
        self._filling: bytearray | None = None
        self._filled = 0
        self._sent_parts: list[tuple[int, int]] = []

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        if self._head_bytes is None:
            taken = min(EDGE_BYTES - len(self._head), len(view))
            self._head += view[:taken]
            view = view[taken:]
            if len(self._head) < EDGE_BYTES:
                return size
            self._hold("head", self._head)
            self._head_bytes, self._head = EDGE_BYTES, bytearray()
        while len(view):
            if self._filling is None:
                self._filling, self._filled = self._buffers.take(), 0
            taken = min(SENT_PART_BYTES - self._filled, len(view))
            self._filling[self._filled:self._filled + taken] = view[:taken]
            self._filled += taken
            view = view[taken:]
            if self._waiting is not None and self._filled >= EDGE_BYTES:
                self._send_waiting()
            if self._filled == SENT_PART_BYTES:
                self._waiting, self._filling = self._filling, None
        return size

    def close(self) -> FileLayout:
        """Hold back what is left: the tail of a big file, or the whole of a smaller one."""
        if self._head_bytes is None:
            self._head_bytes = len(self._head)
            self._hold("head", self._head)
            layout = FileLayout(self._head_bytes, (), 0)
        else:
            tail = bytearray(self._waiting or b"")
            if self._filling is not None:
                tail += memoryview(self._filling)[:self._filled]
            for buffer in (self._waiting, self._filling):
                if buffer is not None:
                    self._buffers.give_back(buffer)
            self._waiting = self._filling = None
            self._hold("tail", tail)
            layout = FileLayout(self._head_bytes, tuple(self._sent_parts), len(tail))
        self._on_close(layout)
        return layout

    def _send_waiting(self) -> None:
        number = next(self._numbers, None)
        if number is None:
            raise StorageError(
                f"{self._what} is larger than its share of the archive's {MAX_PARTS} parts (the source's row "
                "estimates were far off): run ANALYZE on the source tables, or export through the "
                "account_export DAG, which stages every piece"
            )
        buffer, self._waiting = self._waiting, None
        self._upload.send(number, buffer, sent=lambda: self._buffers.give_back(buffer))
        self._sent_parts.append((number, SENT_PART_BYTES))


class PartBuffers:
    """Part-sized buffers for the files being written, each used again once its part is sent."""

    def __init__(self):
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(SENT_PART_BYTES)

    def give_back(self, buffer: bytearray) -> None:
        with self._lock:
            self._free.append(buffer)


class ArchiveParts:
    """The archive's multipart upload, opened once the bucket is known, with each file's share of part numbers."""

    def __init__(self, store: ObjectStore, key: str):
        self._store, self._key = store, key
        self.bucket: str | None = None
        self.upload: PartUpload | None = None
        self._numbers: dict[tuple[str, str], range] = {}
        self._layouts: dict[tuple[str, str], FileLayout] = {}
        self._buffers = PartBuffers()
        self._held: dict[tuple[str, str, str], BinaryIO] = {}  # (category, kind, 'head' or 'tail') -> file
        self._lock = threading.Lock()

    def open(self, bucket: str, files: list[tuple[str, str]], weights: dict[str, float]) -> None:
        self._numbers = allot_numbers(files, weights)
        self.bucket = bucket
        self.upload = self._store.part_upload(bucket, self._key, content_type="application/zip", create_only=True)

    def file(self, category: str, kind: str) -> FileParts:
        return FileParts(self.upload, self._numbers[(category, kind)], partial(self._hold, category, kind),
                         f"{category} ({kind})",
                         on_close=lambda layout: self._layouts.__setitem__((category, kind), layout),
                         buffers=self._buffers)

    def layout(self, category: str, kind: str) -> FileLayout:
        return self._layouts[(category, kind)]

    def open_held(self, category: str, kind: str, end: str) -> BinaryIO:
        """The held-back 'head' or 'tail' of a file, from its start."""
        held = self._held[(category, kind, end)]
        held.seek(0)
        return held

    def close(self) -> None:
        """Drop the held-back heads and tails (personal data): their files vanish with them."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for file in held:
            file.close()

    def _hold(self, category: str, kind: str, end: str, data: bytes | bytearray) -> None:
        # Already unlinked: nothing is left on disk once it is closed, or if the process dies.
        held = tempfile.TemporaryFile(prefix="portability-")  # noqa: SIM115 (closed by close())
        held.write(data)
        with self._lock:
            self._held[(category, kind, end)] = held

    def router(self) -> PartRouter:
        return PartRouter(self.upload, [layout.sent_parts[0][0] for layout in self._layouts.values()
                                        if layout.sent_parts])

    def finish(self, router: PartRouter) -> tuple[int, str]:
        """Send the last part, make the object and read it back; returns its size and SHA-256."""
        router.close()
        size = self.upload.complete()
        try:
            if size != router.tell():
                raise StorageError(f"the archive's parts hold {size} bytes, not the {router.tell()} written: "
                                   "rerun the export")
            digest, stream, read = hashlib.sha256(), self._store.open(self.bucket, self._key), 0
            # The next chunk is received while this one is hashed (both release the GIL).
            with read_ahead(iter(partial(stream.read, _READ_BYTES), b"")) as chunks:
                for chunk in chunks:
                    digest.update(chunk)
                    read += len(chunk)
            if read != size:
                raise StorageError(f"the stored archive holds {read} bytes, not {size}: rerun the export")
        except BaseException:
            # Without its checksum the archive cannot be announced: it must not stay published.
            self._store.delete(self.bucket, self._key)
            raise
        return size, digest.hexdigest()

    def abort(self) -> None:
        if self.upload is not None:
            self.upload.abort()


class PartRouter:
    """A write-only stream of the archive's bytes: sent as parts around the parts already sent.

    `skip(sent_parts)` stands for bytes already sent as those parts. Everything written before a
    file's sent parts goes out as parts numbered below them; when few numbers are left before the
    next ones, parts grow instead of running out.
    """

    def __init__(self, upload: PartUpload, sent_starts: list[int]):
        self._upload = upload
        self._starts = sorted(sent_starts)  # the first number of each file's sent parts, in archive order
        self._buffer = bytearray()
        self._position = 0
        self._last_number = 0  # the highest part number used so far

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def write(self, data) -> int:
        self._buffer += data
        self._position += len(data)
        # Hold MIN_PART_BYTES back, and one number: what is left must fill the part before the next sent parts.
        while len(self._buffer) >= SENT_PART_BYTES + MIN_PART_BYTES and self._room() > 1:
            self._send(SENT_PART_BYTES)
        return len(data)

    def skip(self, sent_parts: tuple[tuple[int, int], ...]) -> None:
        """The bytes of these parts, already uploaded, come next."""
        if not sent_parts:
            return
        if not self._starts or sent_parts[0][0] != self._starts[0]:
            raise StorageError("the archive's files came out of order: this is a bug, rerun the export")
        if self._buffer:
            if len(self._buffer) < MIN_PART_BYTES:
                raise StorageError("a part before a file's sent parts is under 5 MiB: this is a bug, rerun the export")
            self._send(len(self._buffer))
        self._starts.pop(0)
        self._last_number = sent_parts[-1][0]
        self._position += sum(size for _, size in sent_parts)

    def close(self) -> None:
        if self._starts:
            raise StorageError("the archive ended before every file's sent parts: this is a bug, rerun the export")
        if self._buffer or not self._last_number:
            self._send(len(self._buffer))

    def _room(self) -> int:
        below = self._starts[0] if self._starts else MAX_PARTS + 1
        return below - 1 - self._last_number

    def _send(self, size: int) -> None:
        if self._room() < 1:
            raise StorageError(f"the archive needs more than {MAX_PARTS} parts: export through the account_export DAG")
        number = self._last_number + 1
        self._upload.send(number, bytes(memoryview(self._buffer)[:size]))
        del self._buffer[:size]
        self._last_number = number
