"""The steps of one export, shared by the account_export DAG (one task each) and the command.

plan -> snapshot -> one export_category per category -> package -> cleanup

Steps pass small dicts (ids, counts, checksums), never data: data moves through a staging
prefix in the region's bucket, so any step can be retried on any worker and gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from portability import config
from portability.mapping import load_mapping
from portability.records import build_record, iter_rows, render_timestamp
from portability.request import RequestError, parse_request
from portability.schemas import SchemaSet, arrow_schema
from portability.storage import AlreadyPublished, ObjectStore, StorageError, key_token
from portability.validation import InvalidRecords, RecordValidator
from portability.writers import MEDIA_TYPES, WRITERS, ErrorsWriter

log = logging.getLogger(__name__)

_EXPORT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_LINK_HOURS = 168  # SigV4 presigned URLs live at most 7 days


class ExportError(RuntimeError):
    """The export cannot go on; the message says why and what to do."""


class AccountNotFound(ExportError):
    pass


def _snapshot_key(export_id: str, category: str) -> str:
    return f"staging/{export_id}/snapshot/{category}.arrows"


def _staged_file_key(export_id: str, path: str) -> str:
    return f"staging/{export_id}/files/{path}"


def archive_key(export_id: str, account_id: str, key_secret: bytes) -> str:
    return f"exports/{export_id}/{key_token(key_secret, export_id)}/{account_id}-{export_id}.zip"


def _summary_key(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/summary.json"


def plan(conf: dict, export_id: str) -> dict:
    """Validate the request; nothing has been read from the source yet."""
    request = parse_request(conf, SchemaSet())
    return {"export_id": export_id, **request.to_dict()}


def take_snapshot(plan: dict) -> dict:
    """Read every requested category from one snapshot of the source into staging."""
    import pyarrow as pa

    from portability import source

    schemas, mapping = SchemaSet(), load_mapping()
    storage = config.storage_settings()
    store = ObjectStore(storage)
    account_id, export_id = plan["account_id"], plan["export_id"]
    missing = [c for c in ["account", *plan["categories"]] if c not in mapping]
    if missing:
        raise ExportError(f"the source mapping has no query for {sorted(set(missing))}: add them to the mapping")

    with source.snapshot(config.source_settings().conninfo) as snap:
        account = _account(snap, mapping["account"], schemas, account_id)
        bucket = storage.bucket_for(account["region"])
        counts = {}
        for category in plan["categories"]:
            columns = schemas.columns(category)
            counts[category] = snap.count(mapping[category], account_id)
            staged = 0
            with store.upload(bucket, _snapshot_key(export_id, category)) as upload:
                options = pa.ipc.IpcWriteOptions(compression="zstd")
                schema = arrow_schema(columns).with_metadata({"snapshot_at": _render(snap.snapshot_at)})
                with pa.ipc.new_stream(upload, schema, options=options) as writer:
                    for batch in snap.batches(mapping[category], columns, account_id):
                        writer.write_batch(batch)
                        staged += batch.num_rows
            if staged != counts[category]:
                raise ExportError(f"{category}: read {staged} rows but the snapshot counts {counts[category]}")
            log.info("snapshot of %s: %d rows", category, staged)
        snapshot_at = _render(snap.snapshot_at)
    return {"snapshot_at": snapshot_at, "region": account["region"], "bucket": bucket, "source_counts": counts}


def _account(snap, mapping, schemas: SchemaSet, account_id: str) -> dict:
    columns = schemas.columns("account")
    for batch in snap.batches(mapping, columns, account_id):
        if batch.num_rows:
            return batch.slice(0, 1).to_pylist()[0]
    raise AccountNotFound(f"account not found: {account_id!r}; check the account id. Nothing was exported.")


def _render(instant: datetime) -> str:
    return render_timestamp(instant.astimezone(UTC))


def export_category(plan: dict, snapshot: dict, category: str) -> dict:
    """Validate every staged record of one category and write the requested formats."""
    schemas = SchemaSet()
    store = ObjectStore(config.storage_settings())
    bucket, export_id = snapshot["bucket"], plan["export_id"]
    columns = schemas.columns(category)
    validator = RecordValidator(schemas, category)
    paths = {fmt: f"data/{category}.{fmt}" for fmt in plan["formats"]}
    errors_path = f"data/errors/{category}.jsonl"
    exported = quarantined = position = 0

    with ExitStack() as stack:
        uploads = {
            fmt: stack.enter_context(store.upload(bucket, _staged_file_key(export_id, path),
                                                  content_type=MEDIA_TYPES[fmt]))
            for fmt, path in paths.items()
        }
        writers = {fmt: WRITERS[fmt](uploads[fmt], columns) for fmt in paths}
        errors_upload = errors_writer = None
        reader = _open_snapshot(store, bucket, export_id, category, snapshot["snapshot_at"])
        for batch in reader:
            rows = list(iter_rows(batch))
            records = [build_record(columns, row) for row in rows]
            problems = [validator.problems(record) for record in records]
            valid = [not p for p in problems]
            for offset, (record, found) in enumerate(zip(records, problems, strict=True)):
                if not found:
                    continue
                if plan["on_invalid"] == "fail":
                    raise InvalidRecords(_invalid_message(category, position + offset, record, found))
                if errors_writer is None:
                    errors_upload = stack.enter_context(store.upload(
                        bucket, _staged_file_key(export_id, errors_path), content_type=MEDIA_TYPES["jsonl"]))
                    errors_writer = ErrorsWriter(errors_upload)
                errors_writer.write(record, found)
            for writer in writers.values():
                writer.write(batch, records, rows, valid)
            position += len(rows)
            quarantined += valid.count(False)
            exported += valid.count(True)
        for writer in writers.values():
            writer.close()
        if errors_writer:
            errors_writer.close()

    source_count = snapshot["source_counts"][category]
    if exported + quarantined != source_count:
        raise ExportError(f"{category}: exported {exported} + quarantined {quarantined} != source {source_count}")
    log.info("%s: %d exported, %d quarantined", category, exported, quarantined)
    return {
        "category": category,
        "source_count": source_count,
        "exported": exported,
        "quarantined": quarantined,
        "files": [
            {"path": paths[fmt], "format": fmt, "bytes": uploads[fmt].bytes_written, "sha256": uploads[fmt].sha256}
            for fmt in paths
        ],
        "errors": (
            {"path": errors_path, "format": "jsonl", "bytes": errors_upload.bytes_written,
             "sha256": errors_upload.sha256}
            if errors_upload else None
        ),
    }


def _open_snapshot(store: ObjectStore, bucket: str, export_id: str, category: str, snapshot_at: str):
    """The staged rows of a category, refusing rows of any other snapshot than this run's."""
    import pyarrow as pa
    from botocore.exceptions import ClientError

    try:
        reader = pa.ipc.open_stream(store.open(bucket, _snapshot_key(export_id, category)))
    except ClientError as exc:
        raise ExportError(
            f"the staged snapshot of {category} for export {export_id} is gone (a failed run is cleaned up): "
            "clear the whole DAG run, or rerun the export, to read the source again"
        ) from exc
    staged_at = (reader.schema.metadata or {}).get(b"snapshot_at", b"").decode()
    if staged_at != snapshot_at:
        raise ExportError(
            f"{category}: staged rows are from snapshot {staged_at or 'unknown'}, not {snapshot_at}: "
            "clear the snapshot task together with its downstream tasks"
        )
    return reader


