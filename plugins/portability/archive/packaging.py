"""The archive: a BagIt bag (RFC 8493) whose payload is a Frictionless Data Package, zipped.

The ZIP is written in one pass to a stream: first the data files, their checksums taken as
they pass, then the files that describe them (datapackage.json, schemas, manifest, bag tag
files). Text files are the concatenation of their pieces' deflated pieces, copied without
recompressing; Parquet files are assembled from the staged pieces with fixed row groups.
Every byte is derived from the export's content and its snapshot instant, so the same
export always gives the same archive, however its work was spread over tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from portability import __version__
from portability.archive.deflate import FINAL_BLOCK, DeflatedPiece, InflatingDigest, combine
from portability.archive.parts import ArchiveParts
from portability.archive.zipwriter import ZipWriter
from portability.pipeline.model import CategoryResult, PieceResult, Plan, Snapshot
from portability.pipeline.pieces import MEDIA_TYPES, TEXT_FORMATS, valid_mask
from portability.records.schemas import SchemaSet, arrow_schema, table_schema

FORMAT_VERSION = "1.0"
PARQUET_ROW_GROUP_ROWS = 128 * 1024
_COPY_BYTES = 1024 * 1024
_HASHERS = 2


@dataclass(frozen=True)
class StagedSources:
    """Where the packaging step reads what the earlier steps staged."""

    open_deflated: Callable[[str, int, str], object]  # (category, piece, kind) -> readable stream
    open_piece: Callable[[str, int], object]         # (category, piece) -> Arrow record batch reader
    invalid_rows: Callable[[str, int], list[int]]    # (category, piece) -> quarantined row offsets
    # The command's route: text files already on their way into the archive's parts (see `parts`);
    # the sink is then that archive's PartRouter.
    parts: ArchiveParts | None = None


@dataclass(frozen=True)
class PayloadFile:
    path: str          # relative to the bag root, e.g. data/contacts.csv
    bytes: int
    sha256: str
    content: bytes | None = None  # small generated files; large ones are streamed from staging


def _json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _small(path: str, content: bytes) -> PayloadFile:
    return PayloadFile(path, len(content), hashlib.sha256(content).hexdigest(), content)


def build_manifest(plan: Plan, snapshot: Snapshot, results: list[dict]) -> dict:
    # Whose data and which time window, only when the request narrowed them: a whole account's manifest is as before.
    narrowed = {"data_subject": {"email": plan.subject_email}} if plan.subject_email else {}
    narrowed.update({name: getattr(plan, name) for name in ("since", "until") if getattr(plan, name)})
    return {
        "format_version": FORMAT_VERSION,
        "export_id": plan.export_id,
        "account_id": plan.account_id,
        "region": snapshot.region,
        "snapshot_at": snapshot.snapshot_at,
        **narrowed,
        "categories": list(plan.categories),
        "formats": list(plan.formats),
        "contents": {
            r["category"]: {
                "source_count": r["source_count"],
                "exported": r["exported"],
                "quarantined": r["quarantined"],
                "schema": f"data/schemas/{r['category']}.schema.json",
                "files": r["files"],
                "errors": r["errors"],
            }
            for r in results
        },
    }


def build_datapackage(plan: Plan, snapshot: Snapshot, results: list[dict], schemas: SchemaSet) -> dict:
    resources = []
    for result in results:
        category = result["category"]
        record = schemas.record(category)
        columns = schemas.columns(category)
        for file in result["files"]:
            if file["format"] == "jsonl" and not result["exported"]:
                # Frictionless cannot read an empty JSON Lines file; the manifest still lists it.
                continue
            resource = {
                "name": f"{category}-{file['format']}".replace("_", "-"),
                "title": f"{record.get('title', category)} ({file['format']})",
                "description": record.get("description", ""),
                "path": file["path"].removeprefix("data/"),
                "format": file["format"],
                "mediatype": MEDIA_TYPES[file["format"]],
                "schema": table_schema(columns, file["format"]),
            }
            if file["format"] != "parquet":  # Frictionless cannot count bytes of Parquet it reads
                resource.update(encoding="utf-8", bytes=file["bytes"], hash=f"sha256:{file['sha256']}")
            resources.append(resource)
        if result["errors"]:
            errors = result["errors"]
            resources.append({
                "name": f"{category}-errors".replace("_", "-"),
                "title": f"{record.get('title', category)}: records that failed validation",
                "path": errors["path"].removeprefix("data/"),
                "format": "jsonl", "mediatype": MEDIA_TYPES["jsonl"], "encoding": "utf-8",
                "bytes": errors["bytes"], "hash": f"sha256:{errors['sha256']}",
                "schema": {"fields": [
                    {"name": "errors", "type": "array", "description": "Why it failed: path, keyword, message."},
                    {"name": "record", "type": "object", "description": "The record as it is in the source."},
                ]},
            })
    return {
        "$schema": "https://datapackage.org/profiles/2.0/datapackage.json",
        "name": f"export-{plan.export_id}",
        "title": f"Data export of account {plan.account_id}",
        "created": snapshot.snapshot_at,
        "resources": resources,
    }


def describing_files(plan: Plan, snapshot: Snapshot, results: list[dict], schemas: SchemaSet) -> list[PayloadFile]:
    """The payload files that describe the data: the data package and each category's schema."""
    files = [_small("data/datapackage.json", _json_bytes(build_datapackage(plan, snapshot, results, schemas)))]
    files += [
        _small(f"data/schemas/{r['category']}.schema.json", _json_bytes(schemas.bundled_record(r["category"])))
        for r in results
    ]
    return files


