"""The request ledger: every export request, its state, deadline and archive, in the pipeline's own tables.

Two tables in the database of connection `portability_state`:

- `exports`: one per archive built (or being built): account, options, state, the DAG run that
  builds it, the archive's key, size, sha256 and counts, the retention end, the error.
- `export_requests`: one per ask: who asked, where to notify, the idempotency key, the legal
  deadline (one month after the request) and the request's own state. Several requests can
  share an export: a request for an account whose export is already under way joins it.

The view `export_request_status` shows a request with its export's fields in one row; the
privacy team's deadline query is `overdue_or_due()`. The ledger never holds a link: links are
minted when they are handed to a requester.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from portability.request import export_id_for_run

ACTIVE = ("requested", "running")
STATES = ("requested", "running", "ready", "delivered", "expired", "failed", "cancelled")
DAG_ID = "account_export"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS exports (
    export_id     uuid PRIMARY KEY,
    account_id    text NOT NULL,
    categories    text[] NOT NULL,
    formats       text[] NOT NULL,
    on_invalid    text NOT NULL,
    state         text NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    dag_run_id    text UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    ready_at      timestamptz,
    failed_at     timestamptz,
    expired_at    timestamptz,
    retain_until  timestamptz,
    region        text,
    bucket        text,
    archive_key   text,
    bytes         bigint,
    sha256        text,
    snapshot_at   text,
    counts        jsonb,
    error         text,
    expiry_reason text
);
CREATE INDEX IF NOT EXISTS exports_account_state ON exports (account_id, state);
CREATE TABLE IF NOT EXISTS export_requests (
    request_id         uuid PRIMARY KEY,
    export_id          uuid NOT NULL REFERENCES exports,
    idempotency_key    text UNIQUE,
    account_id         text NOT NULL,
    requested_by       text NOT NULL,
    notify_email       text,
    webhook_url        text,
    categories         text[] NOT NULL,
    formats            text[] NOT NULL,
    expires_in_hours   integer NOT NULL,
    on_invalid         text NOT NULL,
    state              text NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    requested_at       timestamptz NOT NULL DEFAULT now(),
    deadline_at        timestamptz NOT NULL,
    delivered_at       timestamptz,
    cancelled_at       timestamptz,
    link_expires_at    timestamptz,
    notification_error text,
    deadline_alerted_at timestamptz
);
ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;  -- added after the first release
ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS deadline_alerted_at timestamptz;  -- added later still
CREATE INDEX IF NOT EXISTS export_requests_export ON export_requests (export_id);
CREATE INDEX IF NOT EXISTS export_requests_open_deadline ON export_requests (deadline_at)
    WHERE state IN ('requested', 'running', 'ready', 'failed');
CREATE TABLE IF NOT EXISTS export_schedules (
    account_id       text PRIMARY KEY,
    every_days       integer NOT NULL CHECK (every_days BETWEEN 1 AND 366),
    categories       text[] NOT NULL,
    formats          text[] NOT NULL,
    expires_in_hours integer NOT NULL,
    on_invalid       text NOT NULL,
    notify_email     text,
    next_due_at      timestamptz NOT NULL,
    last_run_at      timestamptz,
    last_export_id   uuid,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS export_schedules_due ON export_schedules (next_due_at);
CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason
    FROM export_requests r JOIN exports e USING (export_id);
"""


_SCHEMA_READY: set[str] = set()


class LedgerError(RuntimeError):
    """A request the ledger refuses (a reused idempotency key, an unknown export); the message says why."""


@dataclass(frozen=True)
class Submission:
    request_id: str
    export_id: str
    dag_run_id: str
    joined: bool        # the request joined an export already under way
    replayed: bool      # the idempotency key was seen before: this is that request
    needs_trigger: bool  # nobody has started the export's DAG run yet


@contextmanager
def connect() -> Iterator:
    """A connection to the ledger's database, its tables created if missing."""
    from psycopg.rows import dict_row

    from portability import config

    conninfo = config.state_settings().conninfo
    with config.connect_postgres(config.STATE_CONN_ID, conninfo, row_factory=dict_row) as conn:
        if conninfo not in _SCHEMA_READY:  # once per process: the view's replacement takes a strong lock
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('portability ledger schema'))")
            conn.execute(_SCHEMA)
            conn.commit()
            _SCHEMA_READY.add(conninfo)
        yield conn


def _lock_account(conn, account_id: str) -> None:
    # Requests for one account are decided one at a time, so two cannot both start an export.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('portability account ' || %s))", (account_id,))


