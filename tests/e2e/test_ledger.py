"""The request ledger in the real PostgreSQL: idempotency, joining, deadlines and the archive's life."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def conn(store_env):
    from portability import ledger

    with ledger.connect() as conn:
        yield conn


def _request(account: str, **overrides) -> dict:
    from portability.request import parse_request
    from portability.schemas import SchemaSet

    return parse_request({"account_id": account, **overrides}, SchemaSet()).to_dict()


def _account() -> str:
    return f"ledger-{uuid.uuid4().hex[:12]}"


def test_same_idempotency_key_gives_one_request_and_one_export(conn):
    from portability import ledger

    account, key = _account(), f"ticket-{uuid.uuid4()}"
    first = ledger.submit(conn, _request(account), requested_by="privacy@example.com", idempotency_key=key)
    again = ledger.submit(conn, _request(account), requested_by="privacy@example.com", idempotency_key=key)
    assert (again.request_id, again.export_id, again.dag_run_id) == (first.request_id, first.export_id,
                                                                     first.dag_run_id)
    assert again.replayed and not first.replayed and first.needs_trigger
    count = conn.execute("SELECT count(*) AS n FROM exports WHERE account_id = %s", (account,)).fetchone()["n"]
    assert count == 1

    with pytest.raises(ledger.LedgerError, match="already used for another request"):
        ledger.submit(conn, _request(account, formats=["parquet"]), requested_by="x", idempotency_key=key)


def test_deadline_is_one_month_after_the_request(conn):
    from portability import ledger

    submission = ledger.submit(conn, _request(_account()), requested_by="someone")
    row = ledger.request_status(conn, submission.request_id)
    assert row["state"] == "requested"
    requested = row["requested_at"].astimezone(UTC)
    expected = requested.replace(month=requested.month % 12 + 1, year=requested.year + requested.month // 12)
    assert abs(row["deadline_at"] - expected) < timedelta(days=4)  # calendar months: 28 to 31 days
    assert timedelta(days=27) < row["deadline_at"] - row["requested_at"] <= timedelta(days=31)


def test_a_second_request_joins_the_export_under_way_if_it_covers_it(conn):
    from portability import ledger

    account = _account()
    first = ledger.submit(conn, _request(account), requested_by="a")
    joined = ledger.submit(conn, _request(account, categories=["contacts"]), requested_by="b",
                           notify_email="b@example.com")
    assert joined.joined and joined.export_id == first.export_id and joined.request_id != first.request_id
    wider = ledger.submit(conn, _request(account, formats=["parquet"]), requested_by="c")
    assert not wider.joined and wider.export_id != first.export_id  # Parquet is not in the first export


def test_a_run_triggered_straight_through_the_api_is_recorded_or_joins(conn):
    from portability import export, ledger
    from portability.request import export_id_for_run

    account = _account()
    run_a, run_b = f"manual__{uuid.uuid4()}", f"manual__{uuid.uuid4()}"
    plan_a = export.plan({"account_id": account}, export_id_for_run(ledger.DAG_ID, run_a))
    assert ledger.begin(conn, plan_a, run_a, requested_by="api") == {}
    assert ledger.export_record(conn, plan_a["export_id"])["state"] == "running"
    plan_b = export.plan({"account_id": account}, export_id_for_run(ledger.DAG_ID, run_b))
    assert ledger.begin(conn, plan_b, run_b, requested_by="api") == {"joined": plan_a["export_id"]}
    assert ledger.begin(conn, plan_a, run_a) == {}  # a retried first task changes nothing


def test_life_of_an_export_failed_then_ready_delivered_expired(conn):
    from portability import ledger

    account = _account()
    submission = ledger.submit(conn, _request(account), requested_by="a", notify_email="a@example.com")
    plan = {**_request(account), "export_id": submission.export_id}
    ledger.begin(conn, plan, submission.dag_run_id)
    ledger.fail(conn, submission.export_id, "snapshot: connection lost")
    failed = ledger.request_status(conn, submission.request_id)
    assert (failed["state"], failed["error"]) == ("failed", "snapshot: connection lost")

    ledger.begin(conn, plan, submission.dag_run_id)  # the run is cleared and runs again
    summary = {"export_id": submission.export_id, "region": "us", "bucket": "exports-us", "key": "exports/k.zip",
               "bytes": 123, "sha256": "ab" * 32, "snapshot_at": "2026-01-01T00:00:00.000000Z",
               "counts": {"contacts": {"source_count": 1, "exported": 1, "quarantined": 0}}}
    ledger.finish(conn, summary, timedelta(days=30))
    [waiting] = ledger.undelivered(conn, submission.export_id)
    assert str(waiting["request_id"]) == submission.request_id
    with ledger.connect() as other:  # the same delivery running twice at once tells nobody twice
        assert ledger.undelivered(other, submission.export_id) == []
    ledger.delivered(conn, submission.request_id, "2026-01-04T00:00:00Z")
    row = ledger.request_status(conn, submission.request_id)
    assert (row["state"], row["bytes"], row["error"]) == ("delivered", 123, None)
    assert row["retain_until"] - row["ready_at"] == timedelta(days=30)

    due = [r["export_id"] for r in ledger.past_retention(conn, datetime.now(UTC) + timedelta(days=31))]
    assert uuid.UUID(submission.export_id) in due
    ledger.expire(conn, submission.export_id, "retention")
    row = ledger.request_status(conn, submission.request_id)
    assert (row["state"], row["expiry_reason"]) == ("expired", "retention")


def test_deadline_watch_lists_overdue_and_due_requests(conn):
    from portability import ledger

    overdue = ledger.submit(conn, _request(_account()), requested_by="a")
    conn.execute("UPDATE export_requests SET requested_at = now() - interval '40 days', "
                 "deadline_at = now() - interval '9 days' WHERE request_id = %s", (overdue.request_id,))
    soon = ledger.submit(conn, _request(_account()), requested_by="b")
    conn.execute("UPDATE export_requests SET deadline_at = now() + interval '2 days' WHERE request_id = %s",
                 (soon.request_id,))
    later = ledger.submit(conn, _request(_account()), requested_by="c")
    conn.commit()
    listed = {str(r["request_id"]): r["overdue"] for r in ledger.overdue_or_due(conn, timedelta(days=7))}
    assert listed[overdue.request_id] is True and listed[soon.request_id] is False
    assert later.request_id not in listed


def test_deadline_alert_claims_a_request_once_per_quiet_period_and_a_concurrent_watch_waits(conn):
    import threading

    from portability import ledger

    late = ledger.submit(conn, _request(_account()), requested_by="a")
    conn.commit()
    quiet = timedelta(hours=20)
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]
    claimed_elsewhere = []
    with ledger.connect() as other:  # a second run while the first one's email is still going out
        worker = threading.Thread(target=lambda: claimed_elsewhere.append(
            ledger.claim_deadline_alerts(other, [late.request_id], quiet)))
        worker.start()
        assert _waits_on_a_lock(conn, other.info.backend_pid)  # on the first run's claim
        conn.commit()  # the first run's email went out
        worker.join(timeout=30)
        other.commit()
    assert claimed_elsewhere == [[]]
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == []  # a re-run the same day
    conn.execute("UPDATE export_requests SET deadline_alerted_at = now() - interval '21 hours' "
                 "WHERE request_id = %s", (late.request_id,))
    conn.commit()
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]  # next day
    conn.rollback()  # the email failed: the claim is given back
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]
    conn.commit()


def _waits_on_a_lock(conn, pid: int, timeout: float = 30) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.execute("SELECT pg_stat_clear_snapshot()")  # else one transaction reads one cached snapshot
        if conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()["wait_event_type"] == "Lock":
            return True
        time.sleep(0.05)
    return False


def test_cancel_withdraws_a_request_and_its_export_when_nobody_else_waits(conn):
    from portability import ledger

    account = _account()
    first = ledger.submit(conn, _request(account), requested_by="a")
    second = ledger.submit(conn, _request(account), requested_by="b")
    assert second.joined
    assert ledger.cancel(conn, first.request_id)["export_cancelled"] is False  # b still waits
    assert ledger.export_record(conn, first.export_id)["state"] == "requested"
    result = ledger.cancel(conn, second.request_id)
    assert result == {"export_id": first.export_id, "dag_run_id": first.dag_run_id, "export_cancelled": True}
    assert ledger.export_record(conn, first.export_id)["state"] == "cancelled"
    plan = {**_request(account), "export_id": first.export_id}
    assert ledger.begin(conn, plan, first.dag_run_id) == {"cancelled": first.export_id}  # the run does nothing
    with pytest.raises(ledger.LedgerError, match="only a requested or running request can be cancelled"):
        ledger.cancel(conn, first.request_id)