def tag_files(plan: Plan, snapshot: Snapshot, results: list[dict], payload: list[PayloadFile],
              organization: str) -> list[tuple[str, bytes]]:
    """The bag's tag files, in archive order, ending with the tag manifest that covers the others."""
    oxum = f"{sum(f.bytes for f in payload)}.{len(payload)}"
    bag_info = (
        f"Source-Organization: {organization}\n"
        f"External-Identifier: {plan.export_id}\n"
        f"External-Description: {_what(plan)} as of {snapshot.snapshot_at}\n"
        f"Bagging-Date: {snapshot.snapshot_at[:10]}\n"
        f"Payload-Oxum: {oxum}\n"
        f"Bag-Software-Agent: portability {__version__}\n"
    )
    tags = [
        ("bagit.txt", b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"),
        ("bag-info.txt", bag_info.encode("utf-8")),
        ("manifest-sha256.txt", "".join(f"{f.sha256}  {f.path}\n" for f in payload).encode("utf-8")),
        ("manifest.json", _json_bytes(build_manifest(plan, snapshot, results))),
        ("README.md", readme(plan, snapshot, results).encode("utf-8")),
    ]
    tag_manifest = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in tags)
    return [*tags, ("tagmanifest-sha256.txt", tag_manifest.encode("utf-8"))]


