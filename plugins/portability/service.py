"""Exports as a service: the request ledger's side of each step, for the DAGs and the command.

    submit -> (the account_export DAG run) begin -> ... -> deliver | fail
    link / revoke / expire_past_retention: the archive's life after it is published

A request is recorded before its export starts and each step moves its state on, so the
requester and the privacy team read the state, deadline and outcome from the ledger without
opening Airflow. Links are minted when handed over and never stored.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from portability import config, export, ledger
from portability.request import RequestError, export_id_for_run, parse_request
from portability.schemas import SchemaSet

log = logging.getLogger(__name__)

# The cleanup DAG watches deadlines daily; under a day, so each daily run alerts again while a request waits.
DEADLINE_ALERT_QUIET = timedelta(hours=20)


def export_now(conf: dict, *, requested_by: str = "portability export") -> tuple[dict, str]:
    """The whole export in this process (the `export` command, a scheduled export), recorded in the ledger like
    any other; returns the summary and the request id (`link(..., request_id=)` hands the link over)."""
    from portability.request import new_export_id

    current = export.plan(conf, new_export_id())
    requester = parse_request(conf, SchemaSet()).requester()
    with ledger.connect() as conn:
        request_id = ledger.record_started(conn, current, requested_by=requester["requested_by"] or requested_by,
                                           notify_email=requester["notify_email"])
    try:
        summary = export.run_export(conf, current["export_id"])
    except BaseException as exc:
        with ledger.connect() as conn:
            ledger.fail(conn, current["export_id"], f"{type(exc).__name__}: {exc}")
        raise
    if requester["notify_email"]:
        deliver(summary)  # records the archive and emails the link
    else:
        with ledger.connect() as conn:
            ledger.finish(conn, summary, config.retention())
    return summary, request_id


def schedule(conf: dict, every_days: int, *, first_due: datetime | None = None) -> dict:
    """Export an account every `every_days` days (the scheduled_exports DAG runs them); first due now by default."""
    if not isinstance(every_days, int) or not 1 <= every_days <= 366:
        raise RequestError("every_days must be a whole number of days from 1 to 366")
    request = parse_request(conf, SchemaSet())
    due = first_due or datetime.now(UTC)
    with ledger.connect() as conn:
        ledger.set_schedule(conn, request.to_dict(), every_days, notify_email=request.requester()["notify_email"],
                            first_due=due)
    return {"account_id": request.account_id, "every_days": every_days, "next_due_at": due.isoformat()}


def due_batches(batch_size: int, max_batches: int = 512) -> list[list[str]]:
    """The accounts due for their scheduled export, in batches (one mapped task each, within max_map_length)."""
    with ledger.connect() as conn:
        due = [row["account_id"] for row in ledger.due_schedules(conn, datetime.now(UTC))]
    size = max(batch_size, -(-len(due) // max_batches))
    return [due[i:i + size] for i in range(0, len(due), size)]


def run_scheduled(account_ids: list[str]) -> dict:
    """Export each account of a batch in turn; one account's failure is recorded and the others go on."""
    with ledger.connect() as conn:
        rows = ledger.due_among(conn, account_ids, datetime.now(UTC))
    succeeded, failed = [], []
    for row in rows:
        conf = {"account_id": row["account_id"], "categories": row["categories"], "formats": row["formats"],
                "expires_in_hours": row["expires_in_hours"], "on_invalid": row["on_invalid"],
                "requested_by": "scheduled_exports"}
        if row["notify_email"]:
            conf["notify_email"] = row["notify_email"]
        try:
            summary, _ = export_now(conf, requested_by="scheduled_exports")
        except Exception as exc:  # noqa: BLE001 (any failure of one account is recorded, and the batch goes on)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("scheduled export of %s failed: %s", row["account_id"], error)
            with ledger.connect() as conn:
                ledger.schedule_failed(conn, row["account_id"], error)
            failed.append({"account_id": row["account_id"], "error": error[:500]})
            continue
        with ledger.connect() as conn:
            ledger.schedule_done(conn, row["account_id"], summary["export_id"])
        succeeded.append({"account_id": row["account_id"], "export_id": summary["export_id"]})
    return {"succeeded": succeeded, "failed": failed}