def submit(conn, request: dict, *, requested_by: str, notify_email: str | None = None,
           webhook_url: str | None = None, idempotency_key: str | None = None) -> Submission:
    """Record a validated request (`portability.request.parse_request(...).to_dict()`).

    The same idempotency key again gives the same request; a request for an account whose
    export is under way, with options it covers, joins that export.
    """
    with conn.transaction():
        _lock_account(conn, request["account_id"])
        if idempotency_key:
            seen = conn.execute(
                "SELECT r.*, e.dag_run_id, e.state AS export_state FROM export_requests r JOIN exports e "
                "USING (export_id) WHERE idempotency_key = %s", (idempotency_key,)).fetchone()
            if seen:
                _same_request(seen, request, idempotency_key)
                return Submission(str(seen["request_id"]), str(seen["export_id"]), seen["dag_run_id"],
                                  joined=False, replayed=True, needs_trigger=seen["export_state"] == "requested")
        running = _export_covering(conn, request)
        joined = running is not None
        if joined:
            export_id, dag_run_id = str(running["export_id"]), running["dag_run_id"]
        else:
            # The DAG derives its export id from its run id; the run id is chosen here, before the trigger.
            dag_run_id = f"request__{uuid.uuid4()}"
            export_id = export_id_for_run(DAG_ID, dag_run_id)
            _insert_export(conn, export_id, request, "requested", dag_run_id)
        request_id = str(uuid.uuid4())
        _insert_request(conn, request_id, export_id, request, requested_by, notify_email, webhook_url,
                        idempotency_key, "running" if joined and running["state"] == "running" else "requested")
    return Submission(request_id, export_id, dag_run_id, joined=joined, replayed=False,
                      needs_trigger=not joined or running["state"] == "requested")


def _export_covering(conn, request: dict) -> dict | None:
    """The account's export under way whose categories, formats and on_invalid serve this request, if any."""
    return conn.execute(
        "SELECT export_id, dag_run_id, state FROM exports WHERE account_id = %s AND state = ANY(%s) "
        "AND categories @> %s AND formats @> %s AND on_invalid = %s ORDER BY created_at LIMIT 1",
        (request["account_id"], list(ACTIVE), request["categories"], request["formats"],
         request["on_invalid"])).fetchone()


def _insert_export(conn, export_id: str, request: dict, state: str, dag_run_id: str | None) -> None:
    conn.execute(
        "INSERT INTO exports (export_id, account_id, categories, formats, on_invalid, state, dag_run_id, started_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s = 'running' THEN now() END)",
        (export_id, request["account_id"], request["categories"], request["formats"], request["on_invalid"], state,
         dag_run_id, state))


def _insert_request(conn, request_id, export_id, request, requested_by, notify_email, webhook_url,
                    idempotency_key, state) -> None:
    conn.execute(
        "INSERT INTO export_requests (request_id, export_id, idempotency_key, account_id, requested_by, "
        "notify_email, webhook_url, categories, formats, expires_in_hours, on_invalid, state, deadline_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now() + interval '1 month')",
        (request_id, export_id, idempotency_key, request["account_id"], requested_by, notify_email, webhook_url,
         request["categories"], request["formats"], request["expires_in_hours"], request["on_invalid"], state))


def _same_request(seen: dict, request: dict, key: str) -> None:
    asked = (request["account_id"], list(request["categories"]), list(request["formats"]),
             request["expires_in_hours"], request["on_invalid"])
    recorded = (seen["account_id"], list(seen["categories"]), list(seen["formats"]),
                seen["expires_in_hours"], seen["on_invalid"])
    if asked != recorded:
        raise LedgerError(
            f"idempotency key {key[:80]!r} was already used for another request (request {seen['request_id']}): "
            "use a new key for a different request")


def begin(conn, plan: dict, dag_run_id: str, *, requested_by: str = "airflow",
          notify_email: str | None = None, webhook_url: str | None = None) -> dict:
    """The DAG run for `plan` starts: mark its export running, recording it first if it came straight from the API.

    Returns {"joined": export_id} when another export of the account already covers this request,
    in which case this run only records the request and stops.
    """
    export_id = plan["export_id"]
    with conn.transaction():
        _lock_account(conn, plan["account_id"])
        known = conn.execute("SELECT state FROM exports WHERE export_id = %s", (export_id,)).fetchone()
        if known is None:
            # Triggered through the REST API or the UI: the run id is the idempotency key.
            other = _export_covering(conn, plan)
            if other is not None:
                _insert_request(conn, str(uuid.uuid4()), str(other["export_id"]), plan, requested_by, notify_email,
                                webhook_url, f"{DAG_ID}/{dag_run_id}", "requested")
                return {"joined": str(other["export_id"])}
            _insert_export(conn, export_id, plan, "requested", dag_run_id)
            _insert_request(conn, str(uuid.uuid4()), export_id, plan, requested_by, notify_email, webhook_url,
                            f"{DAG_ID}/{dag_run_id}", "requested")
        elif known["state"] in ("ready", "delivered"):
            return {}  # a rerun of a finished export: packaging keeps the published archive
        elif known["state"] == "cancelled":
            return {"cancelled": export_id}
        conn.execute("UPDATE exports SET state = 'running', started_at = coalesce(started_at, now()), error = NULL, "
                     "failed_at = NULL WHERE export_id = %s", (export_id,))
        conn.execute("UPDATE export_requests SET state = 'running' WHERE export_id = %s AND state IN "
                     "('requested', 'failed')", (export_id,))
    return {}