def write_archive(sink, *, plan: Plan, snapshot: Snapshot, results: list[CategoryResult], schemas: SchemaSet,
                  sources: StagedSources, root: str, snapshot_at: datetime, organization: str) -> list[dict]:
    """Stream the whole bag into a ZIP (ZIP64 where needed); returns the results with each file's checksum."""
    def entry(path: str) -> str:
        return f"{root}/{path}"

    def deflated_pieces(category: str, pieces: tuple[PieceResult, ...],
                        kind: str) -> list[tuple[DeflatedPiece, Callable]]:
        return [((p.errors if kind == "errors" else p.files[kind]),
                 partial(sources.open_deflated, category, p.piece, kind)) for p in pieces]

    def write_text(path: str, category: str, kind: str, deflated: list[tuple[DeflatedPiece, Callable]]) -> int:
        if sources.parts is None:
            return _copy_deflated_pieces(archive, entry(path), deflated)
        return _write_sent_file(archive, entry(path), [deflated_piece for deflated_piece, _ in deflated], sources.parts,
                                category, kind)

    described, payload = [], []
    # The SHA-256 of a text file needs its raw bytes. Unless the export hashed them in order as it
    # wrote them, hashers read and inflate the staged pieces again, on the other cores, while this
    # thread copies the compressed bytes into the ZIP.
    with ZipWriter(sink, date_time=snapshot_at.timetuple()[:6], mode=0o644) as archive, \
            ThreadPoolExecutor(_HASHERS, thread_name_prefix="digest") as hashers:
        for result in results:
            category, pieces = result.category, result.pieces
            files = []
            for fmt in plan.formats:
                path = f"data/{category}.{fmt}"
                if fmt in TEXT_FORMATS:
                    deflated = deflated_pieces(category, pieces, fmt)
                    sha256 = result.sha256.get(fmt) or hashers.submit(_digest, deflated)
                    size = write_text(path, category, fmt, deflated)
                else:
                    size, sha256 = _write_parquet(archive, entry(path), schemas, category, pieces, sources)
                files.append({"path": path, "format": fmt, "bytes": size, "sha256": sha256})
            errors = None
            with_errors = [p for p in pieces if p.errors]
            if with_errors:
                path = f"data/errors/{category}.jsonl"
                deflated = deflated_pieces(category, with_errors, "errors")
                sha256 = result.sha256.get("errors") or hashers.submit(_digest, deflated)
                errors = {"path": path, "format": "jsonl", "bytes": write_text(path, category, "errors", deflated),
                          "sha256": sha256}
            described.append({"category": category, "source_count": result.source_count,
                              "exported": result.exported, "quarantined": result.quarantined,
                              "files": files, "errors": errors})
        for file in [f for r in described for f in r["files"]] + [r["errors"] for r in described if r["errors"]]:
            if not isinstance(file["sha256"], str):
                file["sha256"] = file["sha256"].result()
        payload += [PayloadFile(f["path"], f["bytes"], f["sha256"]) for r in described for f in r["files"]]
        payload += [PayloadFile(r["errors"]["path"], r["errors"]["bytes"], r["errors"]["sha256"])
                    for r in described if r["errors"]]
        describing = describing_files(plan, snapshot, described, schemas)
        for file in describing:
            archive.write_bytes(entry(file.path), file.content)
        for name, data in tag_files(plan, snapshot, described, [*describing, *payload], organization):
            archive.write_bytes(entry(name), data)
    return described


def _copy_deflated_pieces(archive: ZipWriter, name: str, deflated_pieces: list) -> int:
    """One deflated entry made of its pieces' deflated bytes, copied as they are; returns the raw size."""
    def copy(sink) -> None:
        for deflated_piece, open_deflated in deflated_pieces:
            _copy(open_deflated(), sink, deflated_piece.deflated_bytes, f"a staged piece of {name}")

    return _write_deflated(archive, name, combine([deflated_piece for deflated_piece, _ in deflated_pieces]), copy)


def _write_sent_file(archive: ZipWriter, name: str, deflated_pieces: list[DeflatedPiece], parts: ArchiveParts,
                     category: str, kind: str) -> int:
    """One deflated entry whose sent parts are already in the archive's upload: its head, a skip, its tail."""
    layout = parts.layout(category, kind)
    total = combine(deflated_pieces)

    def copy(sink) -> None:
        if layout.total != total.deflated_bytes - len(FINAL_BLOCK):
            raise ValueError(f"{name}: its parts hold {layout.total} bytes, not the "
                             f"{total.deflated_bytes - len(FINAL_BLOCK)} its pieces wrote; rerun the export")
        def held(end: str, size: int) -> None:
            _copy(parts.open_held(category, kind, end), sink, size, f"the held-back {end} of {name}")

        held("head", layout.head_bytes)
        sink.skip(layout.sent_parts)  # the sink is the archive's PartRouter
        if layout.sent_parts or layout.tail_bytes:
            held("tail", layout.tail_bytes)

    return _write_deflated(archive, name, total, copy)


