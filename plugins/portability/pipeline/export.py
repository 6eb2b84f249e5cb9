"""The steps of one export: the same for the `portability` command, `account_export` and `scheduled_exports`.

    plan -> snapshot -> export_shard (one per shard) -> package -> cleanup

They differ only in who runs the shards. An account whose every category fits in one shard
(`shard_rows`) is exported by one process from start to end (`export_in_process`: the command, a
scheduled export, and `account_export`'s one task for such an account): each category is read,
validated and written in one pass, its deflated bytes going straight into the archive's upload
(see `archive.parts`). A bigger account is staged (`take_snapshot`), its shards are exported by
as many tasks as Airflow gives it, and `package` assembles the archive. The archive is the same
bytes on either route, however it was sharded.

Steps pass the typed records of `pipeline.model`, never data: staged data moves through the
export's staging prefix in the region's bucket, so any step can be retried on any worker and
gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial

from portability.archive.parts import ArchiveParts
from portability.pipeline.model import CategoryResult, PieceResult, Plan, Shard, ShardResult, Snapshot, Summary
from portability.pipeline.progress import Progress, Report, idle
from portability.records.schemas import SchemaSet
from portability.records.values import render_timestamp
from portability.resources import config, keys
from portability.resources.mapping import Reference, check_references, load_mapping
from portability.resources.readahead import read_ahead
from portability.resources.storage import ARCHIVE_PART_BYTES, AlreadyPublished, ObjectStore, StorageError
from portability.service.request import RequestError, parse_request

log = logging.getLogger(__name__)

_EXPORT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_LINK_HOURS = 168  # SigV4 presigned URLs live at most 7 days
_READERS = 2  # categories read in parallel from the shared snapshot


class ExportError(RuntimeError):
    """The export cannot go on; the message says why and what to do."""


class AccountNotFound(ExportError):
    pass


def plan(conf: dict, export_id: str) -> Plan:
    """Validate the request; nothing has been read from the source yet."""
    check_export_id(export_id)  # it names every object key of the export
    request = parse_request(conf, SchemaSet())
    return Plan(export_id=export_id, **request.to_dict(), piece_rows=config.piece_rows(),
                shard_rows=config.shard_rows())


class NeedsShards(ExportError):
    """The account has a category of more than one shard's rows, and the caller shards such accounts.

    Raised once the snapshot is open and counted, before anything is read or staged.
    """


def _unless_sharded(plan: Plan) -> Callable[[Snapshot, dict[str, int]], None]:
    """An `on_open` check that refuses, with NeedsShards, an account with a category bigger than one shard."""
    def check(where: Snapshot, estimates: dict[str, int]) -> None:
        bigger = sorted(c for c, rows in where.source_counts.items() if rows > plan.shard_rows)
        if bigger:
            raise NeedsShards(f"{', '.join(bigger)} hold more than {plan.shard_rows} rows: export them in shards")

    return check


def take_snapshot(plan: Plan, on_piece: Callable[[Snapshot, str, int], None] | None = None,
                  on_open: Callable[[Snapshot, dict[str, int]], None] | None = None,
                  progress: Progress | None = None) -> Snapshot:
    """Read every requested category from one snapshot of the source into staged pieces.

    `on_piece(where, category, piece)` is told of each piece as soon as it is staged (`where`
    has the bucket and snapshot instant), so that one process can export pieces while the
    others are still being read. With the `progress` of a step that also exports the pieces,
    staging only adds its time to it (the rows count once exported); otherwise the staging keeps
    its own, counting the rows staged, in the log only (the shards' tasks record theirs).
    """
    if progress is not None:
        return _take_snapshot(plan, on_piece, on_open, progress, count=False)
    with Progress(f"export {plan.export_id}: staging", export_id=plan.export_id, record=False) as staging:
        return _take_snapshot(plan, on_piece, on_open, staging, count=True)


def _take_snapshot(plan: Plan, on_piece, on_open, progress: Progress, count: bool) -> Snapshot:
    store = ObjectStore(config.storage_settings(), timed_upload=partial(progress.timed, "uploading"))

    def stage(where: Snapshot, category: str, rows) -> list[int]:
        staged = partial(on_piece, where, category) if on_piece else None
        return _stage_pieces(store, where.bucket, plan, category, rows, where.snapshot_at, staged,
                             progress if count else None)

    return _read_snapshot(plan, stage, on_open, progress)


def export_from_source(plan: Plan, store: ObjectStore, parts: ArchiveParts,
                       on_open: Callable[[Snapshot, dict[str, int]], None] | None = None,
                       progress: Progress | None = None) -> tuple[Snapshot, list[ShardResult]]:
    """Read and export every requested category in one pass, straight into the archive's parts.

    Each category's pieces are validated and written in key order as they are read, so each
    file's SHA-256 is taken on the way, and each file's deflated bytes go into the archive's
    upload as they are made (see `parts`). The deflated pieces are the same bytes as the staged
    route's, so the archive is too. Parquet is assembled from staged rows, so a request for it
    takes `take_snapshot` instead. Returns the snapshot and one shard result per category.
    """
    from portability.pipeline.pieces import TEXT_FORMATS

    exported: dict[str, ShardResult] = {}

    def open_archive(where: Snapshot, estimates: dict[str, int]) -> None:
        if on_open:
            on_open(where, estimates)
        kinds = [f for f in plan.formats if f in TEXT_FORMATS] + ["errors"]
        parts.open(where.bucket, [(c, kind) for c in plan.categories for kind in kinds], estimates)

    def export(where: Snapshot, category: str, rows) -> list[int]:
        exported[category] = _export_category(plan, where, category, rows, store, parts, progress)
        return [piece.rows for piece in exported[category].pieces]

    snapshot = _read_snapshot(plan, export, on_open=open_archive, progress=progress)
    return snapshot, [exported[category] for category in plan.categories]


def _check_mapping(plan: Plan, mapping: dict, schemas: SchemaSet) -> None:
    missing = [c for c in ["account", *plan.categories] if c not in mapping]
    if missing:
        raise ExportError(f"the source mapping has no query for {sorted(set(missing))}: add them to the mapping")
    for category in plan.categories:
        check_references(mapping[category], [c.name for c in schemas.columns(category)])
    if plan.subject_email:
        without = [c for c in plan.categories if not mapping[c].subject_query]
        if without:
            raise ExportError(f"the source mapping has no subject query for {without}: add "
                              "[categories.<category>.subject] to the mapping, or leave them out of the request")


def _read_snapshot(plan: Plan, read_category: Callable[[Snapshot, str, object], list[int]],
                   on_open: Callable[[Snapshot, dict[str, int]], None] | None = None,
                   progress: Progress | None = None) -> Snapshot:
    """Open one snapshot and hand each requested category's rows to `read_category`, which returns its piece sizes.

    Categories are read on `_READERS` threads, the biggest first, each from its own connection.
    `on_open(where, estimated_rows)` is told where the export goes, and how many rows each category
    holds (`where.source_counts`), before any is read. `progress` is told each category's rows
    and pieces to come (the source count is exact), and times each batch read from the source.
    """
    from portability.pipeline import memory
    from portability.resources import source

    memory.limit_retention()
    schemas, mapping = SchemaSet(), load_mapping()
    storage = config.storage_settings()
    account_id = plan.account_id
    _check_mapping(plan, mapping, schemas)

    queries = {c: mapping[c].for_subject() if plan.subject_email else mapping[c] for c in plan.categories}
    parameters = {"account_id": account_id, "since": plan.since, "until": plan.until,
                  "subject_email": plan.subject_email}
    progress = progress or idle()
    with ExitStack() as opened:
        with progress.timed("reading"):  # the snapshot, the account and the counts come from the source
            snap = opened.enter_context(source.snapshot(config.source_settings().conninfo, parameters))
            account = _account(snap, mapping["account"], schemas, account_id)
            # The references travel with the snapshot, so every piece is checked by the mapping it was read with.
            where = Snapshot(bucket=storage.bucket_for(account["region"]), snapshot_at=_render(snap.snapshot_at),
                             region=account["region"],
                             references={c: [r.to_dict() for r in mapping[c].references] for c in plan.categories
                                         if mapping[c].references})
            # The source count: every row the account owns in each category's table, counted apart from the query.
            owned = {category: snap.owned_rows(queries[category]) for category in plan.categories}
            estimates = {category: snap.estimated_rows(queries[category]) for category in plan.categories}
        largest_first = sorted(plan.categories, key=lambda c: -estimates[c])
        if on_open:
            on_open(replace(where, source_counts=owned), estimates)
        for category in plan.categories:
            progress.expect(category, owned[category], max(1, -(-owned[category] // plan.piece_rows)))

        def read(category: str) -> list[int]:
            with snap.reader(queries[category], schemas.columns(category)) as rows:
                return read_category(where, category, progress.timed_batches(rows))

        with ThreadPoolExecutor(_READERS, thread_name_prefix="snapshot-reader") as readers:
            pieces = dict(zip(largest_first, readers.map(read, largest_first), strict=True))
    for category in plan.categories:
        returned = sum(pieces[category])
        log.info("snapshot of %s: %d rows in %d pieces", category, returned, len(pieces[category]))
        if returned != owned[category]:
            raise ExportError(
                f"{category}: the mapping's query returned {returned} rows, but the account owns {owned[category]} "
                f"in the source (the mapping's count): the query {'drops' if returned < owned[category] else 'repeats'}"
                " rows, and the archive could not account for them. Fix the query in the source mapping "
                f"({config.mapping_path()}): one row per row of the table, joins as LEFT JOINs within the account, "
                "each declared as a reference so that a row pointing outside the account is quarantined with the "
                "reason. Nothing was published.")
    return replace(where, source_counts=owned, pieces={c: pieces[c] for c in plan.categories})


def cut_pieces(rows, piece_rows: int) -> Iterator[tuple[int, Iterator]]:
    """A category's batches cut, in order, into pieces of `piece_rows` rows: (index, the piece's batches).

    Each piece must be read to its end before the next is taken. There is always a first piece,
    empty for an empty category, so that every file gets its header.
    """
    batches = (batch for batch in rows if batch.num_rows)
    pending = next(batches, None)  # the rows read from the source but not yet given to a piece

    def piece() -> Iterator:
        nonlocal pending
        wanted = piece_rows
        while wanted and pending is not None:
            take = min(wanted, pending.num_rows)
            yield pending.slice(0, take)
            wanted -= take
            pending = pending.slice(take) if take < pending.num_rows else next(batches, None)

    index = 0
    while True:
        yield index, piece()
        index += 1
        if pending is None:
            return


def _stage_pieces(store: ObjectStore, bucket: str, plan: Plan, category: str, rows, snapshot_at: str,
                  staged: Callable[[int], None] | None, progress: Progress | None = None) -> list[int]:
    """Write the category's rows as staged pieces (Arrow IPC, LZ4); returns each piece's rows.

    `progress`, if given, counts the rows and pieces staged and times writing them.
    """
    import pyarrow as pa

    schema = rows.schema.with_metadata({"snapshot_at": snapshot_at})
    options = pa.ipc.IpcWriteOptions(compression="lz4")
    sizes = []
    writing = progress.timed("writing") if progress else nullcontext()
    for piece, batches in cut_pieces(rows, plan.piece_rows):
        sizes.append(0)
        key = keys.snapshot_piece(plan.export_id, category, piece)
        with store.upload(bucket, key) as upload, pa.ipc.new_stream(upload, schema, options=options) as writer:
            for batch in batches:
                with writing:
                    writer.write_batch(batch)
                sizes[-1] += batch.num_rows
                if progress:
                    progress.add_rows(category, batch.num_rows)
        if progress:
            progress.piece_done(category)
        if staged:  # the upload is complete: the piece is staged
            staged(piece)
    return sizes


def _export_category(plan: Plan, where: Snapshot, category: str, rows, store: ObjectStore,
                     parts: ArchiveParts, progress: Progress | None = None) -> ShardResult:
    """Export a category's pieces in order straight from the source into the archive's parts.

    Returns a shard result with each file's SHA-256.
    """
    import hashlib

    from portability.pipeline.pieces import TEXT_FORMATS

    schemas = SchemaSet()
    kinds = [f for f in plan.formats if f in TEXT_FORMATS] + ["errors"]
    running = {kind: hashlib.sha256() for kind in kinds}  # each file's bytes pass here in order
    files = {}  # kind -> FileParts, from the first piece that writes the kind to the last

    def open_sink(kind: str):
        if kind not in files:
            files[kind] = parts.file(category, kind)
        return nullcontext(files[kind])

    pieces = []
    with read_ahead(rows) as batches:
        for piece, piece_batches in cut_pieces(batches, plan.piece_rows):
            pieces.append(_write_piece(plan, category, piece, piece_batches, schemas, store, where.bucket,
                                       running, open_sink, _references(where, category), progress))
            log.info("%s piece %d: %d exported, %d quarantined", category, piece, pieces[-1].exported,
                     pieces[-1].quarantined)
    for file in files.values():
        file.close()
    if not any(p.errors for p in pieces):
        del running["errors"]
    return ShardResult(category, tuple(pieces), {kind: digest.hexdigest() for kind, digest in running.items()})


def _account(snap, mapping, schemas: SchemaSet, account_id: str) -> dict:
    with snap.reader(mapping, schemas.columns("account")) as rows:
        for batch in rows:
            if batch.num_rows:
                return batch.slice(0, 1).to_pylist()[0]
    raise AccountNotFound(f"account not found: {account_id!r}; check the account id. Nothing was exported.")


def _render(instant: datetime) -> str:
    return render_timestamp(instant.astimezone(UTC))


def shards(plan: Plan, snapshot: Snapshot, category: str | None = None) -> list[Shard]:
    """The shards of one category, or of every requested one: runs of pieces of about `shard_rows` rows."""
    per_shard = max(1, plan.shard_rows // plan.piece_rows)
    return [
        Shard(name, first, min(first + per_shard, len(snapshot.pieces[name])), len(snapshot.pieces[name]))
        for name in plan.categories if category in (None, name)
        for first in range(0, len(snapshot.pieces[name]), per_shard)
    ]


def export_shard(plan: Plan, snapshot: Snapshot, shard: Shard, store: ObjectStore | None = None,
                 progress: Progress | None = None) -> ShardResult:
    """Validate every record of a shard's pieces and write each piece of the requested text files.

    A process running many shards passes one `store`, and the `progress` it keeps for all of them:
    each S3 client holds its own connection pool and buffers. A shard run on its own (a mapped
    task) keeps its own progress, recorded in the ledger under the shard's label.
    """
    if progress is not None:
        return _export_shard(plan, snapshot, shard, store, progress)
    with Progress(f"export {plan.export_id}: {shard.label}", export_id=plan.export_id, part=shard.label) as own:
        staged = snapshot.pieces.get(shard.category, [])[shard.first_piece:shard.stop_piece]
        own.expect(shard.category, sum(staged) if staged else None, shard.stop_piece - shard.first_piece)
        return _export_shard(plan, snapshot, shard, store, own)


def _export_shard(plan: Plan, snapshot: Snapshot, shard: Shard, store: ObjectStore | None,
                  progress: Progress) -> ShardResult:
    from portability.pipeline import memory

    memory.limit_retention()
    schemas = SchemaSet()
    store = store or ObjectStore(config.storage_settings(), timed_upload=partial(progress.timed, "uploading"))
    category = shard.category
    results = []
    for piece in range(shard.first_piece, shard.stop_piece):
        with progress.timed("reading"):
            reader = _open_piece(store, snapshot.bucket, plan.export_id, category, piece, snapshot.snapshot_at)
        results.append(_write_piece(plan, category, piece, progress.timed_batches(reader), schemas, store,
                                    snapshot.bucket, references=_references(snapshot, category), progress=progress))
    exported = sum(r.exported for r in results)
    quarantined = sum(r.quarantined for r in results)
    log.info("%s: %d exported, %d quarantined", shard.label, exported, quarantined)
    return ShardResult(category, tuple(results))


def _write_piece(plan: Plan, category: str, piece: int, batches, schemas: SchemaSet, store: ObjectStore,
                 bucket: str, running: dict | None = None, open_sink: Callable | None = None,
                 references: tuple[Reference, ...] = (), progress: Progress | None = None) -> PieceResult:
    """One piece's deflated bytes of each file (and its quarantine list), under staging keys unless `open_sink`
    says where.

    See `pieces.export_piece`.
    """
    from portability.pipeline.pieces import export_piece

    return export_piece(
        plan, category, piece, batches, schemas, store=store, bucket=bucket,
        open_sink=open_sink or (lambda kind: store.upload(
            bucket, keys.deflated_piece(plan.export_id, category, piece, kind))),
        invalid_rows_key=keys.invalid_rows(plan.export_id, category, piece), running=running,
        references=references, progress=progress,
    )


def _references(snapshot: Snapshot, category: str) -> tuple[Reference, ...]:
    """The mapping's references of a category, as the snapshot that read it recorded them."""
    return tuple(Reference(r["column"], r["what"], tuple(r["joined"]))
                 for r in snapshot.references.get(category, []))