def record_started(conn, plan: dict, *, requested_by: str, notify_email: str | None = None) -> str:
    """An export run in one process (the `export` command, a scheduled export) starts; returns its request id."""
    request_id = str(uuid.uuid4())
    with conn.transaction():
        _insert_export(conn, plan["export_id"], plan, "running", None)
        _insert_request(conn, request_id, plan["export_id"], plan, requested_by, notify_email, None, None, "running")
    return request_id


def finish(conn, summary: dict, retention: timedelta) -> None:
    """The archive is published: record where it is and until when it is kept."""
    with conn.transaction():
        conn.execute(
            "UPDATE exports SET state = CASE WHEN state = 'expired' THEN state ELSE 'ready' END, "
            "ready_at = coalesce(ready_at, now()), retain_until = coalesce(retain_until, now() + %s), "
            "region = %s, bucket = %s, archive_key = %s, bytes = %s, sha256 = %s, snapshot_at = %s, counts = %s, "
            "error = NULL, failed_at = NULL WHERE export_id = %s",
            (retention, summary["region"], summary["bucket"], summary["key"], summary["bytes"], summary["sha256"],
             summary["snapshot_at"], _json(summary["counts"]), summary["export_id"]))
        conn.execute("UPDATE export_requests SET state = 'ready' WHERE export_id = %s AND state IN "
                     "('requested', 'running', 'failed')", (summary["export_id"],))


def fail(conn, export_id: str, error: str) -> None:
    """The export failed: the error is kept on the export and its requests are marked failed."""
    with conn.transaction():
        conn.execute("UPDATE exports SET state = 'failed', failed_at = now(), error = %s WHERE export_id = %s "
                     "AND state IN ('requested', 'running', 'failed')", (error[:2000], export_id))
        conn.execute("UPDATE export_requests SET state = 'failed' WHERE export_id = %s AND state IN "
                     "('requested', 'running')", (export_id,))


