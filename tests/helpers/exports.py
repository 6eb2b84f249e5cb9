"""Exports through the staged route (snapshot staged, then shards, as the DAG runs them), and the data files of
an archive as stored, to compare routes byte for byte."""

from __future__ import annotations

import io
import struct
import uuid
import zipfile
from dataclasses import replace

PIECE_ROWS = 15  # the e2e accounts have 40 or 300 contacts and more list memberships: several pieces each


def export_archive(store, plan, snapshot, shard_rows: int, reverse: bool) -> tuple[bytes, int]:
    """Export the staged snapshot with one shard grouping, shards run in the given order; the archive's bytes."""
    from portability.pipeline import export

    current = replace(plan, shard_rows=shard_rows)
    work = export.shards(current, snapshot)
    results = [export.export_shard(current, snapshot, shard) for shard in (reversed(work) if reverse else work)]
    summary = export.package(current, snapshot, results)
    data = store.read_bytes(summary.bucket, summary.key)
    # Unpublish it, so the next grouping really builds its own archive.
    store.delete_prefix(summary.bucket, f"exports/{plan.export_id}/")
    return data, len(work)


def staged_route_archive(store, conf: dict) -> bytes:
    """The archive of `conf` exported as the DAG does: snapshot staged, one shard per piece, run in reverse."""
    from portability.pipeline import export

    plan = export.plan(conf, str(uuid.uuid4()))
    snapshot = export.take_snapshot(plan)
    try:
        return export_archive(store, plan, snapshot, shard_rows=PIECE_ROWS, reverse=True)[0]
    finally:
        export.cleanup(plan.export_id, snapshot)


def data_entries(archive: bytes) -> dict[str, tuple[int, int, bytes]]:
    """Each data file of an archive by its path in the bag: (CRC, raw size, the compressed bytes as stored)."""
    entries = {}
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for info in zf.infolist():
            path = info.filename.split("/", 1)[1]
            if not path.startswith("data/") or path.startswith(("data/schemas/", "data/datapackage")):
                continue
            name_len, extra_len = struct.unpack("<HH", archive[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            entries[path] = (info.CRC, info.file_size, archive[start:start + info.compress_size])
    return entries