def _open_piece(store: ObjectStore, bucket: str, export_id: str, category: str, piece: int, snapshot_at: str):
    """A staged piece, refusing rows of any other snapshot than this run's."""
    import pyarrow as pa
    from botocore.exceptions import ClientError

    try:
        reader = pa.ipc.open_stream(store.open(bucket, keys.snapshot_piece(export_id, category, piece)))
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


def category_results(plan: Plan, snapshot: Snapshot, shard_results: list[ShardResult]) -> list[CategoryResult]:
    """One result per requested category, its pieces in order; refuses a missing or doubled piece."""
    by_category: dict[str, dict[int, PieceResult]] = {c: {} for c in plan.categories}
    # A file's SHA-256 is known only from a shard that wrote the whole category in order.
    known_sha256 = {shard.category: shard.sha256 for shard in shard_results if shard.sha256}
    for shard in shard_results:
        for piece in shard.pieces:
            if piece.piece in by_category[shard.category]:
                raise ExportError(f"{shard.category}: piece {piece.piece} was exported twice; rerun the export")
            by_category[shard.category][piece.piece] = piece
    results = []
    for category in plan.categories:
        pieces = by_category[category]
        expected = len(snapshot.pieces[category])
        if sorted(pieces) != list(range(expected)):
            raise ExportError(f"{category}: {len(pieces)} of {expected} pieces were exported; rerun the export")
        ordered = tuple(pieces[i] for i in range(expected))
        exported = sum(p.exported for p in ordered)
        quarantined = sum(p.quarantined for p in ordered)
        if exported + quarantined != snapshot.source_counts[category]:
            raise ExportError(f"{category}: exported {exported} + quarantined {quarantined} != source "
                              f"{snapshot.source_counts[category]}")
        results.append(CategoryResult(category, snapshot.source_counts[category], exported, quarantined, ordered,
                                      known_sha256.get(category, {})))
    return results