def _write_deflated(archive: ZipWriter, name: str, total: DeflatedPiece, copy: Callable[[object], None]) -> int:
    """A deflated entry whose compressed bytes `copy(sink)` writes, then the final block; returns the raw size.

    The sizes and CRC are known up front from the pieces, so they go into the local header.
    """
    def entry_data(sink) -> None:
        copy(sink)
        sink.write(FINAL_BLOCK)

    archive.write_deflated(name, crc32=total.crc32, raw_bytes=total.raw_bytes, deflated_bytes=total.deflated_bytes,
                           copy=entry_data)
    return total.raw_bytes


def _copy(stream, target, expected: int, what: str) -> None:
    copied = 0
    while chunk := stream.read(_COPY_BYTES):
        target.write(chunk)
        copied += len(chunk)
    if copied != expected:
        raise ValueError(f"{what} holds {copied} bytes, not the {expected} its export wrote: it changed after "
                         "it was written; rerun the export")


def _digest(deflated_pieces: list) -> str:
    """The SHA-256 of the raw file the deflated pieces make, after checking its length and CRC against the pieces'."""
    digest = InflatingDigest()
    for _, open_deflated in deflated_pieces:
        stream = open_deflated()
        while chunk := stream.read(_COPY_BYTES):
            digest.update(chunk)
    digest.update(FINAL_BLOCK)
    return digest.finish(combine([deflated_piece for deflated_piece, _ in deflated_pieces]))


class _Counting:
    """A write-only stream that hashes and counts what passes to `target`."""

    def __init__(self, target):
        self._target, self.bytes, self._sha256 = target, 0, hashlib.sha256()
        self.closed = False

    def write(self, data) -> int:
        self._sha256.update(data)
        self.bytes += len(data)
        return self._target.write(data)

    def flush(self) -> None:
        pass

    def sha256(self) -> str:
        return self._sha256.hexdigest()


