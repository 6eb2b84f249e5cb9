"""Faults end with a complete, correct archive or a clean failure; never a partial or a second archive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

from tests.helpers.exports import data_entries

pytestmark = pytest.mark.reliability
ACCOUNT = "e2e-00001"


def _archives(store, bucket: str, export_id: str) -> list[str]:
    return [k for k in store.keys(bucket, f"exports/{export_id}/") if k.endswith(".zip")]


def _staged(store, bucket: str, export_id: str) -> list[str]:
    return list(store.keys(bucket, f"staging/{export_id}/"))


def test_export_completes_through_s3_errors_and_throttling(seeded, store, faulty_s3):
    from portability.pipeline import export

    clean = export.run_export({"account_id": ACCOUNT}, str(uuid.uuid4()))
    faulty_s3.fail_transiently(0.15)  # 503 SlowDown or 500 InternalError on every call's first try, 15% of retries
    summary = export.run_export({"account_id": ACCOUNT}, str(uuid.uuid4()))
    assert faulty_s3.injected >= 5, (faulty_s3.calls, faulty_s3.injected)
    archive = store.read_bytes(summary.bucket, summary.key)
    assert data_entries(archive) == data_entries(store.read_bytes(clean.bucket, clean.key))
    assert summary.counts == clean.counts
    assert _archives(store, summary.bucket, summary.export_id) == [summary.key]
    assert not _staged(store, summary.bucket, summary.export_id)


def test_a_persistent_s3_fault_fails_cleanly_and_publishes_nothing(seeded, store, faulty_s3):
    from portability.pipeline import export
    from portability.resources.storage import StorageError

    faulty_s3.fails = lambda method, path, *attempt: "/exports/" in path  # the archive can never be written
    export_id = str(uuid.uuid4())
    with pytest.raises(StorageError, match="SlowDown|503|InternalError|500"):
        export.run_export({"account_id": ACCOUNT}, export_id)
    for bucket in ("exports-us", "exports-eu"):
        assert not list(store.keys(bucket, f"exports/{export_id}/"))
        assert not _staged(store, bucket, export_id)  # the failed run's staged copies are removed


def test_racing_runs_publish_exactly_one_archive(seeded, store, tally):
    """Three packaging tasks of the same export at once (a duplicate trigger, a zombie task)."""
    from portability.pipeline import export
    from portability.resources.storage import StorageError

    plan = export.plan({"account_id": ACCOUNT, "formats": ["csv", "jsonl", "parquet"]}, str(uuid.uuid4()))
    snapshot = export.take_snapshot(plan)
    try:
        results = [export.export_shard(plan, snapshot, shard) for category in plan.categories
                   for shard in export.shards(plan, snapshot, category)]
        summaries, errors = [], []

        def publish():
            # A loser may find the winner's archive before its summary: it fails and Airflow retries it.
            for attempt in range(3):
                try:
                    summaries.append(export.package(plan, snapshot, results))
                    return
                except StorageError as exc:
                    if attempt == 2:
                        errors.append(exc)
                    time.sleep(1)

        racers = [threading.Thread(target=publish) for _ in range(3)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
    finally:
        export.cleanup(plan.export_id, snapshot)
    assert not errors, errors
    assert len({(s.key, s.sha256) for s in summaries}) == 1
    assert _archives(store, snapshot.bucket, plan.export_id) == [summaries[0].key]
    tally["faults injected"] += len(racers) - 1  # the duplicates


_SLOW_SHARD = """
import json, sys, time
import portability.pipeline.pieces as pieces
export_piece = pieces.export_piece

def slowly(*args, **kwargs):  # a piece every half second, so the kill lands in the middle of the category
    result = export_piece(*args, **kwargs)
    time.sleep(0.5)
    return result