def _invalid_message(category: str, position: int, record, problems: list[dict]) -> str:
    # Names the record by position and id and the rule it broke, never by its values (they are personal data).
    record_id = record.document.get("id")
    where = ", ".join(f"{p['path']} ({p['keyword']})" for p in problems[:3])
    return (
        f"{category}: record #{position + 1}{f' (id {record_id})' if record_id is not None else ''} fails its "
        f"schema at {where}; nothing was published because on_invalid=fail. Fix the source record or export "
        "with on_invalid=quarantine."
    )


def package(plan: dict, snapshot: dict, results: list[dict]) -> dict:
    """Zip the bag straight into the archive's multipart upload; it appears only when complete."""
    from portability import packaging

    schemas = SchemaSet()
    storage = config.storage_settings()
    store = ObjectStore(storage)
    bucket, export_id, account_id = snapshot["bucket"], plan["export_id"], plan["account_id"]
    key = archive_key(export_id, account_id, storage.key_secret)
    if store.exists(bucket, key):
        log.info("export %s is already published; keeping it", export_id)
        return _published_summary(store, bucket, key)

    order = {c: i for i, c in enumerate(plan["categories"])}
    results = sorted(results, key=lambda r: order[r["category"]])
    payload = packaging.payload_files(plan, snapshot, results, schemas)
    tags = packaging.tag_files(plan, snapshot, results, payload,
                               organization=config.organization_name())
    snapshot_at = datetime.fromisoformat(snapshot["snapshot_at"].replace("Z", "+00:00"))
    try:
        with store.upload(bucket, key, content_type="application/zip", create_only=True) as upload:
            packaging.write_zip(
                upload, root=f"{account_id}-{export_id}", snapshot_at=snapshot_at, tags=tags, payload=payload,
                open_payload=lambda f: store.open(bucket, _staged_file_key(export_id, f.path)),
            )
    except AlreadyPublished:
        log.info("export %s was published by another run meanwhile; keeping that one", export_id)
        return _published_summary(store, bucket, key)
    summary = {
        "export_id": export_id,
        "account_id": account_id,
        "region": snapshot["region"],
        "bucket": bucket,
        "key": key,
        "bytes": upload.bytes_written,
        "sha256": upload.sha256,
        "snapshot_at": snapshot["snapshot_at"],
        "counts": {r["category"]: {k: r[k] for k in ("source_count", "exported", "quarantined")} for r in results},
    }
    store.put_bytes(bucket, _summary_key(key), json.dumps(summary, indent=2).encode(),
                    content_type="application/json")
    return summary