def _write_parquet(archive: ZipWriter, name: str, schemas: SchemaSet, category: str,
                   pieces: tuple[PieceResult, ...], sources: StagedSources) -> tuple[int, str]:
    """The category's valid rows as one Parquet file with row groups of a fixed size; returns (bytes, sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from portability.records.rendering import unwrapped

    schema = arrow_schema(schemas.columns(category), staged=False)
    with archive.open_stored(name) as target:
        counting = _Counting(target)
        writer = pq.ParquetWriter(pa.PythonFile(counting, mode="w"), schema, compression="zstd",
                                  write_statistics=True, store_schema=True)
        pending, pending_rows = [], 0
        for piece in pieces:
            invalid = sources.invalid_rows(category, piece.piece) if piece.quarantined else []
            offset = 0
            for batch in sources.open_piece(category, piece.piece):
                kept = batch
                if invalid:
                    kept = batch.filter(valid_mask(piece.rows, invalid).slice(offset, batch.num_rows))
                offset += batch.num_rows
                pending.append(pa.RecordBatch.from_arrays([unwrapped(c) for c in kept.columns], schema=schema))
                pending_rows += kept.num_rows
                while pending_rows >= PARQUET_ROW_GROUP_ROWS:
                    table = pa.Table.from_batches(pending, schema)
                    writer.write_table(table.slice(0, PARQUET_ROW_GROUP_ROWS), row_group_size=PARQUET_ROW_GROUP_ROWS)
                    rest = table.slice(PARQUET_ROW_GROUP_ROWS)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=PARQUET_ROW_GROUP_ROWS)
        writer.close()
    return counting.bytes, counting.sha256()


def _what(plan: Plan) -> str:
    if plan.subject_email:
        return f"Data account {plan.account_id} holds about one person"
    return f"Data export of account {plan.account_id}"


def readme(plan: Plan, snapshot: Snapshot, results: list[dict]) -> str:
    if plan.subject_email:
        nothing = not any(r["source_count"] for r in results)
        intro = [
            f"# Data held about {plan.subject_email}",
            "",
            f"This archive holds everything account `{plan.account_id}` held about the person with the email address"
            f" `{plan.subject_email}` at {snapshot.snapshot_at} (UTC), under GDPR Art. 15 and 20: their contact"
            " records, their list memberships with the profile kept for each list, suppressions of the address,"
            " every message sent to it (which names its campaign) and the events of those messages. The address is"
            " matched without regard to letter case; the files show it as it is stored. Nothing about anyone else"
            f" is here. Export id: `{plan.export_id}`.",
            "",
            *(["**The account held no data about this address**: every file below is empty, and `manifest.json`"
               " counts 0 records in every category.", ""] if nothing else []),
        ]
    else:
        intro = [
            f"# Data export of account {plan.account_id}",
            "",
            f"This archive holds the data of account `{plan.account_id}` as it was at "
            f"{snapshot.snapshot_at} (UTC). Export id: `{plan.export_id}`.",
            "",
        ]
    if plan.since or plan.until:
        window = " and ".join(filter(None, [plan.since and f"at or after {plan.since}",
                                            plan.until and f"before {plan.until}"]))
        intro += [f"Messages and events are those sent or that occurred {window}, as requested.", ""]
    lines = [
        *intro,
        "## What is here",
        "",
        "| file | what it holds | records |",
        "|---|---|---|",
    ]
    for r in results:
        for f in r["files"]:
            lines.append(f"| `{f['path']}` | {r['category']} ({f['format']}) | {r['exported']} |")
        if r["errors"]:
            lines.append(f"| `{r['errors']['path']}` | {r['category']} records that failed validation, "
                         f"with the reasons | {r['quarantined']} |")
    lines += [
        "| `data/schemas/<category>.schema.json` | JSON Schema (draft 2020-12) of one record | |",
        "| `data/datapackage.json` | Frictionless Data Package: every table with its columns and types | |",
        "| `manifest.json` | counts per category (source, exported, quarantined) and every file's sha256 | |",
        "",
        "## How to open the files",
        "",
        "- **CSV** (`.csv`): UTF-8, comma-separated, first row is the header. In Excel use *Data > From Text/CSV*"
        " and pick UTF-8; LibreOffice and Google Sheets detect it. Nested values (custom properties, tags) are"
        " JSON text. Empty cells are empty values.",
        "- **JSON Lines** (`.jsonl`): one JSON object per line; the exact values, nested values as JSON.",
        "- **Parquet** (`.parquet`): typed columns for pandas, DuckDB, Spark; nested values as JSON text.",
        "",
        "A CSV text cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a"
        " carriage return and is not a plain number) starts with an apostrophe `'` added by us, as OWASP advises"
        " against CSV injection. The JSON Lines and Parquet files hold the exact value.",
        "",
        "## How to check it is complete and intact",
        "",
        "This folder is a BagIt bag (RFC 8493) and `data/` is a Frictionless Data Package:",
        "",
        "```",
        "sha256sum -c manifest-sha256.txt        # every data file",
        "bagit.py --validate .                   # pip install bagit",
        "frictionless validate data/datapackage.json   # pip install 'frictionless[json,parquet]'",
        "```",
        "",
        "In `manifest.json`, for every category, `source_count` is every row the account holds in the source"
        " table of that category, counted on its own in the same snapshot, and `exported + quarantined` equals"
        " it: nothing was dropped. A record that points at a row the account does not hold (another account's,"
        " or none) is in `errors/` with that reason, and nothing of the other row is. Secrets (password hashes,"
        " API key hashes, DKIM private keys, webhook signing keys, MFA secrets) are never exported.",
        "",
    ]
    return "\n".join(lines)