def package(plan: Plan, snapshot: Snapshot, shard_results: list[ShardResult],
            parts: ArchiveParts | None = None, progress: Progress | None = None) -> Summary:
    """Zip the bag straight into the archive's multipart upload; it appears only when complete.

    With `parts`, the text files' bytes are already on their way into that upload (`export_from_source`).
    With the `progress` of the step that exported the rows, packaging adds its time to it; on its own
    (the `package` task) it keeps its own, in the log only.
    """
    if progress is not None:
        return _package(plan, snapshot, shard_results, parts, progress)
    with Progress(f"export {plan.export_id}: packaging", export_id=plan.export_id, record=False,
                  counts_rows=False) as own:
        return _package(plan, snapshot, shard_results, parts, own)


def _package(plan: Plan, snapshot: Snapshot, shard_results: list[ShardResult], parts: ArchiveParts | None,
             progress: Progress) -> Summary:
    from portability.archive import packaging
    from portability.pipeline import memory

    memory.limit_retention()
    schemas = SchemaSet()
    storage = config.storage_settings()
    store = ObjectStore(storage, timed_upload=partial(progress.timed, "uploading"))
    reading = partial(progress.timed, "reading")
    bucket, export_id, account_id = snapshot.bucket, plan.export_id, plan.account_id
    key = keys.archive(export_id, account_id, storage.key_secret)
    if store.exists(bucket, key):
        log.info("export %s is already published; keeping it", export_id)
        if parts:
            parts.abort()
        return _published_summary(store, bucket, key)

    results = category_results(plan, snapshot, shard_results)
    def open_deflated(category: str, piece: int, kind: str):
        with reading():
            stream = store.open(bucket, keys.deflated_piece(export_id, category, piece, kind))
        return progress.timed_stream(stream)

    def open_piece(category: str, piece: int):
        with reading():
            reader = _open_piece(store, bucket, export_id, category, piece, snapshot.snapshot_at)
        return progress.timed_batches(reader)

    def invalid_rows(category: str, piece: int) -> list[int]:
        with reading():
            return json.loads(store.read_bytes(bucket, keys.invalid_rows(export_id, category, piece)))

    sources = packaging.StagedSources(open_deflated=open_deflated, open_piece=open_piece, invalid_rows=invalid_rows,
                                      parts=parts)
    archive = partial(packaging.write_archive, plan=plan, snapshot=snapshot, results=results, schemas=schemas,
                      sources=sources, root=keys.archive_name(account_id, export_id),
                      organization=config.organization_name(),
                      snapshot_at=datetime.fromisoformat(snapshot.snapshot_at.replace("Z", "+00:00")))
    try:
        if parts:
            router = parts.router()
            with progress.timed("writing"):
                described = archive(router)
            with progress.timed("uploading"):  # the last parts, and the archive read back for its SHA-256
                size, sha256 = parts.finish(router)
        else:
            with store.upload(bucket, key, content_type="application/zip", create_only=True,
                              part_bytes=ARCHIVE_PART_BYTES) as upload, progress.timed("writing"):
                described = archive(upload)
            size, sha256 = upload.bytes_written, upload.sha256
    except AlreadyPublished:
        log.info("export %s was published by another run meanwhile; keeping that one", export_id)
        return _published_summary(store, bucket, key)
    summary = Summary(
        export_id=export_id, account_id=account_id, region=snapshot.region, bucket=bucket, key=key, bytes=size,
        sha256=sha256, snapshot_at=snapshot.snapshot_at,
        counts={r["category"]: {k: r[k] for k in ("source_count", "exported", "quarantined")} for r in described},
    )
    store.put_bytes(bucket, keys.summary(key), json.dumps(summary.to_xcom(), indent=2).encode(),
                    content_type="application/json")
    return summary