def submit(conf: dict, *, idempotency_key: str | None = None) -> ledger.Submission:
    """Validate and record a request; the caller triggers the DAG run when `needs_trigger`."""
    request = parse_request(conf, SchemaSet())
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 200 and idempotency_key.isprintable()):
        raise RequestError("invalid idempotency key: 1 to 200 printable characters")
    requester = request.requester()
    with ledger.connect() as conn:
        return ledger.submit(conn, request.to_dict(), requested_by=requester["requested_by"] or "portability request",
                             notify_email=requester["notify_email"], webhook_url=requester["webhook_url"],
                             idempotency_key=idempotency_key)


def begin(conf: dict, dag_id: str, run_id: str) -> dict:
    """The first task of a run: the plan, with "joined" set if another export of the account already serves it."""
    request = parse_request(conf, SchemaSet())
    plan = export.plan(conf, export_id_for_run(dag_id, run_id))
    requester = request.requester()
    with ledger.connect() as conn:
        joined = ledger.begin(conn, plan, run_id, requested_by=requester["requested_by"] or "airflow",
                              notify_email=requester["notify_email"], webhook_url=requester["webhook_url"])
    return {**plan, **joined}


def cancel(request_id: str) -> dict:
    """Withdraw a request; if nobody else waits for its export, the export is cancelled (its run stops at its next
    step, or the caller stops the DAG run)."""
    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        return ledger.cancel(conn, request_id)


def fail(dag_id: str, run_id: str, error: str) -> None:
    """A task of the run failed for good: the export and its requests are marked failed, with why."""
    with ledger.connect() as conn:
        ledger.fail(conn, export_id_for_run(dag_id, run_id), error)


def deliver(summary: dict) -> dict:
    """Record the published archive and tell each waiting requester; returns how many were told.

    A requester without a channel (no email, no webhook) reads the link from `portability link`
    or `portability request --wait`, and stays 'ready'. A failed channel is recorded on the
    request and raised, so the task retries; those already told are not told again.
    """
    from portability.delivery import DeliveryError, post_webhook, ready_notice, send_email

    retention = config.retention()
    with ledger.connect() as conn:
        ledger.finish(conn, summary, retention)
        record = ledger.export_record(conn, summary["export_id"])
        told, failures = 0, []
        for request in ledger.undelivered(conn, summary["export_id"]):
            if not (request["notify_email"] or request["webhook_url"]):
                continue
            link = _link(record, request["expires_in_hours"])
            notice = ready_notice(request, summary, link)
            try:
                if request["notify_email"]:
                    send_email(request["notify_email"], notice)
                if request["webhook_url"]:
                    post_webhook(request["webhook_url"], notice)
            except DeliveryError as exc:
                ledger.delivered(conn, str(request["request_id"]), link.expires_at, error=str(exc))
                failures.append(f"request {request['request_id']}: {exc}")
                continue
            ledger.delivered(conn, str(request["request_id"]), link.expires_at)
            told += 1
    if failures:
        raise DeliveryError("; ".join(failures))
    return {"notified": told}


def link(export_id: str, expires_in_hours: int = 72, *, request_id: str | None = None) -> export.Link:
    """A fresh link to a retained archive, never outliving its retention; refused once it is gone."""
    if not isinstance(expires_in_hours, int) or not 1 <= expires_in_hours <= export.MAX_LINK_HOURS:
        raise RequestError(f"expires_in_hours must be an integer from 1 to {export.MAX_LINK_HOURS}")
    export.check_export_id(export_id)
    with ledger.connect() as conn:
        record = ledger.export_record(conn, export_id)
        minted = _link(record, expires_in_hours)
        if request_id:
            ledger.delivered(conn, request_id, minted.expires_at)
    return minted


