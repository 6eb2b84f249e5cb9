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

The schema is versioned with Alembic (`portability/ledger_migrations/`, version table
`portability_ledger_version`): `connect()` upgrades the ledger to the head on a process's first use.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from portability.service.request import export_id_for_run

ACTIVE = ("requested", "running")
STATES = ("requested", "running", "ready", "delivered", "expired", "failed", "cancelled", "refused")
DAG_ID = "account_export"

# The schema is versioned with Alembic: the migrations are in ledger_migrations/ (shipped with the package), the
# version is kept in the ledger's own database, in a table of its own name (a shared database may hold another
# application's `alembic_version`, Airflow's for one).
MIGRATIONS = Path(__file__).with_name("ledger_migrations")
VERSION_TABLE = "portability_ledger_version"
SCHEMA_HEAD = "0003"  # the newest revision in ledger_migrations/versions (test_ledger_migrations.py checks)
SCHEMA_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('portability ledger schema'))"

_UPGRADING = threading.Lock()
_SCHEMA_READY: set[str] = set()  # the conninfos whose ledger this process found (or brought) at SCHEMA_HEAD


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
    options: dict | None = None  # what the export's run must be triggered with (it may serve more than asked)


# How an export under way proves it is alive. An export run in one process renews its lease while it
# works (`renew_lease`); a DAG run's export is alive while its DAG run is queued or running, which a
# caller that can ask Airflow tells through `run_state`. An export that proves nothing is dead: it is
# marked failed with why, and its waiting requesters move to the export that replaces it.
RunState = Callable[[str], str | None]  # DAG run id -> its state; None when there is no such run
LEASE_GRACE = timedelta(minutes=10)  # a DAG run just triggered or between tasks, before anyone asks Airflow


@contextmanager
def connect() -> Iterator:
    """A connection to the ledger's database, its schema upgraded to the newest revision if it is not there yet."""
    from psycopg.rows import dict_row

    from portability.resources import config

    conninfo = config.state_settings().conninfo
    # Autocommit: each step's writes are one explicit transaction, so nothing stays locked between steps
    # (a delivery sending a slow webhook holds no row of the ledger).
    with config.connect_postgres(config.STATE_CONN_ID, conninfo, row_factory=dict_row, autocommit=True) as conn:
        if conninfo not in _SCHEMA_READY:  # once per process: a ledger at the head costs two small queries
            with _UPGRADING:  # Alembic's `op` and `context` are process-wide: one upgrade at a time per process
                if conninfo not in _SCHEMA_READY and schema_version(conn) != SCHEMA_HEAD:
                    upgrade(conninfo)
                _SCHEMA_READY.add(conninfo)
        yield conn


def schema_version(conn) -> str | None:
    """The ledger's Alembic revision; None when it has no version table (an empty database, or a ledger made by
    the code before Alembic, which the first revision adopts as it is)."""
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cur:
        if cur.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()[0] is None:
            return None
        versions = [row[0] for row in cur.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()]
    return versions[0] if len(versions) == 1 else ",".join(sorted(versions)) or None


def alembic_config(conninfo: str | None = None):
    """Alembic's configuration for the ledger, without an alembic.ini (`alembic.command.*` take it)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.attributes["conninfo"] = conninfo
    return cfg


def ledger_engine(conninfo: str | None = None):
    """A SQLAlchemy engine on the ledger's database through the same conninfo as `connect()` (psycopg 3)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from portability.resources import config

    conninfo = conninfo or config.state_settings().conninfo
    return create_engine("postgresql+psycopg://", poolclass=NullPool,
                         creator=lambda: config.connect_postgres(config.STATE_CONN_ID, conninfo))


def upgrade(conninfo: str | None = None, revision: str = "head") -> None:
    """`alembic upgrade head` on the ledger, in one transaction holding the schema lock: concurrent callers wait
    for the first, then find nothing to do. A ledger made before Alembic is adopted by the first revision."""
    from alembic import command
    from alembic.util.exc import CommandError

    cfg = alembic_config(conninfo)
    engine = ledger_engine(conninfo)
    try:
        with engine.connect() as connection, connection.begin():
            connection.exec_driver_sql(SCHEMA_LOCK_SQL)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    except CommandError as exc:  # a revision this code does not know: the ledger is newer than the code
        raise LedgerError(f"cannot upgrade the ledger's schema to {revision} ({exc}): is the ledger at a revision "
                          f"of a newer release? See table {VERSION_TABLE}") from None
    finally:
        engine.dispose()