def _published_summary(store: ObjectStore, bucket: str, key: str) -> dict:
    try:
        return json.loads(store.read_bytes(bucket, _summary_key(key)))
    except Exception as exc:
        # The other run is between its archive and its summary: retrying settles it.
        raise StorageError("the archive exists but its summary is not written yet; retry") from exc


def cleanup(plan: dict, snapshot: dict | None) -> int:
    """Delete the export's staging objects (personal data) once the archive is out, or the run failed."""
    store = ObjectStore(config.storage_settings())
    buckets = [snapshot["bucket"]] if snapshot else sorted(set(store.settings.buckets.values()))
    return sum(store.delete_prefix(bucket, f"staging/{plan['export_id']}/") for bucket in buckets)


@dataclass(frozen=True)
class Link:
    url: str = field(repr=False)  # a bearer credential: print it to the requester, never log it
    expires_at: str
    bucket: str
    key: str


def find_archive(export_id: str) -> tuple[ObjectStore, dict]:
    """The published archive of an export, in whichever region's bucket holds it."""
    if not _EXPORT_ID.fullmatch(export_id or ""):
        raise RequestError(f"invalid export id {export_id[:80]!r}: expected a UUID such as the one 'export' printed")
    storage = config.storage_settings()
    store = ObjectStore(storage)
    for bucket in sorted(set(storage.buckets.values())):
        for key in store.keys(bucket, f"exports/{export_id}/"):
            if key.endswith(".zip"):
                return store, _published_summary(store, bucket, key)
    raise ExportError(f"no archive found for export {export_id}: it was never published, or it has expired")


def mint_link(export_id: str, expires_in_hours: int = 72) -> Link:
    """A fresh presigned link to a published archive, without rebuilding it."""
    if not isinstance(expires_in_hours, int) or not 1 <= expires_in_hours <= MAX_LINK_HOURS:
        raise RequestError(f"expires_in_hours must be an integer from 1 to {MAX_LINK_HOURS}")
    store, summary = find_archive(export_id)
    return presigned_link(store, summary, expires_in_hours * 3600)


def presigned_link(store: ObjectStore, summary: dict, seconds: int) -> Link:
    filename = summary["key"].rsplit("/", 1)[1]
    url = store.presigned_get(summary["bucket"], summary["key"], expires_in_seconds=seconds, filename=filename)
    expires_at = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    return Link(url, expires_at.isoformat().replace("+00:00", "Z"), summary["bucket"], summary["key"])


def run_export(conf: dict, export_id: str, *, link_seconds: int | None = None) -> tuple[dict, Link]:
    """The whole export in this process (the command's path); returns the summary and a fresh link."""
    current = plan(conf, export_id)
    snapshot = None
    try:
        snapshot = take_snapshot(current)
        results = [export_category(current, snapshot, c) for c in current["categories"]]
        summary = package(current, snapshot, results)
    finally:
        cleanup(current, snapshot)
    store = ObjectStore(config.storage_settings())
    seconds = link_seconds if link_seconds is not None else current["expires_in_hours"] * 3600
    return summary, presigned_link(store, summary, seconds)
