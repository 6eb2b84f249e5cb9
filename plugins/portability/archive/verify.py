"""Checking an archive as its recipient would: bag, checksums, manifest, counts and every record.

It trusts nothing but the archive itself: records are checked against the schemas inside it.

The ZIP is read once, entry by entry, without extracting it: each file is inflated in chunks
(ISA-L) on a reading thread that also takes its CRC-32 and digests, while this thread checks
what the chunks hold. JSON Lines records are decoded a block of lines at a time by `msgspec`
into typed columns (JSON values kept as their text, which msgspec has checked is JSON), built
into Arrow batches and judged by the export's own columnar validator (`validation.py`), which
hands the rows it cannot clear to `jsonschema`. Lines that do not decode into the record's
shape (a missing or unknown key, a value of another type, a number beyond int64, text that is
not JSON) are judged by `jsonschema` one by one, so every verdict and reason is jsonschema's.
Parquet files are read a row group at a time and judged the same way; CSV rows are counted by
a vectorised scan that knows RFC 4180 quoting. Memory stays bounded by a few blocks of a few
MiB (or one record, if a record is larger).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated

from portability.records.schemas import STRING, TIMESTAMP, Column, SchemaSet

_CHUNK = 1024 * 1024            # compressed bytes read at a time, and download chunks
_INFLATED = 4 * 1024 * 1024     # at most this many inflated bytes from one call, so a bomb cannot swell memory
_BLOCK = 4 * 1024 * 1024        # JSON Lines decoded and judged a block of about this many bytes at a time
_PARQUET_ROWS = 16_384
_TAG_LIMIT = 64 * 1024 * 1024   # a tag file (manifest.json, bagit.txt, ...) bigger than this is not ours
_EXAMPLES = 3                   # invalid records described per file
_MESSAGE_LIMIT = 500
_LISTED = 50                    # problems listed in the error
_LOCAL_HEADER = struct.Struct("<4s22xHH")
_INT64 = (-(2**63), 2**63 - 1)


class VerificationError(RuntimeError):
    """The archive is not what its manifest says; the message lists what is wrong.

    `report` is what was checked (as `verify` returns it) when the whole archive could be read.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


class _Damaged(Exception):
    """A ZIP entry cannot be read back as written (CRC-32, size or deflate stream)."""


# Told how far verifying has got: (bytes done, bytes in all or None, stage: "downloading" or "checking").
Watch = Callable[[int, int | None, str], None]
_WATCH_SECONDS = 0.25  # the most often a watcher is told


def verify(path_or_url: str, on_progress: Watch | None = None) -> dict:
    """Verify a local archive or a link to one; returns a report, raises VerificationError.

    `on_progress` hears the bytes downloaded, then the payload's bytes checked (inflated), a few times a second.
    """
    with _local_copy(path_or_url, on_progress) as archive_path:
        return verify_archive(archive_path, on_progress)


class _Told:
    """Counts bytes for a watcher and tells it at most every `_WATCH_SECONDS`, and at the end."""

    def __init__(self, watch: Watch | None, total: int | None, stage: str):
        import time

        self._watch, self.total, self.stage, self.done = watch, total, stage, 0
        self._clock = time.monotonic
        self._next = 0.0

    def add(self, count: int) -> None:
        self.done += count
        if self._watch is not None and self._clock() >= self._next:
            self._next = self._clock() + _WATCH_SECONDS
            self._watch(self.done, self.total, self.stage)

    def end(self) -> None:
        if self._watch is not None:
            self._watch(self.done, self.total, self.stage)