def _lock_account(conn, account_id: str) -> None:
    # Requests for one account are decided one at a time, so two cannot both start an export.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('portability account ' || %s))", (account_id,))


def submit(conn, request: dict, *, requested_by: str, notify_email: str | None = None,
           webhook_url: str | None = None, idempotency_key: str | None = None,
           run_state: RunState | None = None) -> Submission:
    """Record a validated request (`portability.service.request.parse_request(...).to_dict()`).

    The same idempotency key again gives the same request; a request for an account whose
    export is under way and alive, with options it covers, joins that export. `run_state`
    tells whether a DAG run is still queued or running (without it, a DAG run's export whose
    lease ran out is neither joined nor judged).
    """
    with conn.transaction():
        _lock_account(conn, request["account_id"])
        if idempotency_key:
            seen = conn.execute(
                "SELECT r.*, e.dag_run_id, e.state AS export_state, e.categories AS export_categories, "
                "e.formats AS export_formats, e.subject_email, e.since, e.until FROM export_requests r JOIN exports e "
                "USING (export_id) WHERE idempotency_key = %s", (idempotency_key,)).fetchone()
            if seen:
                _same_request(seen, request, idempotency_key)
                options = {**request, "categories": seen["export_categories"], "formats": seen["export_formats"]}
                return Submission(str(seen["request_id"]), str(seen["export_id"]), seen["dag_run_id"],
                                  joined=False, replayed=True, needs_trigger=seen["export_state"] == "requested",
                                  options=options)
        running, dead = _live_export_covering(conn, request, run_state)
        request_id = str(uuid.uuid4())
        if running is not None:
            export_id, dag_run_id, state = str(running["export_id"]), running["dag_run_id"], running["state"]
            _move_requests(conn, dead, export_id, _waiting_state(state))
            _insert_request(conn, request_id, export_id, request, requested_by, notify_email, webhook_url,
                            idempotency_key, _waiting_state(state))
            return Submission(request_id, export_id, dag_run_id, joined=True, replayed=False,
                              needs_trigger=state == "requested", options=_options(running, request))
        # The DAG derives its export id from its run id; the run id is chosen here, before the trigger.
        dag_run_id = f"request__{uuid.uuid4()}"
        export_id = export_id_for_run(DAG_ID, dag_run_id)
        options = _widened(request, dead)
        _insert_export(conn, export_id, options, "requested", dag_run_id, lease=LEASE_GRACE)
        _move_requests(conn, dead, export_id, "requested")
        _insert_request(conn, request_id, export_id, request, requested_by, notify_email, webhook_url,
                        idempotency_key, "requested")
    return Submission(request_id, export_id, dag_run_id, joined=False, replayed=False, needs_trigger=True,
                      options=options)


def _waiting_state(export_state: str) -> str:
    return "running" if export_state == "running" else "requested"


def _options(export: dict, request: dict) -> dict:
    return {**request, "categories": list(export["categories"]), "formats": list(export["formats"]),
            "on_invalid": export["on_invalid"]}


def _live_export_covering(conn, request: dict, run_state: RunState | None) -> tuple[dict | None, list[dict]]:
    """The account's live export under way that serves this request, and the dead ones found on the way.

    Dead ones are marked failed with the reason; the caller moves their waiting requesters on.
    """
    rows = conn.execute(
        "SELECT export_id, dag_run_id, state, categories, formats, on_invalid, lease_until, "
        "coalesce(lease_until > now(), false) AS leased FROM exports WHERE account_id = %s AND state = ANY(%s) "
        "AND categories @> %s AND formats @> %s AND on_invalid = %s AND subject_email IS NOT DISTINCT FROM %s "
        "AND since IS NOT DISTINCT FROM %s AND until IS NOT DISTINCT FROM %s ORDER BY created_at FOR UPDATE",
        (request["account_id"], list(ACTIVE), request["categories"], request["formats"],
         request["on_invalid"], *_scope(request))).fetchall()
    dead = []
    for row in rows:
        alive, why = _liveness(row, run_state)
        if alive:
            return row, dead
        if alive is False:
            _mark_dead(conn, row, why)
            dead.append(row)
        # None: it cannot be told here, so it is neither joined nor judged
    return None, dead