def _published_summary(store: ObjectStore, bucket: str, key: str) -> Summary:
    try:
        return Summary.from_xcom(json.loads(store.read_bytes(bucket, keys.summary(key))))
    except Exception as exc:
        # The other run is between its archive and its summary: retrying settles it.
        raise StorageError("the archive exists but its summary is not written yet; retry") from exc


def cleanup(export_id: str, snapshot: Snapshot | None = None) -> int:
    """Delete the export's staging objects (personal data) once the archive is out, or the run failed.

    Without the snapshot (the run failed before it was taken) every region's bucket is cleaned.
    """
    check_export_id(export_id)
    store = ObjectStore(config.storage_settings())
    buckets = [snapshot.bucket] if snapshot else sorted(set(store.settings.buckets.values()))
    return sum(store.delete_prefix(bucket, keys.staging_prefix(export_id)) for bucket in buckets)


@dataclass(frozen=True)
class Link:
    url: str = field(repr=False)  # a bearer credential: print it to the requester, never log it
    expires_at: str
    bucket: str
    key: str


def check_export_id(export_id: str, what: str = "export id") -> None:
    """Export and request ids are UUIDs; nothing else may reach an object key or a ledger query."""
    if not isinstance(export_id, str) or not _EXPORT_ID.fullmatch(export_id):
        raise RequestError(f"invalid {what} {str(export_id)[:80]!r}: expected a UUID, as printed when it was made")