@contextmanager
def _local_copy(path_or_url: str, on_progress: Watch | None = None):
    if not path_or_url.startswith(("http://", "https://")):
        path = Path(path_or_url)
        if not path.is_file():
            raise VerificationError(f"no archive at {path}: give the path of the .zip or its download link")
        yield path
        return
    import urllib.error
    import urllib.request

    with tempfile.NamedTemporaryFile(prefix="portability-download-", suffix=".zip") as target:
        try:
            with urllib.request.urlopen(path_or_url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                told = _Told(on_progress, int(length) if length and length.isdigit() else None, "downloading")
                while chunk := response.read(_CHUNK):
                    target.write(chunk)
                    told.add(len(chunk))
                told.end()
        except urllib.error.HTTPError as exc:
            # The URL is a bearer credential: the message names the status, never the link.
            raise VerificationError(
                f"the download link was refused (HTTP {exc.code}): it may have expired; "
                "ask for a fresh one with 'portability link EXPORT_ID'"
            ) from None
        except urllib.error.URLError as exc:
            raise VerificationError(f"the download link could not be reached: {exc.reason}") from None
        target.flush()
        yield Path(target.name)


# --- the ZIP, read in place -------------------------------------------------------------------------


class _Zip:
    """The archive's entries under its one root folder, read straight from the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise VerificationError(f"{path.name} is not a ZIP archive") from None
        with archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
        names = [info.filename for info in infos]
        roots = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
        if len(roots) != 1:
            raise VerificationError(f"the archive must hold one folder, it holds {sorted(roots)[:5]}")
        for name in names:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or "\\" in name:
                raise VerificationError(f"unsafe path in archive: {name!r}")
        self.root = roots.pop()
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            relative = info.filename[len(self.root) + 1:]
            if relative in self.entries:
                raise VerificationError(f"the archive holds {info.filename!r} twice")
            self.entries[relative] = info

    def chunks(self, relative: str, digests: Iterable = ()) -> Iterator[bytes]:
        """The entry's bytes in chunks of at most a few MiB, each passed to `digests` on the way.

        Raises _Damaged at the end (or where the stream breaks) if the entry is not what the
        ZIP's directory says: its CRC-32 or size differs, or its deflate stream is broken.
        """
        info = self.entries[relative]
        if info.flag_bits & 0x1:
            raise _Damaged("it is encrypted")
        crc, size = 0, 0
        with open(self.path, "rb") as stream:
            for chunk in self._raw_chunks(stream, info):
                crc = _crc32(chunk, crc)
                size += len(chunk)
                if size > info.file_size:  # stop a deflate bomb early, not after inflating all of it
                    raise _Damaged(f"it inflates to more than the {info.file_size} bytes its ZIP entry says")
                for digest in digests:
                    digest.update(chunk)
                yield chunk
        if size != info.file_size:
            raise _Damaged(f"it holds {size} bytes, its ZIP entry says {info.file_size}")
        if crc != info.CRC:
            raise _Damaged("its CRC-32 differs from its ZIP entry's")

    def _raw_chunks(self, stream, info: zipfile.ZipInfo) -> Iterator[bytes]:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            yield from self._other_method(info)
            return
        stream.seek(self.data_offset(stream, info))
        left = info.compress_size
        inflater = _inflate().decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
        while left:
            data = stream.read(min(_CHUNK, left))
            if not data:
                raise _Damaged("the archive ends inside it")
            left -= len(data)
            if inflater is None:
                yield data
                continue
            while True:
                try:
                    out = inflater.decompress(data, _INFLATED)
                except Exception as exc:  # zlib.error, isal_zlib.error
                    raise _Damaged(f"its deflate stream is broken ({exc})") from None
                if out:
                    yield out
                data = inflater.unconsumed_tail
                if not data and len(out) < _INFLATED:
                    break
        if inflater is not None:
            if out := inflater.flush():
                yield out
            if not inflater.eof:
                raise _Damaged("its deflate stream is cut short")

    def _other_method(self, info: zipfile.ZipInfo) -> Iterator[bytes]:
        # bzip2, lzma: not what the export writes, but a valid ZIP; zipfile checks the CRC itself.
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(info) as entry:
                while chunk := entry.read(_INFLATED):
                    yield chunk
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
            raise _Damaged(str(exc)) from None

    def data_offset(self, stream, info: zipfile.ZipInfo) -> int:
        stream.seek(info.header_offset)
        header = stream.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise _Damaged("its local header is missing")
        _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length

    def read(self, relative: str, digests: Iterable = ()) -> bytes:
        """A small entry (a tag file, a schema) in full."""
        if self.entries[relative].file_size > _TAG_LIMIT:
            raise VerificationError(f"{relative} is {self.entries[relative].file_size} bytes, too big for its role")
        try:
            return b"".join(self.chunks(relative, digests))
        except _Damaged as exc:
            raise VerificationError(f"{relative} cannot be read: {exc}") from None


def _inflate():
    try:
        from isal import isal_zlib  # ISA-L: inflates faster than zlib, with the same API

        return isal_zlib
    except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
        import zlib

        return zlib


def _crc32(data, value: int) -> int:
    return _inflate().crc32(data, value)


class _Window:
    """A read-only, seekable file over a stored ZIP entry's bytes: Parquet is read in place."""

    def __init__(self, path: Path, start: int, size: int):
        self._stream = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._start, self._size, self._position = start, size, 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = min(max(base + offset, 0), self._size)
        return self._position

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._position
        size = left if size is None or size < 0 else min(size, left)
        self._stream.seek(self._start + self._position)
        data = self._stream.read(size)
        self._position += len(data)
        return data

    def close(self) -> None:
        self._stream.close()
        self.closed = True


# --- the bag ------------------------------------------------------------------------------------------


@dataclass
class _Bag:
    """What the bag's tag files declare."""

    payload: dict[str, dict[str, str]] = field(default_factory=dict)   # path -> algorithm -> digest
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    algorithms: list[str] = field(default_factory=list)
    oxum: tuple[int, int] | None = None


def _read_bag(archive: _Zip, problems: list[str]) -> _Bag:
    if "bagit.txt" not in archive.entries:
        raise VerificationError("the BagIt bag is invalid: bagit.txt is missing")
    declaration = _tag_fields(archive.read("bagit.txt"))
    for name in ("BagIt-Version", "Tag-File-Character-Encoding"):
        if name not in declaration:
            raise VerificationError(f"the BagIt bag is invalid: bagit.txt does not declare {name}")
    bag = _Bag()
    manifests = sorted(n for n in archive.entries if re.fullmatch(r"manifest-[a-z0-9]+\.txt", n))
    if not manifests:
        raise VerificationError("the BagIt bag is invalid: it has no payload manifest (manifest-sha256.txt)")
    for name in manifests:
        algorithm = name.removeprefix("manifest-").removesuffix(".txt")
        _check_algorithm(algorithm, name)
        bag.algorithms.append(algorithm)
        for path, digest in _manifest_lines(archive.read(name), name):
            bag.payload.setdefault(path, {})[algorithm] = digest
    for name in sorted(n for n in archive.entries if re.fullmatch(r"tagmanifest-[a-z0-9]+\.txt", n)):
        algorithm = name.removeprefix("tagmanifest-").removesuffix(".txt")
        _check_algorithm(algorithm, name)
        for path, digest in _manifest_lines(archive.read(name), name):
            bag.tags.setdefault(path, {})[algorithm] = digest
    if "bag-info.txt" in archive.entries:
        oxum = _tag_fields(archive.read("bag-info.txt")).get("Payload-Oxum")
        if oxum is not None:
            match = re.fullmatch(r"(\d+)\.(\d+)", oxum.strip())
            if match is None:
                problems.append(f"bag-info.txt: Payload-Oxum {oxum!r} is not <bytes>.<files>")
            else:
                bag.oxum = int(match[1]), int(match[2])
    return bag


def _check_algorithm(algorithm: str, name: str) -> None:
    if algorithm not in hashlib.algorithms_available:
        raise VerificationError(f"the BagIt bag is invalid: {name} uses {algorithm!r}, which cannot be checked")


def _tag_fields(data: bytes) -> dict[str, str]:
    fields = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            fields[name.strip()] = value.strip()
    return fields


def _manifest_lines(data: bytes, name: str) -> Iterator[tuple[str, str]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError(f"the BagIt bag is invalid: {name} is not UTF-8") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        entry = line.split(None, 1)
        if len(entry) != 2:
            raise VerificationError(f"the BagIt bag is invalid: {name} line {number} is not '<digest>  <path>'")
        digest, path = entry
        # RFC 8493 2.1.3: CR, LF and % in paths are percent-encoded.
        path = re.sub(r"%(0[AaDd]|25)", lambda m: chr(int(m[1], 16)), path)
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise VerificationError(f"the BagIt bag is invalid: {name} names an unsafe path {path!r}")
        yield path, digest.lower()


# --- records -------------------------------------------------------------------------------------------


class _ArchiveSchemas(SchemaSet):
    """A `SchemaSet` made of one record schema from the archive (self-contained: its references are
    bundled under `$defs`), for the validator. With `timestamps_as_text`, date-time columns are
    plain strings: JSON Lines holds their text, which is what the schema's pattern judges."""

    def __init__(self, schema: dict, timestamps_as_text: bool):  # no folder: the one document is the archive's
        self.root = None
        self._schema, self._timestamps_as_text = schema, timestamps_as_text

    @cached_property
    def registry(self):
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        resource = DRAFT202012.create_resource(self._schema)
        return Registry().with_resource(self._schema.get("$id", ""), resource).crawl()

    def document(self, relative_path: str) -> dict:
        return self._schema

    def record(self, category: str) -> dict:
        return self._schema

    def columns(self, category: str) -> list[Column]:
        columns = super().columns(category)
        if self._timestamps_as_text:
            columns = [replace(c, kind=STRING) if c.kind == TIMESTAMP else c for c in columns]
        return columns


class _Records:
    """One category's records judged against its schema: columnar first, jsonschema for the rest."""

    def __init__(self, category: str, schema_path: str, schema: dict):
        self.category, self.schema_path, self.schema = category, schema_path, schema
        from portability.records.validation import BatchValidator

        text_schemas = _ArchiveSchemas(schema, timestamps_as_text=True)
        self.full = text_schemas.validator(schema)
        self.full.check_schema(schema)  # raises on a schema that is not a JSON Schema
        try:
            self.columns = text_schemas.columns(category)
        except ValueError:  # properties the columnar checks cannot hold: every record goes to jsonschema
            self.columns = self.lines_validator = self.parquet_validator = None
            return
        self.lines_validator = BatchValidator(text_schemas, category)
        self.parquet_validator = BatchValidator(_ArchiveSchemas(schema, timestamps_as_text=False), category)

    @cached_property
    def decode_lines(self):
        """msgspec's decoder of a block of lines into records of exactly the schema's keys and types."""
        import msgspec

        from portability.records.schemas import BOOLEAN, INTEGER, JSON, NUMBER, STRING, STRING_LIST

        int64 = msgspec.Meta(ge=_INT64[0], le=_INT64[1])
        types = {STRING: str | None, INTEGER: Annotated[int, int64] | None, NUMBER: float | None,
                 BOOLEAN: bool | None, STRING_LIST: list[str] | None, JSON: msgspec.Raw}
        record = msgspec.defstruct(
            "Record", [(f"f{i}", types[c.kind]) for i, c in enumerate(self.columns)],
            rename={f"f{i}": c.name for i, c in enumerate(self.columns)},
            forbid_unknown_fields=True, gc=False,
        )
        return msgspec.json.Decoder(record).decode_lines

    def problems(self, document) -> list[dict]:
        """jsonschema's reasons, as the export's quarantine gives them; empty when the record is valid."""
        return sorted(({"path": "/" + "/".join(str(p) for p in error.absolute_path),
                        "keyword": str(error.validator), "message": _clip(error.message)}
                       for error in self.full.iter_errors(document)),
                      key=lambda p: (p["path"], p["keyword"], p["message"]))


@dataclass
class _FileCheck:
    """What checking one data file found."""

    rows: int = 0
    invalid: int = 0
    judged_in_full: int = 0          # records jsonschema judged (the columnar checks could not clear them)
    examples: list[str] = field(default_factory=list)
    unreadable: str | None = None    # why the file could not be read as its format, if it could not

    def add_invalid(self, where: str, reasons: list[dict]) -> None:
        self.invalid += 1
        if len(self.examples) < _EXAMPLES:
            said = "; ".join(f"{r['path']} ({r['keyword']}): {r['message']}" for r in reasons[:3])
            self.examples.append(f"{where}: {said}")


def _check_json_lines(chunks: Iterable[bytes], records: _Records | None) -> _FileCheck:
    found = _FileCheck()
    line = 1
    for block in _line_blocks(chunks):
        lines = block.count(b"\n") + (not block.endswith(b"\n"))
        if records is None:  # no usable schema: count only
            pass
        elif records.columns is None:
            _judge_lines(block, line, records, found)
        else:
            _check_block(block, line, lines, records, found)
        line += lines
    found.rows = line - 1
    return found


def _line_blocks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Blocks of whole lines, each about _BLOCK bytes (or one longer line); the last may lack its newline."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size < _BLOCK or b"\n" not in chunk:
            continue
        joined = b"".join(pending)
        cut = joined.rfind(b"\n") + 1
        yield joined[:cut]
        rest = joined[cut:]
        pending, size = ([rest] if rest else []), len(rest)
    if size:
        yield b"".join(pending)


def _check_block(block: bytes, first_line: int, lines: int, records: _Records, found: _FileCheck) -> None:
    import msgspec

    try:
        decoded = records.decode_lines(block)
    except (msgspec.MsgspecError, ValueError):  # ValueError: text that is not UTF-8
        decoded = None
    if decoded is not None and len(decoded) == lines:  # msgspec skips blank lines: they are judged one by one
        numbers = range(first_line, first_line + lines)
    else:
        decoded, numbers = [], []
        decode_one = records.decode_lines
        for number, text in enumerate(_split_lines(block), first_line):
            try:
                record = decode_one(text)
            except (msgspec.MsgspecError, ValueError):  # ValueError: text that is not UTF-8
                record = []
            if len(record) == 1:
                decoded.append(record[0])
                numbers.append(number)
            else:
                _judge_line(text, number, records, found)
    if not decoded:
        return
    batch = _records_batch(decoded, records.columns)
    if batch is None:  # values Arrow cannot hold as they are: jsonschema judges each of these lines
        texts = _split_lines(block)
        for number in numbers:
            _judge_line(texts[number - first_line], number, records, found)
        return
    from portability.records.rendering import RenderedBatch

    verdict = records.lines_validator.check(RenderedBatch(batch, records.columns))
    found.judged_in_full += getattr(verdict, "suspects", 0)
    for row, reasons in sorted(verdict.problems.items()):
        found.add_invalid(f"line {numbers[row]}", reasons)


def _split_lines(block: bytes) -> list[bytes]:
    texts = block.split(b"\n")
    if block.endswith(b"\n"):
        texts.pop()
    return texts


def _records_batch(decoded: list, columns) -> object | None:
    """The decoded records as an Arrow batch of the validator's columns; None if a value does not fit."""
    from operator import attrgetter

    import pyarrow as pa

    from portability.records.schemas import BOOLEAN, INTEGER, JSON, NUMBER, STRING_LIST

    types = {INTEGER: pa.int64(), NUMBER: pa.float64(), BOOLEAN: pa.bool_(), STRING_LIST: pa.list_(pa.string())}
    arrays = []
    try:
        for index, column in enumerate(columns):
            values = list(map(attrgetter(f"f{index}"), decoded))
            if column.kind == JSON:
                # msgspec has parsed each value as JSON while skipping it: Arrow's JSON type says so to the
                # validator, which then only checks the top-level type. JSON null is a null.
                texts = [None if raw == b"null" else raw for raw in map(bytes, values)]
                storage = pa.array(texts, pa.binary()).cast(pa.string())  # the cast checks UTF-8
                arrays.append(pa.ExtensionArray.from_storage(pa.json_(pa.string()), storage))
            else:
                arrays.append(pa.array(values, types.get(column.kind, pa.string())))
    except (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError):
        return None  # a lone surrogate, a string that is not UTF-8: rare, and jsonschema's to judge
    return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in columns])