def _scope(request: dict) -> tuple:
    """What narrows an export besides its categories: one data subject, and the bounds on messages and events.
    An export serves only requests with the same three (the archive of another subject serves nobody else)."""
    return request.get("subject_email"), request.get("since"), request.get("until")


def _liveness(row: dict, run_state: RunState | None) -> tuple[bool | None, str]:
    """Whether an export under way is alive (None: cannot be told without Airflow), and if dead, why."""
    if row["leased"]:
        return True, ""
    if row["dag_run_id"] is None:
        since = f" at {row['lease_until']:%Y-%m-%d %H:%M:%S} UTC" if row["lease_until"] else ""
        return False, (f"the process exporting it stopped without finishing (its lease ran out{since}: "
                       "killed, or its machine was lost)")
    if run_state is None:
        return None, ""
    try:
        state = run_state(row["dag_run_id"])
    except Exception:  # noqa: BLE001 (Airflow did not answer: nothing can be told, so nothing is judged)
        return None, ""
    if state in ("queued", "running"):
        return True, ""
    return False, f"its DAG run {row['dag_run_id']} is {state or 'gone'} but never finished the export"


def _mark_dead(conn, row: dict, reason: str) -> None:
    conn.execute("UPDATE exports SET state = 'failed', failed_at = now(), error = %s WHERE export_id = %s "
                 "AND state = ANY(%s)", (f"abandoned: {reason}"[:2000], row["export_id"], list(ACTIVE)))


def _move_requests(conn, dead: list[dict], export_id: str, state: str) -> None:
    """The requesters still waiting on dead exports now wait on `export_id`; their deadlines stay as they were."""
    if dead:
        conn.execute("UPDATE export_requests SET export_id = %s, state = %s WHERE export_id = ANY(%s) "
                     "AND state = ANY(%s)", (export_id, state, [row["export_id"] for row in dead], list(ACTIVE)))


def _widened(request: dict, dead: list[dict]) -> dict:
    """The request's options, widened to serve every requester moved over from the dead exports."""
    if not dead:
        return dict(request)
    from portability.records.schemas import SchemaSet

    properties = SchemaSet().request["properties"]
    wanted = {name: set(request[name]).union(*(row[name] for row in dead)) for name in ("categories", "formats")}
    return {**request, **{name: [v for v in properties[name]["items"]["enum"] if v in wanted[name]]
                          for name in wanted}}


def _insert_export(conn, export_id: str, request: dict, state: str, dag_run_id: str | None,
                   lease: timedelta | None = None) -> None:
    conn.execute(
        "INSERT INTO exports (export_id, account_id, categories, formats, on_invalid, state, dag_run_id, started_at, "
        "lease_until, subject_email, since, until) VALUES (%s, %s, %s, %s, %s, %s, %s, "
        "CASE WHEN %s = 'running' THEN now() END, now() + %s, %s, %s, %s)",
        (export_id, request["account_id"], request["categories"], request["formats"], request["on_invalid"], state,
         dag_run_id, state, lease or timedelta(0), *_scope(request)))


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
             request["expires_in_hours"], request["on_invalid"], *_scope(request))
    recorded = (seen["account_id"], list(seen["categories"]), list(seen["formats"]),
                seen["expires_in_hours"], seen["on_invalid"], seen["subject_email"], seen["since"], seen["until"])
    if asked != recorded:
        raise LedgerError(
            f"idempotency key {key[:80]!r} was already used for another request (request {seen['request_id']}): "
            "use a new key for a different request")