def cancel(conn, request_id: str) -> dict:
    """Withdraw a request not yet served; its export is cancelled too when no other request still waits for it."""
    with conn.transaction():
        row = conn.execute("SELECT r.state, r.export_id, e.dag_run_id FROM export_requests r JOIN exports e "
                           "USING (export_id) WHERE request_id = %s FOR UPDATE OF r", (request_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no request {request_id} in the ledger: check the request id")
        if row["state"] not in ACTIVE:
            raise LedgerError(f"request {request_id} is {row['state']}: only a requested or running request can be "
                              "cancelled (revoke a published archive with 'portability revoke')")
        conn.execute("UPDATE export_requests SET state = 'cancelled', cancelled_at = now() WHERE request_id = %s",
                     (request_id,))
        waiting = conn.execute("SELECT count(*) AS n FROM export_requests WHERE export_id = %s AND state = ANY(%s)",
                               (row["export_id"], list(ACTIVE))).fetchone()["n"]
        if not waiting:
            conn.execute("UPDATE exports SET state = 'cancelled' WHERE export_id = %s AND state = ANY(%s)",
                         (row["export_id"], list(ACTIVE)))
    return {"export_id": str(row["export_id"]), "dag_run_id": row["dag_run_id"], "export_cancelled": not waiting}


def undelivered(conn, export_id: str) -> list[dict]:
    """The requests an export serves that have not been told of it yet, locked until the caller's transaction
    ends: a concurrent delivery of the same export skips them rather than telling the requesters twice."""
    return conn.execute(
        "SELECT * FROM export_requests WHERE export_id = %s AND state = 'ready' ORDER BY requested_at "
        "FOR UPDATE SKIP LOCKED", (export_id,)).fetchall()


def delivered(conn, request_id: str, link_expires_at: str, error: str | None = None) -> None:
    """A requester was given the link (or the attempt failed, with `error`)."""
    with conn.transaction():
        if error:
            conn.execute("UPDATE export_requests SET notification_error = %s WHERE request_id = %s",
                         (error[:2000], request_id))
        else:
            conn.execute(
                "UPDATE export_requests SET state = 'delivered', delivered_at = now(), link_expires_at = %s, "
                "notification_error = NULL WHERE request_id = %s", (link_expires_at, request_id))


def export_record(conn, export_id: str) -> dict:
    """An export by its id, or by the id of a request it serves."""
    row = conn.execute("SELECT * FROM exports WHERE export_id = %s OR export_id = "
                       "(SELECT export_id FROM export_requests WHERE request_id = %s)",
                       (export_id, export_id)).fetchone()
    if row is None:
        raise LedgerError(f"no export or request {export_id} in the ledger: check the id")
    return row


def request_status(conn, request_id: str) -> dict:
    row = conn.execute("SELECT * FROM export_request_status WHERE request_id = %s", (request_id,)).fetchone()
    if row is None:
        raise LedgerError(f"no request {request_id} in the ledger: check the request id")
    return row


def expire(conn, export_id: str, reason: str) -> None:
    """The archive is gone (retention over, or revoked): no link can be minted for it any more."""
    with conn.transaction():
        conn.execute("UPDATE exports SET state = 'expired', expired_at = coalesce(expired_at, now()), "
                     "expiry_reason = coalesce(expiry_reason, %s) WHERE export_id = %s", (reason, export_id))
        conn.execute("UPDATE export_requests SET state = 'expired' WHERE export_id = %s AND state IN "
                     "('ready', 'delivered')", (export_id,))


def past_retention(conn, now: datetime) -> list[dict]:
    return conn.execute(
        "SELECT export_id, bucket, archive_key FROM exports WHERE state IN ('ready', 'delivered') "
        "AND retain_until <= %s ORDER BY retain_until", (now,)).fetchall()


def overdue_or_due(conn, within: timedelta) -> list[dict]:
    """Requests not yet delivered whose legal deadline is past or within `within`: the privacy team's list."""
    return conn.execute(
        "SELECT request_id, export_id, account_id, requested_by, state, requested_at, deadline_at, error, "
        "deadline_at < now() AS overdue FROM export_request_status "
        "WHERE state IN ('requested', 'running', 'ready', 'failed') AND deadline_at < now() + %s "
        "ORDER BY deadline_at", (within,)).fetchall()


def claim_deadline_alerts(conn, request_ids: list, quiet: timedelta) -> list:
    """Marks these requests alerted now, except those already alerted within `quiet`; returns the ones marked.

    The rows stay locked until the caller commits (after the email went out) or rolls back (it did
    not): a concurrent watch waits for that, then finds them claimed or free again."""
    return [row["request_id"] for row in conn.execute(
        "UPDATE export_requests SET deadline_alerted_at = now() WHERE request_id = ANY(%s) "
        "AND (deadline_alerted_at IS NULL OR deadline_alerted_at < now() - %s) RETURNING request_id",
        (list(request_ids), quiet)).fetchall()]


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def set_schedule(conn, request: dict, every_days: int, *, notify_email: str | None, first_due: datetime) -> None:
    """Export the account every `every_days` days from `first_due` (a second call replaces the schedule)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO export_schedules (account_id, every_days, categories, formats, expires_in_hours, on_invalid, "
            "notify_email, next_due_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE "
            "SET every_days = excluded.every_days, categories = excluded.categories, formats = excluded.formats, "
            "expires_in_hours = excluded.expires_in_hours, on_invalid = excluded.on_invalid, "
            "notify_email = excluded.notify_email, next_due_at = excluded.next_due_at",
            (request["account_id"], every_days, request["categories"], request["formats"],
             request["expires_in_hours"], request["on_invalid"], notify_email, first_due))


def remove_schedule(conn, account_id: str) -> bool:
    with conn.transaction():
        return conn.execute("DELETE FROM export_schedules WHERE account_id = %s", (account_id,)).rowcount > 0


def due_schedules(conn, now: datetime) -> list[dict]:
    return conn.execute("SELECT * FROM export_schedules WHERE next_due_at <= %s ORDER BY next_due_at, account_id",
                        (now,)).fetchall()


def due_among(conn, account_ids: list[str], now: datetime) -> list[dict]:
    """The schedules of these accounts that are still due (a retried batch skips those already done)."""
    return conn.execute("SELECT * FROM export_schedules WHERE account_id = ANY(%s) AND next_due_at <= %s "
                        "ORDER BY account_id", (account_ids, now)).fetchall()


def schedule_done(conn, account_id: str, export_id: str) -> None:
    """The scheduled export is published: the next is due `every_days` from now."""
    with conn.transaction():
        conn.execute("UPDATE export_schedules SET last_run_at = now(), last_export_id = %s, last_error = NULL, "
                     "next_due_at = now() + every_days * interval '1 day' WHERE account_id = %s",
                     (export_id, account_id))


def schedule_failed(conn, account_id: str, error: str) -> None:
    """The scheduled export failed: it stays due, so the next run tries again, and the error is kept."""
    with conn.transaction():
        conn.execute("UPDATE export_schedules SET last_run_at = now(), last_error = %s WHERE account_id = %s",
                     (error[:2000], account_id))
