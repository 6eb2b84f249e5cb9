"""The archive: a BagIt bag (RFC 8493) whose payload is a Frictionless Data Package, zipped.

The ZIP is written in one pass to a stream. Every byte is derived from the export's content
and its snapshot instant, so the same export always gives the same archive.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from portability import __version__
from portability.schemas import SchemaSet, table_schema
from portability.writers import MEDIA_TYPES

FORMAT_VERSION = "1.0"
_COPY_BYTES = 1024 * 1024


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


def build_manifest(plan: dict, snapshot: dict, results: list[dict]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "export_id": plan["export_id"],
        "account_id": plan["account_id"],
        "region": snapshot["region"],
        "snapshot_at": snapshot["snapshot_at"],
        "categories": plan["categories"],
        "formats": plan["formats"],
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


def build_datapackage(plan: dict, snapshot: dict, results: list[dict], schemas: SchemaSet) -> dict:
    resources = []
    for result in results:
        category = result["category"]
        record = schemas.record(category)
        columns = schemas.columns(category)
        for file in result["files"]:
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
        "name": f"export-{plan['export_id']}",
        "title": f"Data export of account {plan['account_id']}",
        "created": snapshot["snapshot_at"],
        "resources": resources,
    }


def payload_files(plan: dict, snapshot: dict, results: list[dict], schemas: SchemaSet) -> list[PayloadFile]:
    """Every file under data/, in archive order."""
    files = [_small("data/datapackage.json", _json_bytes(build_datapackage(plan, snapshot, results, schemas)))]
    files += [
        _small(f"data/schemas/{r['category']}.schema.json", _json_bytes(schemas.bundled_record(r["category"])))
        for r in results
    ]
    for result in results:
        files += [PayloadFile(f["path"], f["bytes"], f["sha256"]) for f in result["files"]]
    for result in results:
        if result["errors"]:
            e = result["errors"]
            files.append(PayloadFile(e["path"], e["bytes"], e["sha256"]))
    return files


def tag_files(plan: dict, snapshot: dict, results: list[dict], payload: list[PayloadFile],
              organization: str) -> list[tuple[str, bytes]]:
    """The bag's tag files, in archive order, ending with the tag manifest that covers the others."""
    oxum = f"{sum(f.bytes for f in payload)}.{len(payload)}"
    bag_info = (
        f"Source-Organization: {organization}\n"
        f"External-Identifier: {plan['export_id']}\n"
        f"External-Description: Data export of account {plan['account_id']} as of {snapshot['snapshot_at']}\n"
        f"Bagging-Date: {snapshot['snapshot_at'][:10]}\n"
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


def write_zip(sink, *, root: str, snapshot_at: datetime, tags: list[tuple[str, bytes]],
              payload: Iterable[PayloadFile], open_payload: Callable[[PayloadFile], object]) -> None:
    """Stream the bag into a ZIP (ZIP64 where needed) with fixed timestamps and permissions."""
    stamp = snapshot_at.timetuple()[:6]

    def info(name: str, compressed: bool) -> zipfile.ZipInfo:
        entry = zipfile.ZipInfo(f"{root}/{name}", date_time=stamp)
        entry.compress_type = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
        entry.external_attr = 0o644 << 16
        return entry

    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
        for name, data in tags:
            archive.writestr(info(name, True), data)
        for file in payload:
            entry = info(file.path, not file.path.endswith(".parquet"))
            if file.content is not None:
                archive.writestr(entry, file.content)
                continue
            entry.file_size = file.bytes  # lets zipfile choose ZIP64 for large files up front
            source = open_payload(file)
            with archive.open(entry, "w") as target:
                while chunk := source.read(_COPY_BYTES):
                    target.write(chunk)


def readme(plan: dict, snapshot: dict, results: list[dict]) -> str:
    lines = [
        f"# Data export of account {plan['account_id']}",
        "",
        f"This archive holds the data of account `{plan['account_id']}` as it was at "
        f"{snapshot['snapshot_at']} (UTC). Export id: `{plan['export_id']}`.",
        "",
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
        "In `manifest.json`, for every category, `exported + quarantined` equals `source_count`: nothing was"
        " dropped. Secrets (password hashes, API key hashes, DKIM private keys, webhook signing keys, MFA"
        " secrets) are never exported.",
        "",
    ]
    return "\n".join(lines)