def begin(conn, plan: dict, dag_run_id: str, *, requested_by: str = "airflow",
          notify_email: str | None = None, webhook_url: str | None = None,
          run_state: RunState | None = None) -> dict:
    """The DAG run for `plan` starts: mark its export running, recording it first if it came straight from the API.

    Returns {"joined": export_id} when another live export of the account already covers this
    request, in which case this run only records the request and stops. A dead one is replaced
    by this run: the returned options, widened to serve its requesters too, replace the plan's.
    """
    export_id = plan["export_id"]
    widened: dict = {}
    with conn.transaction():
        _lock_account(conn, plan["account_id"])
        known = conn.execute("SELECT state FROM exports WHERE export_id = %s", (export_id,)).fetchone()
        if known is None:
            # Triggered through the REST API or the UI: the run id is the idempotency key.
            other, dead = _live_export_covering(conn, plan, run_state)
            if other is not None:
                _move_requests(conn, dead, str(other["export_id"]), _waiting_state(other["state"]))
                _insert_request(conn, str(uuid.uuid4()), str(other["export_id"]), plan, requested_by, notify_email,
                                webhook_url, f"{DAG_ID}/{dag_run_id}", _waiting_state(other["state"]))
                return {"joined": str(other["export_id"])}
            options = _widened(plan, dead)
            widened = {name: options[name] for name in ("categories", "formats") if options[name] != plan[name]}
            _insert_export(conn, export_id, options, "requested", dag_run_id)
            _move_requests(conn, dead, export_id, "requested")
            _insert_request(conn, str(uuid.uuid4()), export_id, plan, requested_by, notify_email, webhook_url,
                            f"{DAG_ID}/{dag_run_id}", "requested")
        elif known["state"] in ("ready", "delivered"):
            return {}  # a rerun of a finished export: packaging keeps the published archive
        elif known["state"] == "cancelled":
            return {"cancelled": export_id}
        conn.execute("UPDATE exports SET state = 'running', started_at = coalesce(started_at, now()), error = NULL, "
                     "failed_at = NULL, lease_until = now() + %s WHERE export_id = %s", (LEASE_GRACE, export_id))
        conn.execute("UPDATE export_requests SET state = 'running' WHERE export_id = %s AND state IN "
                     "('requested', 'failed')", (export_id,))
    return widened


def start_in_process(conn, request: dict, *, requested_by: str, notify_email: str | None, lease: timedelta,
                     request_id: str | None = None) -> tuple[str, str, dict | None]:
    """An export run in one process (the `export` command, a scheduled export) starts, or joins one under way.

    Returns (request id, export id, options): `options` is what this process must export, widened to
    serve the requesters of dead exports it replaces; None when it joined a live export and only waits.
    With `request_id`, an existing request whose export died is placed again.
    """
    with conn.transaction():
        _lock_account(conn, request["account_id"])
        # Without Airflow at hand, a DAG run's export is joined only while its lease holds.
        running, dead = _live_export_covering(conn, request, None)
        if running is not None:
            _move_requests(conn, dead, str(running["export_id"]), _waiting_state(running["state"]))
            if request_id is None:
                request_id = str(uuid.uuid4())
                _insert_request(conn, request_id, str(running["export_id"]), request, requested_by, notify_email,
                                None, None, _waiting_state(running["state"]))
            return request_id, str(running["export_id"]), None
        from portability.service.request import new_export_id

        export_id, options = new_export_id(), _widened(request, dead)
        _insert_export(conn, export_id, options, "running", None, lease=lease)
        _move_requests(conn, dead, export_id, "running")
        if request_id is None:
            request_id = str(uuid.uuid4())
            _insert_request(conn, request_id, export_id, request, requested_by, notify_email, None, None, "running")
        else:  # its own export was not covering (another option set): bring it over too
            conn.execute("UPDATE export_requests SET export_id = %s, state = 'running' WHERE request_id = %s",
                         (export_id, request_id))
    return request_id, export_id, options


def renew_lease(conn, export_id: str, lease: timedelta) -> bool:
    """The export is still being worked on; False if it is no longer under way (finished, failed, cancelled)."""
    with conn.transaction():
        return conn.execute("UPDATE exports SET lease_until = now() + %s WHERE export_id = %s AND state = ANY(%s)",
                            (lease, export_id, list(ACTIVE))).rowcount > 0


def waiting_on(conn, request_id: str) -> dict:
    """The export a request waits on now, with whether it still proves to be alive."""
    row = conn.execute(
        "SELECT e.*, coalesce(e.lease_until > now(), false) AS leased FROM export_requests r JOIN exports e "
        "USING (export_id) WHERE r.request_id = %s", (request_id,)).fetchone()
    if row is None:
        raise LedgerError(f"no request {request_id} in the ledger: check the request id")
    return row