def _link(record: dict, hours: int) -> export.Link:
    if record["state"] == "expired":
        raise export.ExportError(
            f"export {record['export_id']} was deleted on {record['expired_at']:%Y-%m-%d} "
            f"({record['expiry_reason']}): request a new export")
    if record["state"] not in ("ready", "delivered") or not record["archive_key"]:
        raise export.ExportError(f"export {record['export_id']} is {record['state']}, not ready: no link yet")
    left = record["retain_until"] - datetime.now(UTC)
    seconds = int(min(timedelta(hours=hours), left).total_seconds())
    if seconds < 60:
        raise export.ExportError(f"export {record['export_id']} is about to be deleted (retention ends "
                                 f"{record['retain_until']:%Y-%m-%d %H:%M} UTC): request a new export")
    from portability.storage import ObjectStore

    store = ObjectStore(config.storage_settings())
    return export.presigned_link(store, {"bucket": record["bucket"], "key": record["archive_key"]}, seconds)


def revoke(export_id: str) -> int:
    """Delete a published archive now; every link to it stops working. Returns the objects deleted."""
    export.check_export_id(export_id)
    with ledger.connect() as conn:
        record = ledger.export_record(conn, export_id)
        deleted = _delete_archive(record)
        ledger.expire(conn, export_id, "revoked")
    log.info("export %s revoked: %d objects deleted", export_id, deleted)
    return deleted


def expire_past_retention(now: datetime | None = None) -> dict:
    """Delete every archive whose retention is over and record it; the export_cleanup DAG's work."""
    now = now or datetime.now(UTC)
    expired = []
    with ledger.connect() as conn:
        for record in ledger.past_retention(conn, now):
            _delete_archive(record)
            ledger.expire(conn, str(record["export_id"]), "retention")
            expired.append(str(record["export_id"]))
    return {"expired": expired}


def _delete_archive(record: dict) -> int:
    from portability.storage import ObjectStore

    if not record["bucket"] or not record["archive_key"]:
        return 0
    store = ObjectStore(config.storage_settings())
    return store.delete_prefix(record["bucket"], f"exports/{record['export_id']}/")


def apply_lifecycle_rules() -> dict:
    """The storage's own backstop: archives and staging expire even if the cleanup DAG stops running."""
    from portability.storage import ObjectStore

    settings = config.storage_settings()
    store = ObjectStore(settings)
    days = config.retention().days + 1  # the DAG deletes on time; the rule catches what it missed
    applied = {}
    for bucket in sorted(set(settings.buckets.values())):
        applied[bucket] = store.set_expiry_rules(bucket, {"exports/": days, "staging/": 2})
    return applied


def deadline_report(within_days: int = 7) -> list[dict]:
    """Requests not delivered whose legal deadline is past or within `within_days`."""
    with ledger.connect() as conn:
        return _report_rows(ledger.overdue_or_due(conn, timedelta(days=within_days)))


def _report_rows(rows: list[dict]) -> list[dict]:
    return [{**row, "request_id": str(row["request_id"]), "export_id": str(row["export_id"]),
             "requested_at": row["requested_at"].isoformat(), "deadline_at": row["deadline_at"].isoformat()}
            for row in rows]


def status(request_id: str) -> dict:
    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        return ledger.request_status(conn, request_id)


def watch_deadlines(within_days: int = 7) -> dict:
    """The deadline alert: counts overdue and due requests, and emails the list to the privacy team when it
    holds a request not alerted in the last DEADLINE_ALERT_QUIET, so that a retried, repeated or concurrent
    run does not send the same list again."""
    from portability.delivery import send_deadline_alert

    to = config.privacy_team_email()
    with ledger.connect() as conn:
        rows = ledger.overdue_or_due(conn, timedelta(days=within_days))
        fresh = ledger.claim_deadline_alerts(conn, [row["request_id"] for row in rows], DEADLINE_ALERT_QUIET) \
            if rows and to else []
        if fresh:  # a failed email raises, the claims roll back and the next run tries again
            send_deadline_alert(to, _report_rows(rows), within_days)
        conn.commit()
    overdue = sum(1 for row in rows if row["overdue"])
    return {"overdue": overdue, "due": len(rows) - overdue, "alerted": bool(fresh)}
