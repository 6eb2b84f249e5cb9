"""The request ledger in the real PostgreSQL: idempotency, joining, deadlines and the archive's life."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture
def conn(store_env):
    from portability.resources import ledger

    with ledger.connect() as conn:
        yield conn


def _request(account: str, **overrides) -> dict:
    from portability.records.schemas import SchemaSet
    from portability.service.request import parse_request

    return parse_request({"account_id": account, **overrides}, SchemaSet()).to_dict()


def _account() -> str:
    return f"ledger-{uuid.uuid4().hex[:12]}"


def test_same_idempotency_key_gives_one_request_and_one_export(conn):
    from portability.resources import ledger

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
    from portability.resources import ledger

    submission = ledger.submit(conn, _request(_account()), requested_by="someone")
    row = ledger.request_status(conn, submission.request_id)
    assert row["state"] == "requested"
    requested = row["requested_at"].astimezone(UTC)
    expected = requested.replace(month=requested.month % 12 + 1, year=requested.year + requested.month // 12)
    assert abs(row["deadline_at"] - expected) < timedelta(days=4)  # calendar months: 28 to 31 days
    assert timedelta(days=27) < row["deadline_at"] - row["requested_at"] <= timedelta(days=31)


def test_a_second_request_joins_the_export_under_way_if_it_covers_it(conn):
    from portability.resources import ledger

    account = _account()
    first = ledger.submit(conn, _request(account), requested_by="a")
    joined = ledger.submit(conn, _request(account, categories=["contacts"]), requested_by="b",
                           notify_email="b@example.com")
    assert joined.joined and joined.export_id == first.export_id and joined.request_id != first.request_id
    wider = ledger.submit(conn, _request(account, formats=["parquet"]), requested_by="c")
    assert not wider.joined and wider.export_id != first.export_id  # Parquet is not in the first export


def test_a_run_triggered_straight_through_the_api_is_recorded_or_joins(conn):
    from portability.pipeline import export
    from portability.resources import ledger
    from portability.service.request import export_id_for_run

    account = _account()
    run_a, run_b = f"manual__{uuid.uuid4()}", f"manual__{uuid.uuid4()}"
    plan_a = export.plan({"account_id": account}, export_id_for_run(ledger.DAG_ID, run_a))
    plan_b = export.plan({"account_id": account}, export_id_for_run(ledger.DAG_ID, run_b))
    recorded_a = {"export_id": plan_a.export_id, **plan_a.options()}
    recorded_b = {"export_id": plan_b.export_id, **plan_b.options()}
    assert ledger.begin(conn, recorded_a, run_a, requested_by="api") == {}
    assert ledger.export_record(conn, plan_a.export_id)["state"] == "running"
    assert ledger.begin(conn, recorded_b, run_b, requested_by="api") == {"joined": plan_a.export_id}
    assert ledger.begin(conn, recorded_a, run_a) == {}  # a retried first task changes nothing


def test_life_of_an_export_failed_then_ready_delivered_expired(conn):
    from portability.resources import ledger

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
    assert ledger.queue_notifications(conn, submission.export_id) == 1
    claim = timedelta(minutes=10)
    waiting = ledger.claim_notification(conn, submission.export_id, claim, [])
    assert str(waiting["request_id"]) == submission.request_id
    assert waiting["notification_id"] == uuid.UUID(ledger.notification_id(submission.request_id, "export.ready"))
    with ledger.connect() as other:  # the same delivery running twice at once tells nobody twice
        assert ledger.claim_notification(other, submission.export_id, claim, []) is None
        # ... and the claim holds no lock while the notice is being sent: the ledger stays writable
        other.execute("SET lock_timeout = '2s'")
        other.execute("UPDATE export_requests SET notification_error = NULL WHERE request_id = %s",
                      (submission.request_id,))
        other.commit()
    ledger.notification_sent(conn, waiting, "2026-01-04T00:00:00Z")
    row = ledger.request_status(conn, submission.request_id)
    assert (row["state"], row["bytes"], row["error"]) == ("delivered", 123, None)
    assert row["retain_until"] - row["ready_at"] == timedelta(days=30)

    due = [r["export_id"] for r in ledger.past_retention(conn, datetime.now(UTC) + timedelta(days=31))]
    assert uuid.UUID(submission.export_id) in due
    ledger.expire(conn, submission.export_id, "retention")
    row = ledger.request_status(conn, submission.request_id)
    assert (row["state"], row["expiry_reason"]) == ("expired", "retention")


def test_deadline_watch_lists_overdue_and_due_requests(conn):
    from portability.resources import ledger

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

    from portability.resources import ledger

    late = ledger.submit(conn, _request(_account()), requested_by="a")
    quiet = timedelta(hours=20)
    claimed_elsewhere = []
    with ledger.connect() as other, ledger.connect() as probe:
        def second_watch():
            with other.transaction():
                claimed_elsewhere.append(ledger.claim_deadline_alerts(other, [late.request_id], quiet))

        with conn.transaction():  # the first run's claim, held while its email goes out
            assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]
            worker = threading.Thread(target=second_watch)  # a second run meanwhile
            worker.start()
            assert _waits_on_a_lock(probe, other.info.backend_pid)  # on the first run's claim
        worker.join(timeout=30)  # the first run's email went out
    assert claimed_elsewhere == [[]]
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == []  # a re-run the same day
    conn.execute("UPDATE export_requests SET deadline_alerted_at = now() - interval '21 hours' "
                 "WHERE request_id = %s", (late.request_id,))
    with pytest.raises(RuntimeError), conn.transaction():
        assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]  # next day
        raise RuntimeError("the email failed")  # the claim is given back
    assert ledger.claim_deadline_alerts(conn, [late.request_id], quiet) == [uuid.UUID(late.request_id)]


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
    from portability.resources import ledger

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


def test_a_notification_whose_sender_died_is_sent_again_with_the_same_id(conn):
    from portability.resources import ledger

    account = _account()
    submission = ledger.submit(conn, _request(account), requested_by="a", webhook_url="https://hooks.example/x")
    ledger.begin(conn, {**_request(account), "export_id": submission.export_id}, submission.dag_run_id)
    ledger.finish(conn, _summary(submission.export_id), timedelta(days=30))
    ledger.queue_notifications(conn, submission.export_id)
    ledger.queue_notifications(conn, submission.export_id)  # a retried task queues nothing twice
    first = ledger.claim_notification(conn, submission.export_id, timedelta(minutes=10), [])
    assert ledger.claim_notification(conn, submission.export_id, timedelta(minutes=10), []) is None
    # The sender was killed before it recorded anything: once its claim runs out, the notice goes again.
    conn.execute("UPDATE notifications SET claimed_until = now() - interval '1 second' WHERE notification_id = %s",
                 (first["notification_id"],))
    conn.commit()
    again = ledger.claim_notification(conn, submission.export_id, timedelta(minutes=10), [])
    assert again["notification_id"] == first["notification_id"] and again["attempts"] == 2
    ledger.notification_failed(conn, again, "webhook answered HTTP 503 after 5 attempts")
    assert ledger.request_status(conn, submission.request_id)["notification_error"].startswith("webhook answered")
    third = ledger.claim_notification(conn, submission.export_id, timedelta(minutes=10), [])  # the task's retry
    ledger.notification_sent(conn, third, "2026-01-04T00:00:00Z")
    assert ledger.claim_notification(conn, submission.export_id, timedelta(minutes=10), []) is None
    assert ledger.request_status(conn, submission.request_id)["state"] == "delivered"


def _summary(export_id: str) -> dict:
    return {"export_id": export_id, "region": "us", "bucket": "exports-us", "key": "exports/k.zip",
            "bytes": 123, "sha256": "ab" * 32, "snapshot_at": "2026-01-01T00:00:00.000000Z",
            "counts": {"contacts": {"source_count": 1, "exported": 1, "quarantined": 0}}}


def _expire_lease(conn, export_id: str) -> None:
    conn.execute("UPDATE exports SET lease_until = now() - interval '1 second' WHERE export_id = %s", (export_id,))
    conn.commit()


def test_a_request_never_joins_an_export_whose_process_died(conn):
    from portability.resources import ledger

    account = _account()
    lease = timedelta(seconds=30)
    dead_request, dead_export, options = ledger.start_in_process(
        conn, _request(account, categories=["contacts", "lists"]), requested_by="portability export",
        notify_email=None, lease=lease)
    assert options is not None  # it runs the export itself
    joined_request, joined_export, joined = ledger.start_in_process(
        conn, _request(account, categories=["contacts"]), requested_by="second", notify_email=None, lease=lease)
    assert (joined_export, joined) == (dead_export, None)  # alive: the second one waits for it
    deadline = ledger.request_status(conn, dead_request)["deadline_at"]

    _expire_lease(conn, dead_export)  # kill -9: nothing renews the lease any more
    late = ledger.submit(conn, _request(account, categories=["contacts"]), requested_by="late")
    assert not late.joined and late.needs_trigger and late.export_id != dead_export
    dead = ledger.export_record(conn, dead_export)
    assert dead["state"] == "failed" and dead["error"].startswith("abandoned: the process exporting it stopped")
    # Its requesters wait on the new export, which serves all they asked for, with their deadlines unchanged.
    assert late.options["categories"] == ["lists", "contacts"]
    for request_id in (dead_request, joined_request):
        moved = ledger.request_status(conn, request_id)
        assert (str(moved["export_id"]), moved["state"]) == (late.export_id, "requested")
    assert ledger.request_status(conn, dead_request)["deadline_at"] == deadline


def test_a_dag_run_export_is_alive_while_airflow_says_its_run_is(conn):
    from portability.resources import ledger

    account = _account()
    first = ledger.submit(conn, _request(account), requested_by="a")
    _expire_lease(conn, first.export_id)
    states = {first.dag_run_id: "running"}
    second = ledger.submit(conn, _request(account), requested_by="b", run_state=states.get)
    assert second.joined and second.export_id == first.export_id
    # Without Airflow to ask, an export whose lease ran out is neither joined nor judged.
    assert not ledger.submit(conn, _request(account, formats=["csv"]), requested_by="c").joined
    assert ledger.export_record(conn, first.export_id)["state"] == "requested"

    states[first.dag_run_id] = "failed"  # the run was failed by hand, or lost, before its tasks said anything
    replacement = ledger.replace_dead(conn, first.request_id, states.get)
    assert replacement["export_id"] != first.export_id
    assert ledger.export_record(conn, first.export_id)["error"].startswith(
        f"abandoned: its DAG run {first.dag_run_id} is failed")
    assert str(ledger.request_status(conn, second.request_id)["export_id"]) == replacement["export_id"]
    assert ledger.replace_dead(conn, first.request_id, states.get) is None  # the new one is alive (its lease)


def test_the_deadline_watch_marks_dead_exports_failed(conn):
    from portability.resources import ledger

    account = _account()
    request_id, export_id, _ = ledger.start_in_process(conn, _request(account), requested_by="x",
                                                       notify_email=None, lease=timedelta(seconds=30))
    _expire_lease(conn, export_id)
    assert export_id in ledger.reap_dead(conn, None)
    assert ledger.request_status(conn, request_id)["state"] == "failed"
    assert request_id in {str(r["request_id"]) for r in ledger.overdue_or_due(conn, timedelta(days=40))}


def test_the_request_list_holds_every_request_newest_first_filtered_by_state_and_account(conn):
    from portability.resources import ledger

    account, other = _account(), _account()
    first = ledger.submit(conn, _request(account), requested_by="dpo@example.com")
    conn.execute("UPDATE export_requests SET requested_at = now() - interval '40 days', "
                 "deadline_at = now() - interval '9 days' WHERE request_id = %s", (first.request_id,))
    person = ledger.submit(conn, _request(account, subject_email="Jane.Doe@example.com", formats=["parquet"]),
                           requested_by="support")
    conn.execute("UPDATE export_requests SET deadline_at = now() + interval '2 days' WHERE request_id = %s",
                 (person.request_id,))
    elsewhere = ledger.submit(conn, _request(other), requested_by="someone else")
    conn.commit()

    rows = ledger.requests(conn, account_id=account)
    assert [str(r["request_id"]) for r in rows] == [person.request_id, first.request_id]  # newest first
    by_id = {str(r["request_id"]): r for r in rows}
    assert by_id[first.request_id]["overdue"] and not by_id[first.request_id]["due_soon"]
    assert by_id[person.request_id]["due_soon"] and not by_id[person.request_id]["overdue"]
    assert by_id[person.request_id]["data_subject"] and not by_id[first.request_id]["data_subject"]
    assert "jane.doe" not in repr(rows).lower()  # whose data it is stays in the ledger's own columns
    assert [str(r["request_id"]) for r in ledger.requests(conn, account_id=other)] == [elsewhere.request_id]
    listed = {str(r["request_id"]) for r in ledger.requests(conn, state="requested")}
    assert {first.request_id, person.request_id, elsewhere.request_id} <= listed
    assert not {r["state"] for r in ledger.requests(conn, state="delivered")} - {"delivered"}
    with pytest.raises(ledger.LedgerError, match="unknown state 'done'"):
        ledger.requests(conn, state="done")


def test_a_refused_request_is_listed_with_its_reason_once_per_run_and_never_cancelled(conn):
    from portability.resources import ledger

    account, run_id = _account(), f"manual__{uuid.uuid4()}"
    reason = "invalid export request: field 'until' (2025-01-01T00:00:00.000000Z) must be after 'since'"
    first = ledger.refuse(conn, reason=reason, requested_by="airflow", account_id=account, dag_run_id=run_id)
    again = ledger.refuse(conn, reason=reason, requested_by="airflow", account_id=account, dag_run_id=run_id)
    assert again == first  # a retried refusing task is the same request
    nameless = ledger.refuse(conn, reason="invalid export request: field 'account_id' is required",
                             requested_by="portability request")

    [row] = ledger.requests(conn, account_id=account)
    assert (row["request_id"], row["state"], row["refused_reason"], row["dag_run_id"]) == (
        uuid.UUID(first), "refused", reason, run_id)
    assert row["export_id"] is None and not row["overdue"] and not row["due_soon"]
    assert str(nameless) in {str(r["request_id"]) for r in ledger.requests(conn, state="refused")}
    assert ledger.request_status(conn, first)["refused_reason"] == reason
    assert first not in {str(r["request_id"]) for r in ledger.overdue_or_due(conn, timedelta(days=400))}
    with pytest.raises(ledger.LedgerError, match="is refused"):
        ledger.cancel(conn, first)


def test_only_a_refused_request_goes_without_an_export(conn):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO export_requests (request_id, requested_by, state, deadline_at) "
                     "VALUES (%s, 'x', 'requested', now())", (uuid.uuid4(),))


def test_progress_sums_the_parts_of_a_category_and_a_retried_part_overwrites_its_own(conn):
    from portability.resources import ledger

    submission = ledger.submit(conn, _request(_account()), requested_by="someone")
    export_id = submission.export_id
    ledger.record_progress(conn, export_id, "contacts", part="contacts-1", rows_done=100, rows_estimated=500,
                           pieces_done=1, pieces_total=5)
    ledger.record_progress(conn, export_id, "contacts", part="contacts-2", rows_done=40, rows_estimated=500,
                           pieces_done=0, pieces_total=5)
    ledger.record_progress(conn, export_id, "contacts", part="contacts-2", rows_done=250, rows_estimated=500,
                           pieces_done=2, pieces_total=5)  # the retry of contacts-2, further on
    ledger.record_progress(conn, export_id, "lists", rows_done=3, rows_estimated=None, pieces_done=0,
                           pieces_total=None)
    progress = ledger.progress(conn, export_id)
    assert {category: {k: v for k, v in row.items() if k != "updated_at"} for category, row in progress.items()} == {
        "contacts": {"rows_done": 350, "rows_estimated": 1000, "pieces_done": 3, "pieces_total": 10},
        "lists": {"rows_done": 3, "rows_estimated": None, "pieces_done": 0, "pieces_total": None},
    }
    assert ledger.progress(conn, str(uuid.uuid4())) == {}