def replace_dead(conn, request_id: str, run_state: RunState | None) -> dict | None:
    """If the export a request waits on is dead, mark it failed and give its requesters a new export.

    Returns None when the export is alive (or cannot be judged), else the new export's DAG run and
    options, for the caller to trigger.
    """
    with conn.transaction():
        row = waiting_on(conn, request_id)
        _lock_account(conn, row["account_id"])
        row = conn.execute("SELECT *, coalesce(lease_until > now(), false) AS leased FROM exports "
                           "WHERE export_id = %s FOR UPDATE", (row["export_id"],)).fetchone()
        if row["state"] not in ACTIVE:
            return None
        alive, why = _liveness(row, run_state)
        if alive is not False:
            return None
        _mark_dead(conn, row, why)
        dag_run_id = f"request__{uuid.uuid4()}"
        export_id = export_id_for_run(DAG_ID, dag_run_id)
        options = {"account_id": row["account_id"], "categories": list(row["categories"]),
                   "formats": list(row["formats"]), "on_invalid": row["on_invalid"],
                   "subject_email": row["subject_email"], "since": row["since"], "until": row["until"]}
        _insert_export(conn, export_id, options, "requested", dag_run_id, lease=LEASE_GRACE)
        _move_requests(conn, [row], export_id, "requested")
    return {"export_id": export_id, "dag_run_id": dag_run_id, "options": options}


def reap_dead(conn, run_state: RunState | None) -> list[str]:
    """Mark failed every export under way that proves dead, and its waiting requests with it (the deadline
    watch lists them); returns their export ids."""
    reaped = []
    with conn.transaction():
        rows = conn.execute("SELECT export_id, dag_run_id, state, lease_until, coalesce(lease_until > now(), false) "
                            "AS leased FROM exports WHERE state = ANY(%s) FOR UPDATE SKIP LOCKED",
                            (list(ACTIVE),)).fetchall()
        for row in rows:
            alive, why = _liveness(row, run_state)
            if alive is not False:
                continue
            _mark_dead(conn, row, why)
            conn.execute("UPDATE export_requests SET state = 'failed' WHERE export_id = %s AND state = ANY(%s)",
                         (row["export_id"], list(ACTIVE)))
            reaped.append(str(row["export_id"]))
    return reaped


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
        row = conn.execute("SELECT r.state, r.export_id, e.dag_run_id FROM export_requests r LEFT JOIN exports e "
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


# A notification's id is the same on every attempt, so that a receiver can drop a repeat: delivery is
# at least once (a process killed between sending and recording sends again after the claim runs out).
NOTIFICATION_NAMESPACE = uuid.UUID("0b5c3a52-93c1-5d8e-a7f4-2d6e1c9b8a30")


def notification_id(request_id: str, event: str) -> str:
    return str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"{request_id}\n{event}"))


# The request state each notification is about: a notice no longer true (a failed export that a cleared run
# then published) is not sent. The privacy team's email about a failed request is queued whatever the channels.
NOTICE_STATES = {"export.ready": "ready", "export.failed": "failed", "export.cancelled": "cancelled",
                 "privacy.export.failed": "failed"}
TEAM_EVENTS = ("privacy.export.failed",)


def queue_notifications(conn, export_id: str, event: str = "export.ready", *, request_id: str | None = None) -> int:
    """The outbox: one notification of `event` per request of the export in the event's state (only
    `request_id`'s, if given) that has a channel; at most one per request and event, ever."""
    channel = "" if event in TEAM_EVENTS else "AND (notify_email IS NOT NULL OR webhook_url IS NOT NULL)"
    with conn.transaction():
        waiting = conn.execute(
            f"SELECT request_id FROM export_requests WHERE export_id = %s AND state = %s {channel} "
            "AND (%s::uuid IS NULL OR request_id = %s::uuid)",
            (export_id, NOTICE_STATES[event], request_id, request_id)).fetchall()
        for row in waiting:
            conn.execute("INSERT INTO notifications (notification_id, request_id, event) VALUES (%s, %s, %s) "
                         "ON CONFLICT (request_id, event) DO NOTHING",
                         (notification_id(str(row["request_id"]), event), row["request_id"], event))
    return len(waiting)


