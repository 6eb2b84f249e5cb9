"""A small ZIP writer for a stream that cannot seek, taking entries whose deflated bytes are already made.

The standard `zipfile` cannot take compressed data through its public API, and the archive's text
files are the concatenation of deflated pieces (see `archive.deflate`). This module writes the whole
archive, byte for byte as `zipfile.ZipFile(sink, "w", allowZip64=True)` wrote it on a stream
without `seek` (Python 3.11), so archives stay the same as before it existed:

- an entry whose deflated bytes, CRC-32 and sizes are known up front (`write_deflated`): a local
  file header that holds the CRC and sizes (no data descriptor), then the bytes as given;
- a small entry deflated here (`write_bytes`, as `ZipFile.writestr`): the header's CRC and sizes
  are zero, flag bit 3 is set and a data descriptor follows the data, zlib's default level;
- a stored entry streamed in (`open_stored`, as `ZipFile.open(info, "w", force_zip64=True)`):
  the same with a ZIP64 header extra (sizes zero) and a ZIP64 data descriptor;
- the central directory, a ZIP64 end record and locator if needed, the end record.

ZIP64 takes over at zipfile's threshold, 2**31 - 1 bytes (not 4 GiB): a size or offset above it
goes into a ZIP64 extra field (id 1) and its 32-bit field holds 0xFFFFFFFF. Offsets are the sink's
own `tell()`, which may move past bytes written elsewhere (the command's route skips parts that are
already uploaded). Every entry has one date and time (the archive has no clock reading of its
own), Unix as the system that made it, and the given permissions; nothing has a comment.
Specification: PKWARE's APPNOTE.TXT, sections 4.3 and 4.5.3.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ZIP64_LIMIT = (1 << 31) - 1  # zipfile's threshold for ZIP64 fields
_FILECOUNT_LIMIT = (1 << 16) - 1
_DEFAULT_VERSION = 20  # version needed to extract: deflate
_ZIP64_VERSION = 45
_UNIX = 3  # "version made by": upper byte

STORED, DEFLATED = 0, 8
_DATA_DESCRIPTOR = 0x08  # general purpose flag bit 3: CRC and sizes follow the data
_UTF8_NAME = 0x800       # general purpose flag bit 11: the name is UTF-8

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_LOCATOR = struct.Struct("<4sLQL")
_DESCRIPTOR = struct.Struct("<LLLL")
_DESCRIPTOR64 = struct.Struct("<LLQQ")
_ZIP64_SIZES = struct.Struct("<HHQQ")  # the local header's ZIP64 extra: id 1, 16 bytes, raw size, compressed size
_DESCRIPTOR_SIGNATURE = 0x08074B50


@dataclass
class _Entry:
    name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int
    version: int  # both "version made by" (lower byte) and "version needed to extract"


class ZipWriter:
    """Writes a ZIP archive to `sink` (`write` and `tell`; never seeks); `close` writes its directory.

    As a context manager, the directory is written only if the block ends without an exception:
    a failed archive is left unfinished, never made to look whole.
    """

    def __init__(self, sink, *, date_time: tuple[int, int, int, int, int, int], mode: int = 0o644):
        if date_time[0] < 1980:
            raise ValueError("ZIP does not support timestamps before 1980")
        self._sink = sink
        year, month, day, hour, minute, second = date_time
        self._dosdate = (year - 1980) << 9 | month << 5 | day
        self._dostime = hour << 11 | minute << 5 | second // 2
        self._external_attr = mode << 16
        self._entries: list[_Entry] = []
        self._names: set[bytes] = set()
        self._writing = False
        self._closed = False

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def tell(self) -> int:
        return self._sink.tell()

    def write_deflated(self, name: str, *, crc32: int, raw_bytes: int, deflated_bytes: int,
                       copy: Callable[[object], None]) -> None:
        """An entry of already deflated data: `copy(sink)` writes exactly its `deflated_bytes` bytes.

        The CRC and sizes go into the local header; `copy` may also move the sink's position past
        bytes that are put in place by other means, as long as `tell()` then counts them.
        """
        zip64 = raw_bytes > ZIP64_LIMIT or deflated_bytes > ZIP64_LIMIT
        entry = self._local_header(name, DEFLATED, 0, crc32, deflated_bytes, raw_bytes, zip64)
        start = self._sink.tell()
        self._writing = True
        try:
            copy(self._sink)
        finally:
            self._writing = False
        written = self._sink.tell() - start
        if written != deflated_bytes:
            raise ValueError(f"{name}: {written} deflated bytes were written, not the {deflated_bytes} announced")
        self._entries.append(entry)

    def write_bytes(self, name: str, data: bytes) -> None:
        """A small entry deflated here (zlib's default level), as `ZipFile.writestr` writes it."""
        zip64 = len(data) * 1.05 > ZIP64_LIMIT  # zipfile's margin: deflate may grow the data a little
        entry = self._local_header(name, DEFLATED, _DATA_DESCRIPTOR, 0, 0, 0, zip64)
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        deflated = compressor.compress(data) + compressor.flush()
        self._sink.write(deflated)
        self._finish_described(entry, zlib.crc32(data), len(deflated), len(data), zip64)

    @contextmanager
    def open_stored(self, name: str) -> Iterator[_StoredEntry]:
        """A stored (uncompressed) entry written as a stream, with ZIP64 fields whatever its size.

        As `ZipFile.open(info, "w", force_zip64=True)`; the entry is complete when the block ends.
        """
        entry = self._local_header(name, STORED, _DATA_DESCRIPTOR, 0, 0, 0, True)
        target = _StoredEntry(self._sink)
        self._writing = True
        try:
            yield target
        finally:
            self._writing = False
            target.closed = True
        self._finish_described(entry, target.crc, target.size, target.size, True)

    def close(self) -> None:
        """The central directory and end records (an archive without entries is its end record); the sink stays open."""
        if self._closed:
            return
        if self._writing:
            raise ValueError("an entry is still being written")
        self._closed = True
        write = self._sink.write
        start = self._sink.tell()
        for entry in self._entries:
            extra = []
            compressed, size, offset = entry.compressed, entry.size, entry.offset
            if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
                extra += [size, compressed]
                size = compressed = 0xFFFFFFFF
            if offset > ZIP64_LIMIT:
                extra.append(offset)
                offset = 0xFFFFFFFF
            extra_field = struct.pack(f"<HH{len(extra)}Q", 1, 8 * len(extra), *extra) if extra else b""
            version = max(_ZIP64_VERSION, entry.version) if extra else entry.version
            write(_CENTRAL_HEADER.pack(b"PK\x01\x02", version, _UNIX, version, 0, entry.flags, entry.method,
                                       self._dostime, self._dosdate, entry.crc, compressed, size,
                                       len(entry.name), len(extra_field), 0, 0, 0, self._external_attr, offset))
            write(entry.name)
            write(extra_field)
        end = self._sink.tell()
        count, directory_bytes = len(self._entries), end - start
        if count > _FILECOUNT_LIMIT or start > ZIP64_LIMIT or directory_bytes > ZIP64_LIMIT:
            write(_END64.pack(b"PK\x06\x06", 44, _ZIP64_VERSION, _ZIP64_VERSION, 0, 0, count, count,
                              directory_bytes, start))
            write(_END64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1))
            count, directory_bytes, start = (min(count, 0xFFFF), min(directory_bytes, 0xFFFFFFFF),
                                             min(start, 0xFFFFFFFF))
        write(_END.pack(b"PK\x05\x06", 0, 0, count, count, directory_bytes, start, 0))
        if hasattr(self._sink, "flush"):
            self._sink.flush()

    def _local_header(self, name: str, method: int, flags: int, crc: int, compressed: int, size: int,
                      zip64: bool) -> _Entry:
        if self._closed:
            raise ValueError("the archive is already closed")
        if self._writing:
            raise ValueError("another entry is still being written")
        if "\0" in name:
            raise ValueError(f"an entry name holds a NUL character: {name!r}")
        try:
            encoded = name.encode("ascii")
        except UnicodeEncodeError:
            encoded, flags = name.encode("utf-8"), flags | _UTF8_NAME
        if encoded in self._names:
            raise ValueError(f"the archive already holds {name!r}")
        self._names.add(encoded)
        entry = _Entry(encoded, flags, method, crc, compressed, size, self._sink.tell(),
                       _ZIP64_VERSION if zip64 else _DEFAULT_VERSION)
        extra = b""
        if flags & _DATA_DESCRIPTOR:
            crc = compressed = size = 0  # they follow the data
        if zip64:
            extra = _ZIP64_SIZES.pack(1, 16, size, compressed)
            compressed = size = 0xFFFFFFFF
        self._sink.write(_LOCAL_HEADER.pack(b"PK\x03\x04", entry.version, 0, flags, method, self._dostime,
                                            self._dosdate, crc, compressed, size, len(encoded), len(extra))
                         + encoded + extra)
        return entry

    def _finish_described(self, entry: _Entry, crc: int, compressed: int, size: int, zip64: bool) -> None:
        """The data descriptor after an entry's data, and the entry's CRC and sizes for the directory."""
        if not zip64 and (size > ZIP64_LIMIT or compressed > ZIP64_LIMIT):
            raise ValueError(f"{entry.name.decode('utf-8')}: {size} bytes need ZIP64 fields its header lacks")
        descriptor = _DESCRIPTOR64 if zip64 else _DESCRIPTOR
        self._sink.write(descriptor.pack(_DESCRIPTOR_SIGNATURE, crc, compressed, size))
        entry.crc, entry.compressed, entry.size = crc, compressed, size
        self._entries.append(entry)


class _StoredEntry:
    """The write-only stream of a stored entry: its bytes go to the sink as they are, counted and checksummed."""

    def __init__(self, sink):
        self._sink = sink
        self.crc = 0
        self.size = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("I/O operation on a closed entry")
        size = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
        self.crc = zlib.crc32(data, self.crc)
        self.size += size
        self._sink.write(data)
        return size

    def flush(self) -> None:
        pass
