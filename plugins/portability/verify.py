"""Checking an archive as its recipient would: bag, checksums, manifest, counts and every record.

It trusts nothing but the archive itself: records are checked against the schemas inside it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

_CHUNK = 1024 * 1024


class VerificationError(RuntimeError):
    """The archive is not what its manifest says; the message lists what is wrong."""


def verify(path_or_url: str) -> dict:
    """Verify a local archive or a link to one; returns a report, raises VerificationError."""
    with _local_copy(path_or_url) as archive_path, tempfile.TemporaryDirectory(prefix="portability-verify-") as tmp:
        root = _extract(archive_path, Path(tmp))
        return verify_bag(root)


@contextmanager
def _local_copy(path_or_url: str):
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
                shutil.copyfileobj(response, target, _CHUNK)
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


def _extract(archive_path: Path, into: Path) -> Path:
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile:
        raise VerificationError(f"{archive_path.name} is not a ZIP archive") from None
    with archive:
        names = archive.namelist()
        roots = {PurePosixPath(n).parts[0] for n in names}
        if len(roots) != 1:
            raise VerificationError(f"the archive must hold one folder, it holds {sorted(roots)[:5]}")
        for name in names:
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or "\\" in name:
                raise VerificationError(f"unsafe path in archive: {name!r}")
        archive.extractall(into)
    return into / roots.pop()


def verify_bag(root: Path) -> dict:
    import bagit

    problems: list[str] = []
    try:
        bagit.Bag(str(root)).validate(processes=1)
    except bagit.BagError as exc:
        raise VerificationError(f"the BagIt bag is invalid: {exc}") from None

    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    report = {"export_id": manifest.get("export_id"), "account_id": manifest.get("account_id"),
              "snapshot_at": manifest.get("snapshot_at"), "categories": {}, "records_checked": 0}
    for category, entry in manifest["contents"].items():
        counted = _verify_category(root, category, entry, problems)
        report["categories"][category] = {k: entry[k] for k in ("source_count", "exported", "quarantined")}
        report["records_checked"] += counted
    if problems:
        raise VerificationError("the archive does not match its manifest:\n- " + "\n- ".join(problems[:50]))
    return report


def _verify_category(root: Path, category: str, entry: dict, problems: list[str]) -> int:
    from jsonschema import Draft202012Validator

    if entry["exported"] + entry["quarantined"] != entry["source_count"]:
        problems.append(f"{category}: exported {entry['exported']} + quarantined {entry['quarantined']} "
                        f"!= source {entry['source_count']}")
    schema = json.loads((root / entry["schema"]).read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    checked = 0
    for file in entry["files"]:
        path = root / file["path"]
        _check_digest(path, file, problems)
        rows, invalid = _count_and_check(path, file["format"], validator)
        checked += rows
        if rows != entry["exported"]:
            problems.append(f"{file['path']}: {rows} records, manifest says {entry['exported']}")
        if invalid:
            problems.append(f"{file['path']}: {invalid} records fail {entry['schema']}")
    errors = entry["errors"]
    quarantined = 0
    if errors:
        _check_digest(root / errors["path"], errors, problems)
        with open(root / errors["path"], encoding="utf-8") as lines:
            quarantined = sum(1 for _ in lines)
    if quarantined != entry["quarantined"]:
        problems.append(f"{category}: {quarantined} quarantined records on file, manifest says {entry['quarantined']}")
    return checked


def _check_digest(path: Path, file: dict, problems: list[str]) -> None:
    if not path.is_file():
        problems.append(f"{file['path']}: missing")
        return
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    if path.stat().st_size != file["bytes"] or digest.hexdigest() != file["sha256"]:
        problems.append(f"{file['path']}: size or sha256 differs from manifest.json")


def _count_and_check(path: Path, file_format: str, validator) -> tuple[int, int]:
    """How many records a file holds, and how many of them fail the schema (JSON Lines only:
    CSV and Parquet carry the same records in other encodings)."""
    if not path.is_file():
        return 0, 0
    if file_format == "jsonl":
        rows = invalid = 0
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                rows += 1
                if not validator.is_valid(json.loads(line)):
                    invalid += 1
        return rows, invalid
    if file_format == "csv":
        csv.field_size_limit(sys.maxsize)  # template HTML can be megabytes in one cell
        with open(path, encoding="utf-8", newline="") as stream:
            return sum(1 for _ in csv.reader(stream)) - 1, 0
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows, 0