def claim_notification(conn, export_id: str, claim: timedelta, skip: list[str],
                       event: str = "export.ready") -> dict | None:
    """Take the next unsent notification of `event` for the export for `claim` (committed at once, so no lock is
    held while it is sent); None when there is none left that nobody else holds. `skip`: ids this caller already
    tried."""
    with conn.transaction():
        return conn.execute(
            "WITH next AS (SELECT n.notification_id FROM notifications n JOIN export_requests r USING (request_id) "
            "  WHERE r.export_id = %s AND n.event = %s AND r.state = %s AND n.sent_at IS NULL "
            "  AND (n.claimed_until IS NULL OR n.claimed_until < now()) AND NOT n.notification_id = ANY(%s) "
            "  ORDER BY n.created_at LIMIT 1 FOR UPDATE OF n SKIP LOCKED) "
            "UPDATE notifications n SET claimed_until = now() + %s, attempts = attempts + 1 FROM next, "
            "export_requests r WHERE n.notification_id = next.notification_id AND r.request_id = n.request_id "
            "RETURNING n.notification_id, n.event, n.attempts, r.*",
            (export_id, event, NOTICE_STATES[event], skip, claim)).fetchone()


def notification_sent(conn, notification: dict, link_expires_at: str | None = None) -> None:
    """Sent: an export.ready notice also delivers its request (the link is in the requester's hands)."""
    with conn.transaction():
        conn.execute("UPDATE notifications SET sent_at = now(), claimed_until = NULL, last_error = NULL "
                     "WHERE notification_id = %s", (notification["notification_id"],))
        if notification["event"] == "export.ready":
            conn.execute(
                "UPDATE export_requests SET state = 'delivered', delivered_at = now(), link_expires_at = %s, "
                "notification_error = NULL WHERE request_id = %s AND state = 'ready'",
                (link_expires_at, notification["request_id"]))


def notification_failed(conn, notification: dict, error: str) -> None:
    """Released for the next attempt (the task's retry, the cleanup DAG's sweep), with the error kept on the
    request when it was the requester's notice."""
    with conn.transaction():
        conn.execute("UPDATE notifications SET claimed_until = NULL, last_error = %s WHERE notification_id = %s",
                     (error[:2000], notification["notification_id"]))
        if notification["event"] not in TEAM_EVENTS:
            conn.execute("UPDATE export_requests SET notification_error = %s WHERE request_id = %s",
                         (error[:2000], notification["request_id"]))


def unsent_notices(conn, events: tuple[str, ...]) -> list[tuple[str, str]]:
    """(export id, event) of each export with a notice of these events still to send, its request still in the
    event's state: what a sweep sends again after a failed attempt."""
    rows = conn.execute(
        "SELECT DISTINCT r.export_id, n.event FROM notifications n JOIN export_requests r USING (request_id) "
        "WHERE n.sent_at IS NULL AND n.event = ANY(%s) AND r.state = (%s::jsonb ->> n.event) "
        "ORDER BY r.export_id, n.event", (list(events), _json(NOTICE_STATES))).fetchall()
    return [(str(row["export_id"]), row["event"]) for row in rows]


def delivered(conn, request_id: str, link_expires_at: str) -> None:
    """A requester was handed the link directly (the command's output, `portability link`)."""
    with conn.transaction():
        conn.execute(
            "UPDATE export_requests SET state = 'delivered', delivered_at = now(), link_expires_at = %s, "
            "notification_error = NULL WHERE request_id = %s", (link_expires_at, request_id))