def find_archive(export_id: str) -> tuple[ObjectStore, Summary]:
    """The published archive of an export, in whichever region's bucket holds it."""
    check_export_id(export_id)
    storage = config.storage_settings()
    store = ObjectStore(storage)
    for bucket in sorted(set(storage.buckets.values())):
        for key in store.keys(bucket, keys.archive_prefix(export_id)):
            if key.endswith(".zip"):
                return store, _published_summary(store, bucket, key)
    raise ExportError(f"no archive found for export {export_id}: it was never published, or it has expired")


def presigned_link(store: ObjectStore, bucket: str, key: str, seconds: int) -> Link:
    filename = key.rsplit("/", 1)[1]
    url = store.presigned_get(bucket, key, expires_in_seconds=seconds, filename=filename)
    expires_at = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    return Link(url, expires_at.isoformat().replace("+00:00", "Z"), bucket, key)


def _shard_workers() -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1))


def run_export(conf: dict, export_id: str, watch: Callable[[Report], None] | None = None) -> Summary:
    """The whole export of a request in this process; see `export_in_process`."""
    return export_in_process(plan(conf, export_id), watch=watch)


def export_in_process(current: Plan, *, unless_sharded: bool = False,
                      watch: Callable[[Report], None] | None = None) -> Summary:
    """The whole export in this process, its staging deleted at the end whatever the outcome.

    With `unless_sharded`, an account with a category bigger than one shard raises NeedsShards as
    soon as the snapshot is counted, for the caller to export it in shards (account_export).

    Text formats are read, validated and written in one pass into the archive's upload. Parquet
    is assembled from staged rows: each piece is then its own shard, exported by a thread as soon
    as it is staged while the snapshot goes on reading.

    Its progress is logged, recorded in the ledger (part "") and told to `watch` (the command's bar).
    """
    with Progress(f"export {current.export_id}", export_id=current.export_id, watchers=[watch],
                  stopped_by=(NeedsShards,)) as progress:
        return _export_in_process(current, unless_sharded, progress)