def _judge_lines(block: bytes, first_line: int, records: _Records, found: _FileCheck) -> None:
    for number, text in enumerate(_split_lines(block), first_line):
        _judge_line(text, number, records, found)


def _judge_line(text: bytes, number: int, records: _Records, found: _FileCheck) -> None:
    """One line judged by jsonschema alone (it did not decode into the record's shape)."""
    from portability.records.rendering import parse_json

    found.judged_in_full += 1
    where = f"line {number}"
    try:
        document = parse_json(text.decode("utf-8"))  # floats as JSON Schema sees them: 1.0 is an integer
    except UnicodeDecodeError:
        found.add_invalid(where, [{"path": "", "keyword": "json", "message": "the line is not UTF-8"}])
        return
    except ValueError as exc:
        message = "the line is empty" if not text.strip() else f"the line is not JSON ({_clip(str(exc))})"
        found.add_invalid(where, [{"path": "", "keyword": "json", "message": message}])
        return
    reasons = records.problems(document)
    if reasons:
        found.add_invalid(where, reasons)


def _check_parquet(archive: _Zip, relative: str, records: _Records | None) -> _FileCheck:
    """Rows of a Parquet file read in place (or, if the ZIP compressed it, from a temporary copy),
    a batch at a time, judged by the same validator as the export's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = archive.entries[relative]
    found = _FileCheck()
    with _parquet_source(archive, relative, info) as source:
        try:
            parquet = pq.ParquetFile(source, buffer_size=_CHUNK, pre_buffer=False)
            found.rows = parquet.metadata.num_rows
            if records is None:
                return found
            if records.columns is None:
                found.unreadable = "its schema's properties cannot be held in Parquet columns"
                return found
            validator = records.parquet_validator
            names = [c.name for c in validator.columns]
            if parquet.schema_arrow.names != names:
                found.unreadable = f"its columns are {parquet.schema_arrow.names}, the schema's are {names}"
                return found
            from portability.records.rendering import RenderedBatch
            from portability.records.schemas import arrow_schema

            expected = arrow_schema(validator.columns, staged=True)
            first = 0
            for batch in parquet.iter_batches(batch_size=_PARQUET_ROWS, use_threads=False):
                columns = [_parquet_column(batch.column(i), expected.field(i).type, validator.columns[i])
                           for i in range(batch.num_columns)]
                verdict = validator.check(RenderedBatch(pa.RecordBatch.from_arrays(columns, names=names),
                                                        validator.columns))
                found.judged_in_full += getattr(verdict, "suspects", 0)
                for row, reasons in sorted(verdict.problems.items()):
                    found.add_invalid(f"row {first + row + 1}", reasons)
                first += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            found.unreadable = f"it cannot be read as Parquet ({_clip(str(exc))})"
    return found


@contextmanager
def _parquet_source(archive: _Zip, relative: str, info: zipfile.ZipInfo):
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        with open(archive.path, "rb") as stream:
            start = archive.data_offset(stream, info)
        window = _Window(archive.path, start, info.file_size)
        try:
            yield window
        finally:
            window.close()
        return
    with tempfile.TemporaryFile(prefix="portability-verify-") as copy:
        for chunk in archive.chunks(relative):
            copy.write(chunk)
        copy.seek(0)
        yield copy


def _parquet_column(array, expected_type, column):
    """A Parquet column as the validator expects it: the staged Arrow type, JSON text typed as JSON
    when every value parses (then only its top-level type needs checking), or left as text for the
    validator to parse and judge."""
    import pyarrow as pa

    from portability.records.schemas import JSON

    if column.kind == JSON:
        storage = array.cast(pa.string())
        if _all_json(storage):
            return pa.ExtensionArray.from_storage(pa.json_(pa.string()), storage)
        return storage
    return array if array.type == expected_type else array.cast(expected_type)


def _all_json(text) -> bool:
    import msgspec
    import pyarrow as pa

    one_value = msgspec.json.Decoder(tuple[msgspec.Raw]).decode  # "[" + v + "]" holds exactly one value
    for value in text.cast(pa.binary()).to_pylist():
        if value is None:
            continue
        try:
            one_value(b"[" + value + b"]")
        except (msgspec.MsgspecError, ValueError):  # ValueError: text that is not UTF-8
            return False
    return True


def _count_csv(chunks: Iterable[bytes], header: list[str] | None) -> _FileCheck:
    """CSV records (header excluded) counted as RFC 4180 reads them: a newline ends a record only
    outside quotes ("" inside a quoted field toggles twice)."""
    import csv

    import numpy as np

    found = _FileCheck()
    records, inside, last, first = 0, 0, b"", b""
    for chunk in chunks:
        if len(first) < 65_536:
            first += chunk[:65_536]
        data = np.frombuffer(chunk, np.uint8)
        newlines = np.flatnonzero(data == 10)
        quotes = np.flatnonzero(data == 34)
        if len(quotes):
            quotes_before = np.searchsorted(quotes, newlines) + inside
            records += len(newlines) - int(np.count_nonzero(quotes_before & 1))
            inside = (inside + len(quotes)) & 1
        elif not inside:
            records += len(newlines)
        if chunk:
            last = chunk[-1:]
    if last and last != b"\n":
        records += 1
    if inside:
        found.unreadable = "a quoted field is never closed"
    if not records:
        found.unreadable = "it has no header row"
        return found
    found.rows = records - 1
    if header is not None:
        names = next(csv.reader([first.split(b"\n", 1)[0].decode("utf-8", errors="replace")]), [])
        if names != header:
            found.unreadable = f"its header is {names[:20]}, the schema's columns are {header}"
    return found


def _count_lines(chunks: Iterable[bytes]) -> _FileCheck:
    found = _FileCheck()
    last = b""
    for chunk in chunks:
        found.rows += chunk.count(b"\n")
        if chunk:
            last = chunk[-1:]
    found.rows += bool(last) and last != b"\n"
    return found


# --- the whole archive ----------------------------------------------------------------------------------


def verify_archive(archive_path: Path, on_progress: Watch | None = None) -> dict:
    """Verify a local ZIP without extracting it; returns a report, raises VerificationError."""
    from portability.resources.readahead import read_ahead

    archive = _Zip(Path(archive_path))
    bag_problems: list[str] = []
    problems: list[str] = []
    bag = _read_bag(archive, bag_problems)

    # Tag files are small: read (and hashed for the tag manifest) first.
    tag_digests: dict[str, dict[str, str]] = {}
    tag_bytes: dict[str, bytes] = {}
    for path in [p for p in archive.entries if not p.startswith("data/")]:
        digests = {a: hashlib.new(a) for a in sorted({a for d in bag.tags.values() for a in d})}
        tag_bytes[path] = archive.read(path, digests.values())
        tag_digests[path] = {a: d.hexdigest() for a, d in digests.items()}
    for path, expected in sorted(bag.tags.items()):
        if path not in tag_digests:
            bag_problems.append(f"{path}: in the tag manifest but not in the bag")
            continue
        for algorithm, digest in expected.items():
            if tag_digests[path].get(algorithm) != digest:
                bag_problems.append(f"{path}: {algorithm} differs from tagmanifest-{algorithm}.txt")

    if "manifest.json" not in tag_bytes:
        raise VerificationError("manifest.json is missing: the archive does not describe its contents")
    try:
        manifest = json.loads(tag_bytes["manifest.json"])
        contents = manifest["contents"]
        if not isinstance(contents, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise VerificationError("manifest.json is not the export's manifest (no 'contents' object)") from None

    # What each payload file is for: a category's data file or its errors, with the category's schema.
    roles: dict[str, tuple[str, dict, str]] = {}  # path -> (category, manifest entry of the file, format)
    checkers: dict[str, _Records | None] = {}
    for category, entry in contents.items():
        try:
            if entry["exported"] + entry["quarantined"] != entry["source_count"]:
                problems.append(f"{category}: exported {entry['exported']} + quarantined {entry['quarantined']} "
                                f"!= source {entry['source_count']}")
            for file in entry["files"]:
                roles[file["path"]] = (category, file, file["format"])
            if entry["errors"]:
                roles[entry["errors"]["path"]] = (category, entry["errors"], "errors")
            checkers[category] = _records_of(archive, category, entry["schema"], problems)
        except (KeyError, TypeError):
            raise VerificationError(f"manifest.json: the entry of {category!r} lacks counts, files or schema") from None

    # The payload, each file read once in archive order: digests, and what its format holds.
    payload = sorted((p for p in archive.entries if p.startswith("data/")),
                     key=lambda p: archive.entries[p].header_offset)
    payload_bytes = 0
    checked: dict[str, _FileCheck] = {}
    judged_in_full = 0
    told = _Told(on_progress, sum(archive.entries[p].file_size for p in payload), "checking")
    for path in payload:
        info = archive.entries[path]
        payload_bytes += info.file_size
        algorithms = set(bag.payload.get(path, {})) | ({"sha256"} if path in roles else set())
        digests = {a: hashlib.new(a) for a in sorted(algorithms)}
        category, file, file_format = roles.get(path, (None, None, None))
        records = checkers.get(category)
        try:
            with read_ahead(_counted(archive.chunks(path, digests.values()), told), depth=4) as chunks:
                if file_format == "jsonl":
                    found = _check_json_lines(chunks, records)
                elif file_format == "csv":
                    found = _count_csv(chunks, [c.name for c in records.columns]
                                       if records is not None and records.columns is not None else None)
                elif file_format == "errors":
                    found = _count_lines(chunks)
                else:
                    found = _FileCheck()
                for _ in chunks:  # the rest of the file still counts for its digests
                    pass
            if file_format == "parquet":
                found = _check_parquet(archive, path, records)
        except _Damaged as exc:
            bag_problems.append(f"{path}: the ZIP entry is damaged: {exc}")
            continue
        judged_in_full += found.judged_in_full
        computed = {a: d.hexdigest() for a, d in digests.items()}
        for algorithm, digest in bag.payload.get(path, {}).items():
            if computed[algorithm] != digest:
                bag_problems.append(f"{path}: {algorithm} differs from manifest-{algorithm}.txt")
        if file is not None:
            checked[path] = found
            if info.file_size != file.get("bytes") or computed["sha256"] != file.get("sha256"):
                problems.append(f"{path}: size or sha256 differs from manifest.json")
            if found.unreadable:
                problems.append(f"{path}: {found.unreadable}")
            if found.invalid:
                noun = "record fails" if found.invalid == 1 else "records fail"
                problems.append(f"{path}: {found.invalid} {noun} {contents[category]['schema']}: "
                                + "; ".join(found.examples))

    told.end()

    # The bag's completeness.
    for path in sorted(set(payload) - set(bag.payload)):
        bag_problems.append(f"{path}: in the bag but not in {_manifest_names(bag)}")
    for path in sorted(set(bag.payload) - set(payload)):
        bag_problems.append(f"{path}: in {_manifest_names(bag)} but not in the bag")
    if bag.oxum is not None and bag.oxum != (payload_bytes, len(payload)):
        bag_problems.append(f"Payload-Oxum says {bag.oxum[0]} bytes in {bag.oxum[1]} files, "
                            f"the payload holds {payload_bytes} bytes in {len(payload)} files")

    # The manifest's counts.
    report = {"export_id": manifest.get("export_id"), "account_id": manifest.get("account_id"),
              "snapshot_at": manifest.get("snapshot_at"), "categories": {}, "records_checked": 0,
              "records_judged_by_jsonschema": judged_in_full}
    for category, entry in contents.items():
        report["categories"][category] = {k: entry[k] for k in ("source_count", "exported", "quarantined")}
        for file in entry["files"]:
            found = checked.get(file["path"])
            if found is None:
                if file["path"] not in archive.entries:
                    problems.append(f"{file['path']}: missing")
                continue
            report["records_checked"] += found.rows
            if found.rows != entry["exported"] and not found.unreadable:
                problems.append(f"{file['path']}: {found.rows} records, manifest says {entry['exported']}")
        quarantined = 0
        if entry["errors"]:
            found = checked.get(entry["errors"]["path"])
            if found is None and entry["errors"]["path"] not in archive.entries:
                problems.append(f"{entry['errors']['path']}: missing")
            quarantined = found.rows if found is not None else quarantined
        if quarantined != entry["quarantined"]:
            problems.append(f"{category}: {quarantined} quarantined records on file, "
                            f"manifest says {entry['quarantined']}")

    if bag_problems:
        raise VerificationError("the BagIt bag is invalid:\n- " + "\n- ".join([*bag_problems, *problems][:_LISTED]),
                                report)
    if problems:
        raise VerificationError("the archive does not match its manifest:\n- " + "\n- ".join(problems[:_LISTED]),
                                report)
    return report


def _counted(chunks: Iterable[bytes], told: _Told) -> Iterator[bytes]:
    for chunk in chunks:
        told.add(len(chunk))
        yield chunk


def _records_of(archive: _Zip, category: str, schema_path: str, problems: list[str]) -> _Records | None:
    if schema_path not in archive.entries:
        problems.append(f"{category}: its schema {schema_path} is missing")
        return None
    try:
        schema = json.loads(archive.read(schema_path))
        return _Records(category, schema_path, schema)
    except Exception as exc:  # not JSON, not a JSON Schema, a reference that leads nowhere
        problems.append(f"{schema_path}: cannot be used to check records ({_clip(str(exc))})")
        return None


def _manifest_names(bag: _Bag) -> str:
    return ", ".join(f"manifest-{a}.txt" for a in bag.algorithms)


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_LIMIT else message[:_MESSAGE_LIMIT] + "…"