def export_record(conn, export_id: str) -> dict:
    """An export by its id, or by the id of a request it serves; `leased` tells whether its lease still holds."""
    row = conn.execute("SELECT *, coalesce(lease_until > now(), false) AS leased FROM exports "
                       "WHERE export_id = %s OR export_id = "
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


def request_channels(conn, request_id: str) -> dict:
    """A request's state, export and channels (`notify_email`, `webhook_url`) and link lifetime: what sending it a
    fresh link needs. These addresses go to the channel only, never to a page or a log."""
    row = conn.execute("SELECT request_id, export_id, state, notify_email, webhook_url, expires_in_hours "
                       "FROM export_requests WHERE request_id = %s", (request_id,)).fetchone()
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


def requests(conn, state: str | None = None, account_id: str | None = None) -> list[dict]:
    """Every request, newest first, with its export's outcome: the privacy team's list (`portability requests`).

    `overdue` and `due_soon` (within 7 days) only for requests not yet served. The data subject's address
    stays in the ledger: a row says only whether the request was for one person.
    """
    if state is not None and state not in STATES:
        raise LedgerError(f"unknown state {state[:40]!r}: one of {', '.join(STATES)}")
    return conn.execute(
        "SELECT request_id, export_id, account_id, requested_by, state, requested_at, deadline_at, delivered_at, "
        "cancelled_at, dag_run_id, bytes, counts, error, refused_reason, subject_email IS NOT NULL AS data_subject, "
        "since, until, "
        "state IN ('requested', 'running', 'ready', 'failed') AND deadline_at < now() AS overdue, "
        "state IN ('requested', 'running', 'ready', 'failed') AND deadline_at >= now() "
        "AND deadline_at < now() + interval '7 days' AS due_soon "
        "FROM export_request_status WHERE (%(state)s::text IS NULL OR state = %(state)s) "
        "AND (%(account)s::text IS NULL OR account_id = %(account)s) "
        "ORDER BY requested_at DESC, request_id", {"state": state, "account": account_id}).fetchall()


def refuse(conn, *, reason: str, requested_by: str, account_id: str | None = None,
           dag_run_id: str | None = None, idempotency_key: str | None = None) -> str:
    """Record a request refused before any read, with why; returns its request id.

    The reason is the refusal as the requester saw it (a RequestError's message never echoes a data subject's
    address). The same refusing DAG run or idempotency key again is the same request: recorded once.
    """
    with conn.transaction():
        if dag_run_id is not None or idempotency_key is not None:
            seen = conn.execute("SELECT request_id FROM export_requests WHERE dag_run_id = %s OR idempotency_key = %s",
                                (dag_run_id, idempotency_key)).fetchone()
            if seen is not None:
                return str(seen["request_id"])
        request_id = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO export_requests (request_id, account_id, requested_by, idempotency_key, dag_run_id, state, "
            "refused_reason, deadline_at) VALUES (%s, %s, %s, %s, %s, 'refused', %s, now() + interval '1 month')",
            (request_id, account_id, requested_by[:200], idempotency_key, dag_run_id, reason[:2000]))
    return request_id


def record_progress(conn, export_id: str, category: str, *, part: str = "", rows_done: int,
                    rows_estimated: int | None, pieces_done: int, pieces_total: int | None) -> None:
    """One part's progress on a category (a shard's label, or "" for an export done whole); cheap, but call it at
    most every few seconds. A retried part overwrites its own row."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO export_progress (export_id, category, part, rows_done, rows_estimated, pieces_done, "
            "pieces_total) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (export_id, category, part) DO UPDATE "
            "SET rows_done = excluded.rows_done, rows_estimated = excluded.rows_estimated, "
            "pieces_done = excluded.pieces_done, pieces_total = excluded.pieces_total, updated_at = now()",
            (export_id, category, part, rows_done, rows_estimated, pieces_done, pieces_total))


# The part under which an export staged for its shards records the rows staged. A category's staging rows show
# only until its first shard reports: the shards then count the same rows again, as exported.
STAGING_PART = "staging"


def progress(conn, export_id: str) -> dict[str, dict]:
    """Per category, the rows and pieces done of the estimate, summed over its parts (an estimate is None while
    any part has none), and its `stage`: "staging" until a shard of it reports, then "exporting"."""
    rows = conn.execute(
        "WITH parts AS (SELECT *, bool_or(part <> %(staging)s) OVER (PARTITION BY category) AS exporting "
        "  FROM export_progress WHERE export_id = %(export_id)s) "
        "SELECT category, CASE WHEN bool_or(exporting) THEN 'exporting' ELSE 'staging' END AS stage, "
        "sum(rows_done)::bigint AS rows_done, "
        "CASE WHEN bool_and(rows_estimated IS NOT NULL) THEN sum(rows_estimated)::bigint END AS rows_estimated, "
        "sum(pieces_done)::integer AS pieces_done, "
        "CASE WHEN bool_and(pieces_total IS NOT NULL) THEN sum(pieces_total)::integer END AS pieces_total, "
        "max(updated_at) AS updated_at FROM parts WHERE part <> %(staging)s OR NOT exporting GROUP BY category "
        "ORDER BY category", {"export_id": export_id, "staging": STAGING_PART}).fetchall()
    return {row.pop("category"): row for row in rows}


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