def _export_in_process(current: Plan, unless_sharded: bool, progress: Progress) -> Summary:
    export_id = current.export_id
    check = _unless_sharded(current) if unless_sharded else None
    snapshot = None
    failed = True
    try:
        store = ObjectStore(config.storage_settings(), timed_upload=partial(progress.timed, "uploading"))
        if "parquet" not in current.formats:
            key = keys.archive(export_id, current.account_id, store.settings.key_secret)
            parts = ArchiveParts(store, key)
            try:
                snapshot, shard_results = export_from_source(current, store, parts, check, progress)
                summary = package(current, snapshot, shard_results, parts, progress)
            except BaseException:
                _quietly("abort the archive's upload", parts.abort)  # its parts hold personal data
                raise
            finally:
                parts.close()
        else:
            # Arrow, ISA-L, libpq and the uploads release the GIL, so the threads share the cores.
            with ThreadPoolExecutor(_shard_workers(), thread_name_prefix="shard") as pool:
                exporting = []

                def export_when_staged(where: Snapshot, category: str, piece: int) -> None:
                    shard = Shard(category, piece, piece + 1, 0)  # how many pieces follow is not known yet
                    exporting.append(pool.submit(export_shard, current, where, shard, store, progress))

                try:
                    snapshot = take_snapshot(current, on_piece=export_when_staged, on_open=check, progress=progress)
                    shard_results = [future.result() for future in exporting]
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # a failed piece (or read) ends the export: skip the rest
                    raise
            summary = package(current, snapshot, shard_results, progress=progress)
        failed = False
    finally:
        if failed:  # the failure is what the caller must see: cleaning up after it may fail for the same reason
            _quietly("delete the export's staging", cleanup, export_id, snapshot)
        else:
            cleanup(export_id, snapshot)
    return summary


def _quietly(what: str, step: Callable, *args) -> None:
    """Clean up after a failure without hiding it: a failure of the clean-up itself is only logged.

    Lifecycle rules delete what is left (staging after two days, incomplete uploads after one).
    """
    try:
        step(*args)
    except Exception as exc:  # noqa: BLE001 (the first failure is the one raised)
        from portability.resources.storage import explain

        log.info("could not %s after the export failed: %s", what, explain(exc))
