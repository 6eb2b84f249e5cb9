"""The ZIP writer: the bytes zipfile writes on a stream without seek, entries of pre-deflated data, ZIP64."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from portability.archive.zipwriter import ZIP64_LIMIT, ZipWriter

STAMP = (2026, 12, 7, 4, 29, 31)
GIB = 1 << 30


class Stream:
    """A write-only stream without seek (as the archive's uploads), whose position may start anywhere.

    `skip(n)` moves on by n bytes that are not written here (as the command's route does for parts
    already uploaded); `view()` reads the whole back with zeros in the gaps, without holding them.
    """

    def __init__(self, start: int = 0):
        self.start, self.position = start, start
        self.chunks: list[tuple[int, bytes]] = []

    def write(self, data) -> int:
        data = bytes(data)
        self.chunks.append((self.position, data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def skip(self, size: int) -> None:
        self.position += size

    def written(self) -> bytes:
        """The bytes written, in order, gaps left out."""
        return b"".join(data for _, data in self.chunks)

    def view(self) -> Sparse:
        return Sparse(self.chunks, self.position)


class Sparse(io.RawIOBase):
    """A readable, seekable file of `size` bytes: the chunks where written, zeros elsewhere."""

    def __init__(self, chunks: list[tuple[int, bytes]], size: int):
        self._chunks, self._size, self._position = [c for c in chunks if c[1]], size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = {0: 0, 1: self._position, 2: self._size}[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._size - self._position))
        out = bytearray(count)
        for at, data in self._chunks:
            low, high = max(at, self._position), min(at + len(data), self._position + count)
            if low < high:
                out[low - self._position:high - self._position] = data[low - at:high - at]
        buffer[:count] = out
        self._position += count
        return count


def _zipfile_bytes(start: int, build) -> bytes:
    stream = Stream(start)
    with zipfile.ZipFile(stream, "w", allowZip64=True) as archive:
        build(archive)
    return stream.written()


def _info(name: str, method: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=STAMP)
    info.compress_type = method
    info.external_attr = 0o644 << 16
    return info


def _ours(start: int, build) -> bytes:
    stream = Stream(start)
    with ZipWriter(stream, date_time=STAMP, mode=0o644) as archive:
        build(archive)
    return stream.written()


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


NAMES = ["root/data/datapackage.json", "root/bag-info.txt", "rööt/dätä/ünïcode.txt"]
CONTENTS = [b"", b"x", b"BagIt-Version: 1.0\n" * 500, bytes(range(256)) * 300]


@pytest.mark.parametrize("start", [0, 12345, ZIP64_LIMIT - 100, 3 * GIB])
def test_small_deflated_entries_are_the_bytes_of_zipfile_writestr(start):
    def theirs(archive):
        for name, content in zip(NAMES, CONTENTS, strict=False):
            archive.writestr(_info(name, zipfile.ZIP_DEFLATED), content)

    def ours(archive):
        for name, content in zip(NAMES, CONTENTS, strict=False):
            archive.write_bytes(name, content)

    assert _ours(start, ours) == _zipfile_bytes(start, theirs)


@pytest.mark.parametrize("start", [0, ZIP64_LIMIT - 10, 5 * GIB])
def test_stored_streams_are_the_bytes_of_zipfile_open_with_force_zip64(start):
    parts = [b"PAR1", memoryview(b"abc" * 1000), bytearray(b"\0" * 70000), b"PAR1"]

    def theirs(archive):
        archive.writestr(_info("r/a.txt", zipfile.ZIP_DEFLATED), b"first")
        with archive.open(_info("r/data/c.parquet", zipfile.ZIP_STORED), "w", force_zip64=True) as target:
            for part in parts:
                target.write(part)
        archive.writestr(_info("r/b.txt", zipfile.ZIP_DEFLATED), b"last")

    def ours(archive):
        archive.write_bytes("r/a.txt", b"first")
        with archive.open_stored("r/data/c.parquet") as target:
            for part in parts:
                assert target.write(part) == memoryview(part).nbytes
        archive.write_bytes("r/b.txt", b"last")

    assert _ours(start, ours) == _zipfile_bytes(start, theirs)


def test_an_empty_archive_is_its_end_record_as_with_zipfile():
    assert _ours(0, lambda archive: None) == _zipfile_bytes(0, lambda archive: None) == b"PK\x05\x06" + bytes(18)


def _deflated_pieces_entry(archive: ZipWriter, name: str, data: bytes) -> bytes:
    deflated = _deflated(data)
    archive.write_deflated(name, crc32=zlib.crc32(data), raw_bytes=len(data), deflated_bytes=len(deflated),
                           copy=lambda sink: sink.write(deflated))
    return deflated


def test_pre_deflated_entries_read_back_with_zipfile_and_their_header_is_zipinfos():
    stream = Stream()
    with ZipWriter(stream, date_time=STAMP) as archive:
        _deflated_pieces_entry(archive, "r/data/contacts.csv", b"id,email\n" + b"1,a@example.com\n" * 10000)
        _deflated_pieces_entry(archive, "r/data/ünï.jsonl", b'{"a": 1}\n' * 3)
        archive.write_bytes("r/manifest.json", b"{}\n")
    with zipfile.ZipFile(stream.view()) as back:
        assert back.testzip() is None
        assert [i.filename for i in back.infolist()] == ["r/data/contacts.csv", "r/data/ünï.jsonl", "r/manifest.json"]
        assert back.read("r/data/ünï.jsonl") == b'{"a": 1}\n' * 3
        first = back.getinfo("r/data/contacts.csv")
        assert (first.flag_bits, first.compress_type, first.date_time) == (0, zipfile.ZIP_DEFLATED, STAMP[:5] + (30,))
        assert first.external_attr == 0o644 << 16
        expected = _info("r/data/contacts.csv", zipfile.ZIP_DEFLATED)
        expected.CRC, expected.file_size, expected.compress_size = first.CRC, first.file_size, first.compress_size
        header = expected.FileHeader(False)
        assert stream.written()[:len(header)] == header


def test_a_copy_that_writes_another_size_than_announced_fails():
    archive = ZipWriter(Stream(), date_time=STAMP)
    with pytest.raises(ValueError, match="3 deflated bytes were written, not the 4"):
        archive.write_deflated("r/a", crc32=0, raw_bytes=1, deflated_bytes=4, copy=lambda sink: sink.write(b"abc"))


def test_names_are_unique_and_entries_one_at_a_time():
    archive = ZipWriter(Stream(), date_time=STAMP)
    archive.write_bytes("r/a", b"")
    with pytest.raises(ValueError, match="already holds"):
        archive.write_bytes("r/a", b"")
    with archive.open_stored("r/b") as target, pytest.raises(ValueError, match="still being written"):
        target.write(b"x")
        archive.write_bytes("r/c", b"")


def test_a_failed_block_leaves_the_archive_without_its_directory():
    stream = Stream()
    with pytest.raises(RuntimeError), ZipWriter(stream, date_time=STAMP) as archive:
        archive.write_bytes("r/a", b"data")
        raise RuntimeError("the source failed")
    assert b"PK\x01\x02" not in stream.written() and b"PK\x05\x06" not in stream.written()


def _fake_deflated(archive: ZipWriter, name: str, raw_bytes: int, deflated_bytes: int) -> None:
    """An entry that claims these sizes; its data is a gap (see Stream.skip), never held."""
    archive.write_deflated(name, crc32=0x12345678, raw_bytes=raw_bytes, deflated_bytes=deflated_bytes,
                           copy=lambda sink: sink.skip(deflated_bytes))


def test_zip64_sizes_and_offsets_past_the_limit_without_writing_them():
    stream = Stream()
    sizes = [(10 * GIB, 3 * GIB),               # both sizes past the limit
             (ZIP64_LIMIT + 1, ZIP64_LIMIT),    # the raw size just past it
             (100, 80)]                         # small, at an offset past 5 GiB
    with ZipWriter(stream, date_time=STAMP) as archive:
        for number, (raw, deflated) in enumerate(sizes):
            _fake_deflated(archive, f"r/data/{number}.csv", raw, deflated)
        archive.write_bytes("r/manifest.json", b"{}\n")
        with archive.open_stored("r/data/t.parquet") as target:
            target.write(b"PAR1")
    view = stream.view()
    with zipfile.ZipFile(view) as back:
        infos = back.infolist()
        assert [(i.file_size, i.compress_size) for i in infos[:3]] == sizes
        assert infos[0].header_offset == 0
        offsets = [i.header_offset for i in infos]
        assert offsets == sorted(offsets) and offsets[2] > 5 * GIB
        assert all(i.CRC == 0x12345678 for i in infos[:3])
        assert back.read("r/manifest.json") == b"{}\n" and back.read("r/data/t.parquet") == b"PAR1"
        for info in infos[:3]:  # each local header: zipfile's own, ZIP64 extra (raw, deflated) where a size needs it
            expected = _info(info.filename, zipfile.ZIP_DEFLATED)
            expected.CRC, expected.file_size, expected.compress_size = info.CRC, info.file_size, info.compress_size
            header = expected.FileHeader(info.file_size > ZIP64_LIMIT or info.compress_size > ZIP64_LIMIT)
            view.seek(info.header_offset)
            assert view.read(len(header)) == header
        view.seek(infos[0].header_offset + 30 + len(infos[0].filename))
        assert struct.unpack("<HHQQ", view.read(20)) == (1, 16, 10 * GIB, 3 * GIB)
    # The directory starts past the limit: a ZIP64 end record and its locator come before the end record.
    tail = stream.written()[-(56 + 20 + 22):]
    end64, locator, end = tail[:56], tail[56:76], tail[76:]
    signature, _, _, _, count, size, offset, comment = struct.unpack("<4s4H2LH", end)
    assert (signature, count, offset, comment) == (b"PK\x05\x06", 5, 0xFFFFFFFF, 0)
    signature, _, end64_at, disks = struct.unpack("<4sLQL", locator)
    assert (signature, disks, end64_at) == (b"PK\x06\x07", 1, stream.tell() - len(tail))
    fields = struct.unpack("<4sQ2H2L4Q", end64)
    assert fields[0] == b"PK\x06\x06" and fields[6:8] == (5, 5)
    assert fields[9] == stream.tell() - len(tail) - fields[8] > 5 * GIB and fields[8] == size


def test_a_name_with_a_nul_character_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        ZipWriter(Stream(), date_time=STAMP).write_bytes("r/\0a", b"")