pieces.export_piece = slowly
from portability.pipeline import export
from portability.pipeline.model import Plan, Shard, Snapshot
plan, snapshot, shard = json.loads(sys.argv[1])
export.export_shard(Plan.from_xcom(plan), Snapshot.from_xcom(snapshot), Shard.from_xcom(shard))
"""


def test_a_task_killed_in_the_middle_of_a_category_and_retried_gives_the_same_archive(seeded, store, monkeypatch,
                                                                                     tally):
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "20")
    plan = export.plan({"account_id": ACCOUNT}, str(uuid.uuid4()))
    snapshot = export.take_snapshot(plan)
    bucket = snapshot.bucket
    try:
        work = [shard for category in plan.categories for shard in export.shards(plan, snapshot, category)]
        undisturbed = export.package(plan, snapshot, [export.export_shard(plan, snapshot, s) for s in work])
        expected = store.read_bytes(bucket, undisturbed.key)
        store.delete_prefix(bucket, f"exports/{plan.export_id}/")
        store.delete_prefix(bucket, f"staging/{plan.export_id}/files/")

        contacts = next(s for s in work if s.category == "contacts")
        pieces = contacts.stop_piece - contacts.first_piece
        assert pieces >= 5
        handed_over = json.dumps([plan.to_xcom(), snapshot.to_xcom(), contacts.to_xcom()])
        child = subprocess.Popen([sys.executable, "-c", _SLOW_SHARD, handed_over],
                                 env=os.environ.copy(), start_new_session=True)
        prefix = f"staging/{plan.export_id}/files/contacts/"
        deadline = time.monotonic() + 120
        while not any(k.endswith(".csv.deflate") for k in store.keys(bucket, prefix)):
            assert child.poll() is None and time.monotonic() < deadline, "the shard ended before it could be killed"
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        tally["faults injected"] += 1
        written = {k.split("/")[-1].split(".")[0] for k in store.keys(bucket, prefix) if k.endswith(".csv.deflate")}
        assert 0 < len(written) < pieces  # killed in the middle of the category

        retried = export.package(plan, snapshot, [export.export_shard(plan, snapshot, s) for s in work])
        assert store.read_bytes(bucket, retried.key) == expected
    finally:
        export.cleanup(plan.export_id, snapshot)


def _seed_one(db, prefix: str, contacts: int) -> str:
    from portability_dev.seed import SeedOptions, seed

    [account] = seed(db, SeedOptions(accounts=1, contacts=contacts, prefix=prefix, large_html_bytes=0))
    db.commit()
    return account


def test_a_dropped_source_connection_fails_the_read_and_the_retry_reads_one_snapshot(seeded, store, db,
                                                                                     monkeypatch, tally):
    from portability.pipeline import export

    account = _seed_one(db, "drop", 50_000)  # enough rows that each COPY is still streaming when it is cut
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "10000")
    plan = export.plan({"account_id": account}, str(uuid.uuid4()))
    dsn, dropped = db.info.dsn, []

    def cut_the_readers(where, category, piece):
        if not dropped:  # at the first staged piece, terminate every COPY of this account mid-stream
            with psycopg.connect(dsn, autocommit=True) as conn:
                dropped.extend(conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COPY (%%' "
                    "AND query LIKE %s AND pid <> pg_backend_pid()", (f"%{account}%",)).fetchall())

    with pytest.raises(Exception) as failure:  # noqa: PT011 (the driver's own error, whatever its class)
        export.take_snapshot(plan, on_piece=cut_the_readers)
    assert dropped, "no reader was running to cut"
    tally["faults injected"] += len(dropped)
    assert any(word in str(failure.value).lower() for word in ("terminat", "connection", "closed")), failure.value
    export.cleanup(plan.export_id)

    # The retry (Airflow retries the snapshot task) opens a new snapshot and reads every row once.
    snapshot = export.take_snapshot(plan)
    try:
        work = [shard for category in plan.categories for shard in export.shards(plan, snapshot, category)]
        summary = export.package(plan, snapshot, [export.export_shard(plan, snapshot, s) for s in work])
    finally:
        export.cleanup(plan.export_id, snapshot)
    for category, table in (("contacts", "contacts"), ("list_members", "list_members")):
        expected = db.execute(f"SELECT count(*) FROM {table} WHERE account_id = %s", (account,)).fetchone()[0]
        assert summary.counts[category] == {"source_count": expected, "exported": expected, "quarantined": 0}


def test_rows_changed_during_the_export_are_not_in_it(seeded, store, db, monkeypatch, tmp_path, tally):
    """The archive reflects the snapshot's instant, whatever is written to the source while it is read."""
    from portability.pipeline import export
    from tests.helpers.archive_checks import jsonl, unpack

    account = _seed_one(db, "change", 200)
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "20")
    before = {str(row[0]): row[1] for row in db.execute(
        "SELECT id, full_name FROM contacts WHERE account_id = %s", (account,)).fetchall()}
    suppressions = db.execute("SELECT count(*) FROM suppressions WHERE account_id = %s", (account,)).fetchone()[0]
    changed_id = min(before)
    plan = export.plan({"account_id": account}, str(uuid.uuid4()))
    dsn, changed_during = db.info.dsn, []

    def change_the_source(where, category, piece):
        # After the first piece: the big categories are being read, suppressions not yet started.
        if not changed_during:
            with psycopg.connect(dsn) as conn:
                conn.execute("UPDATE contacts SET full_name = 'CHANGED MID-EXPORT' WHERE id = %s", (changed_id,))
                conn.execute("DELETE FROM suppressions WHERE id = (SELECT min(id) FROM suppressions "
                             "WHERE account_id = %s)", (account,))
                conn.execute("INSERT INTO suppressions (id, account_id, kind, address, created_at) "
                             "SELECT max(id) + 1, %s, 'bounce', 'added-mid-export@example.com', now() "
                             "FROM suppressions", (account,))
            changed_during.append(category)

    snapshot = export.take_snapshot(plan, on_piece=change_the_source)
    try:
        work = [shard for category in plan.categories for shard in export.shards(plan, snapshot, category)]
        summary = export.package(plan, snapshot, [export.export_shard(plan, snapshot, s) for s in work])
    finally:
        export.cleanup(plan.export_id, snapshot)
    assert changed_during and "suppressions" not in changed_during
    tally["faults injected"] += 1
    (tmp_path / "a.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    root = unpack(tmp_path / "a.zip", tmp_path)
    assert {str(r["id"]): r["full_name"] for r in jsonl(root / "data" / "contacts.jsonl")} == before
    exported = jsonl(root / "data" / "suppressions.jsonl")
    assert len(exported) == suppressions and "added-mid-export@example.com" not in {r["address"] for r in exported}
    now = db.execute("SELECT full_name FROM contacts WHERE id = %s", (changed_id,)).fetchone()[0]
    assert now == "CHANGED MID-EXPORT"  # the change did happen, after the snapshot's instant
