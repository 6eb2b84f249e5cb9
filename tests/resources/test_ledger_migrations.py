"""The ledger's schema under Alembic: a ledger made by the code before Alembic upgrades without loss, an empty
database gets the whole schema, concurrent upgrades do not fail, and an upgrade at the head changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

# The schema exactly as the code before Alembic created it (`_SCHEMA` of plugins/portability/ledger.py at
# commit 0aeb3dc), run once per process by its ledger.connect(): "a ledger created by today's code".
STATES = ("requested", "running", "ready", "delivered", "expired", "failed", "cancelled")
PRE_ALEMBIC_SCHEMA = f"""
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
ALTER TABLE exports ADD COLUMN IF NOT EXISTS lease_until timestamptz;  -- an export under way proves it is alive
CREATE TABLE IF NOT EXISTS notifications (
    notification_id uuid PRIMARY KEY,
    request_id      uuid NOT NULL REFERENCES export_requests,
    event           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    sent_at         timestamptz,
    last_error      text,
    UNIQUE (request_id, event)
);
CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason
    FROM export_requests r JOIN exports e USING (export_id);
"""


def _ledger_database(monkeypatch) -> tuple[str, str]:
    """A new, empty database on the embedded server; AIRFLOW_CONN_PORTABILITY_STATE points at it."""
    import psycopg
    from psycopg import sql

    from portability.resources import config

    name = f"ledger_migration_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(config.source_settings().conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    state = json.loads(os.environ["AIRFLOW_CONN_PORTABILITY_STATE"])
    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_STATE", json.dumps({**state, "schema": name}))
    return name, config.state_settings().conninfo


@pytest.fixture
def new_database(store_env, monkeypatch):
    """Makes empty databases for the test (the last one made is the ledger's); drops them afterwards."""
    import psycopg
    from psycopg import sql

    from portability.resources import config

    made = []

    def make() -> str:
        name, conninfo = _ledger_database(monkeypatch)
        made.append(name)
        return conninfo

    yield make
    monkeypatch.undo()
    with psycopg.connect(config.source_settings().conninfo, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _connect(conninfo: str):
    import psycopg
    from psycopg.rows import dict_row

    return psycopg.connect(conninfo, row_factory=dict_row, autocommit=True)


# 0002: one data subject's exports and the bounds on messages and events. 0003: refused requests.
ADDED_AFTER_0001 = {"exports": ("subject_email", "since", "until"),
                    "export_requests": ("refused_reason", "dag_run_id"),
                    "export_request_status": ("subject_email", "since", "until", "refused_reason")}
TABLES = {"exports": "export_id", "export_requests": "request_id", "export_schedules": "account_id",
          "notifications": "notification_id"}


def _rows(conninfo: str) -> dict:
    """Every row and every column value of the ledger, the view's included."""
    with _connect(conninfo) as conn:
        rows = {table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
                for table, key in TABLES.items()}
        rows["export_request_status"] = conn.execute(
            "SELECT * FROM export_request_status ORDER BY request_id").fetchall()
    return rows


def _without_added_columns(rows: dict) -> dict:
    """Rows of a ledger upgraded from 0001 without the columns later revisions added, which must be null on every
    row that was there: nothing was lost or changed."""
    for name, added in ADDED_AFTER_0001.items():
        for row in rows[name]:
            assert [row.pop(column) for column in added] == [None] * len(added)
    return rows


def _schema(conninfo: str) -> dict:
    """The ledger's shape from the catalog: columns, constraints, indexes, the view's definition."""
    with _connect(conninfo) as conn:
        def query(sql: str) -> list:
            return [tuple(row.values()) for row in conn.execute(sql).fetchall()]

        return {
            "columns": query("SELECT table_name, column_name, ordinal_position, data_type, udt_name, is_nullable, "
                             "column_default FROM information_schema.columns WHERE table_schema = 'public' "
                             "AND table_name <> 'portability_ledger_version' ORDER BY 1, 3"),
            "constraints": query("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                                 "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                                 "AND conrelid <> 'portability_ledger_version'::regclass ORDER BY 1, 2"
                                 if _has_version_table(conn) else
                                 "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                                 "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"),
            "indexes": query("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                             "AND tablename <> 'portability_ledger_version' ORDER BY 1, 2"),
            "views": query("SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1"),
            "relations": query("SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                               "AND relname NOT LIKE 'portability_ledger_version%' ORDER BY 1"),
        }


def _has_version_table(conn) -> bool:
    return conn.execute("SELECT to_regclass('portability_ledger_version') IS NOT NULL AS present").fetchone()[
        "present"]


def _version(conninfo: str) -> list[str]:
    with _connect(conninfo) as conn:
        return [row["version_num"] for row in conn.execute("SELECT version_num FROM portability_ledger_version")]


def _fill(conninfo: str) -> dict:
    """Rows as the code before Alembic wrote them: an export with every column set, two requests, a notification
    and a schedule."""
    export_id, first, second = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with _connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO exports (export_id, account_id, categories, formats, on_invalid, state, dag_run_id, "
            "created_at, started_at, ready_at, failed_at, expired_at, retain_until, region, bucket, archive_key, "
            "bytes, sha256, snapshot_at, counts, error, expiry_reason, lease_until) VALUES (%s, 'acme-00042', "
            "'{contacts,lists}', '{csv,jsonl}', 'quarantine', 'ready', 'request__old-run', "
            "'2026-11-01 10:00:00+00', '2026-11-01 10:00:01+00', '2026-11-01 10:05:00+00', "
            "'2026-11-01 10:02:00+00', '2026-12-02 10:00:00+00', '2026-12-01 10:05:00+00', 'eu', 'exports-eu', "
            "'acme-00042/abc/export.zip', 123456789012, repeat('ab', 32), '2026-11-01T10:00:00.123456Z', "
            "'{\"contacts\": {\"exported\": 300, \"quarantined\": 1}}', 'an earlier error, kept', 'revoked', "
            "'2026-11-01 10:06:00+00')", (export_id,))
        for request_id, key, state in ((first, "ticket-4711", "ready"), (second, None, "cancelled")):
            conn.execute(
                "INSERT INTO export_requests (request_id, export_id, idempotency_key, account_id, requested_by, "
                "notify_email, webhook_url, categories, formats, expires_in_hours, on_invalid, state, "
                "requested_at, deadline_at, delivered_at, cancelled_at, link_expires_at, notification_error, "
                "deadline_alerted_at) VALUES (%s, %s, %s, 'acme-00042', 'dpo@example.com', 'owner@acme.example', "
                "'https://hooks.acme.example/exports', '{contacts}', '{csv}', 72, 'quarantine', %s, "
                "'2026-11-01 09:59:00+00', '2026-12-01 09:59:00+00', '2026-11-01 10:07:00+00', "
                "'2026-11-01 10:01:00+00', '2026-11-04 10:07:00+00', 'SMTP 451, retried', "
                "'2026-11-28 08:00:00+00')", (request_id, export_id, key, state))
        conn.execute(
            "INSERT INTO notifications (notification_id, request_id, event, created_at, claimed_until, attempts, "
            "sent_at, last_error) VALUES (%s, %s, 'export.ready', '2026-11-01 10:05:01+00', "
            "'2026-11-01 10:15:01+00', 2, '2026-11-01 10:16:01+00', 'webhook 503')", (uuid.uuid4(), first))
        conn.execute(
            "INSERT INTO export_schedules (account_id, every_days, categories, formats, expires_in_hours, "
            "on_invalid, notify_email, next_due_at, last_run_at, last_export_id, last_error, created_at) VALUES "
            "('acme-00042', 30, '{contacts}', '{parquet}', 24, 'fail', 'owner@acme.example', "
            "'2026-12-01 00:00:00+00', '2026-11-01 00:00:00+00', %s, 'a scheduled error', "
            "'2026-10-01 00:00:00+00')", (export_id,))
    return {"export_id": str(export_id), "request_id": str(first)}


def _pre_alembic_ledger(conninfo: str) -> None:
    with _connect(conninfo) as conn:
        conn.execute(PRE_ALEMBIC_SCHEMA)


def test_the_head_revision_is_the_one_the_code_names():
    from alembic.script import ScriptDirectory

    from portability.resources import ledger

    scripts = ScriptDirectory.from_config(ledger.alembic_config())
    assert scripts.get_heads() == [ledger.SCHEMA_HEAD]


def test_a_ledger_made_before_alembic_upgrades_without_losing_a_row_or_a_value(new_database):
    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    conninfo = new_database()
    _pre_alembic_ledger(conninfo)
    ids = _fill(conninfo)
    rows, schema = _rows(conninfo), _schema(conninfo)
    assert all(rows.values())
    assert None not in rows["exports"][0].values()  # every column of the export holds a value
    assert None not in next(row for row in rows["export_requests"] if row["idempotency_key"]).values()

    with ledger.connect() as conn:
        assert ledger.schema_version(conn) == ledger.SCHEMA_HEAD
        status = ledger.request_status(conn, ids["request_id"])
        # The ledger works on after the upgrade: a new request is recorded beside the old ones.
        added = ledger.submit(conn, parse_request({"account_id": "acme-00043"}, SchemaSet()).to_dict(),
                              requested_by="dpo@example.com")

    assert _version(conninfo) == [ledger.SCHEMA_HEAD]
    assert status["archive_key"] == "acme-00042/abc/export.zip" and status["bytes"] == 123456789012
    after = _rows(conninfo)
    after["exports"] = [row for row in after["exports"] if str(row["export_id"]) != added.export_id]
    for name in ("export_requests", "export_request_status"):
        after[name] = [row for row in after[name] if str(row["request_id"]) != added.request_id]
    assert _without_added_columns(after) == rows
    upgraded = _schema(conninfo)
    assert _as_of_0001(schema["columns"]) <= _as_of_0001(upgraded["columns"])
    for kind in ("constraints", "indexes", "relations"):
        kept = {row for row in upgraded[kind] if not _changed_after_0001(row)}
        assert kept == {row for row in schema[kind] if not _changed_after_0001(row)}, kind


# 0003: a refused request has no export and may lack its options; the state check admits 'refused'; the
# progress of exports under way gets its own table.
NULLABLE_AFTER_0001 = {("export_requests", column) for column in
                       ("export_id", "account_id", "categories", "formats", "expires_in_hours", "on_invalid")}
CHANGED_AFTER_0001 = ("export_requests_state_check", "export_requests_export_unless_refused",
                      "export_requests_refused_run", "export_progress",
                      *(f"{table}_{column}_not_null" for table, column in NULLABLE_AFTER_0001))  # PostgreSQL 18


def _as_of_0001(columns: list) -> set:
    """Columns with the nullability later revisions relaxed put back as 0001 had it."""
    return {(*row[:5], "NO", *row[6:]) if row[:2] in NULLABLE_AFTER_0001 else tuple(row) for row in columns}


def _changed_after_0001(row: tuple) -> bool:
    return any(str(value).startswith(CHANGED_AFTER_0001) for value in row)


def test_a_ledger_of_the_first_release_gets_the_columns_added_since(new_database):
    """Before `cancelled_at`, `deadline_alerted_at`, `lease_until` and `notifications`, as the old code's
    ALTER TABLE ... ADD COLUMN IF NOT EXISTS lines assumed such ledgers exist."""
    from portability.resources import ledger

    reference = new_database()
    _pre_alembic_ledger(reference)
    ledger.upgrade(reference)  # the ledger at the head, by the upgrade path tested above
    conninfo = new_database()
    first_release = PRE_ALEMBIC_SCHEMA[:PRE_ALEMBIC_SCHEMA.index("ALTER TABLE exports ADD COLUMN")]
    for line in ("    cancelled_at       timestamptz,\n", "    deadline_alerted_at timestamptz\n",
                 "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;  "
                 "-- added after the first release\n",
                 "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS deadline_alerted_at timestamptz;  "
                 "-- added later still\n"):
        assert line in first_release
        first_release = first_release.replace(line, "")
    first_release = first_release.replace("notification_error text,\n", "notification_error text\n")
    with _connect(conninfo) as conn:
        conn.execute(first_release)
        conn.execute("INSERT INTO exports (export_id, account_id, categories, formats, on_invalid, state) "
                     "VALUES (%s, 'acme-1', '{contacts}', '{csv}', 'quarantine', 'requested')", (uuid.uuid4(),))
    before = _exports(conninfo)
    assert "lease_until" not in before[0]

    with ledger.connect():
        pass

    after = _exports(conninfo)
    added = ("lease_until", *ADDED_AFTER_0001["exports"])
    assert [{k: v for k, v in row.items() if k not in added} for row in after] == before
    assert [after[0][column] for column in added] == [None] * len(added)
    # Columns added to a table come last, so only their positions differ from a ledger made whole at once.
    columns = sorted(row[:2] + row[3:] for row in _schema(conninfo)["columns"])
    assert columns == sorted(row[:2] + row[3:] for row in _schema(reference)["columns"])
    assert {k: v for k, v in _schema(conninfo).items() if k != "columns"} == {
        k: v for k, v in _schema(reference).items() if k != "columns"}


def _exports(conninfo: str) -> list[dict]:
    with _connect(conninfo) as conn:
        return conn.execute("SELECT * FROM exports ORDER BY export_id").fetchall()


def test_an_empty_database_gets_the_whole_schema(new_database):
    from portability.resources import ledger

    reference = new_database()
    _pre_alembic_ledger(reference)
    ledger.upgrade(reference)  # the ledger at the head, by the upgrade path tested above
    conninfo = new_database()
    with ledger.connect() as conn:
        assert ledger.schema_version(conn) == ledger.SCHEMA_HEAD
    assert _schema(conninfo) == _schema(reference)
    assert {"exports", "export_requests", "export_schedules", "notifications", "export_request_status",
            "exports_account_state", "export_requests_export", "export_requests_open_deadline",
            "export_schedules_due"} <= {name for name, _ in _schema(conninfo)["relations"]}
    assert _version(conninfo) == [ledger.SCHEMA_HEAD]


_RACER = """
import os, sys, time
from portability.resources import ledger
open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
with ledger.connect() as conn:
    print(ledger.schema_version(conn))
"""


@pytest.mark.parametrize("made_before", [False, True], ids=["empty", "pre-alembic-ledger"])
def test_processes_and_threads_upgrading_at_once_do_not_fail(new_database, tmp_path, made_before):
    from portability.resources import ledger

    conninfo = new_database()
    if made_before:
        _pre_alembic_ledger(conninfo)
        _fill(conninfo)
    before = _rows(conninfo) if made_before else None
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path / str(n)), str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in range(3)):
        assert time.monotonic() < deadline and all(racer.poll() is None for racer in racers), [
            racer.communicate() for racer in racers if racer.poll() is not None]
        time.sleep(0.01)

    errors, barrier = [], threading.Barrier(3)

    def thread() -> None:
        try:
            barrier.wait()
            with ledger.connect() as conn:
                assert ledger.schema_version(conn) == ledger.SCHEMA_HEAD
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread) for _ in range(3)]
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    outcomes = [racer.communicate(timeout=120) for racer in racers]
    assert not errors
    assert [racer.returncode for racer in racers] == [0, 0, 0], [err[-3000:] for _, err in outcomes]
    assert [out.strip() for out, _ in outcomes] == [ledger.SCHEMA_HEAD] * 3
    assert _version(conninfo) == [ledger.SCHEMA_HEAD]
    if made_before:
        assert _without_added_columns(_rows(conninfo)) == before


def test_an_upgrade_at_the_head_changes_nothing(new_database):
    from portability.resources import ledger

    conninfo = new_database()
    with ledger.connect():
        pass
    _fill(conninfo)

    def state() -> tuple:
        with _connect(conninfo) as conn:
            # A catalog row's xmin changes with any DDL on it, even a CREATE OR REPLACE VIEW of the same view.
            touched = conn.execute(
                "SELECT (SELECT array_agg(xmin::text ORDER BY oid) FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace) AS classes, (SELECT array_agg(xmin::text ORDER BY "
                "attrelid, attnum) FROM pg_attribute WHERE attrelid IN (SELECT oid FROM pg_class WHERE "
                "relnamespace = 'public'::regnamespace)) AS columns, (SELECT array_agg(xmin::text ORDER BY oid) "
                "FROM pg_rewrite) AS rules, (SELECT xmin::text FROM portability_ledger_version) AS version"
            ).fetchone()
        return _rows(conninfo), _schema(conninfo), touched

    before = state()
    ledger.upgrade(conninfo)  # alembic upgrade head at the head
    ledger._SCHEMA_READY.discard(conninfo)
    with ledger.connect():  # a new process's first connect(): it finds the head and only reads the version
        pass
    assert state() == before


def test_connect_at_the_head_reads_the_version_without_importing_alembic(new_database):
    from portability.resources import ledger

    conninfo = new_database()
    with ledger.connect():
        pass
    probe = ("import sys, time\nfrom portability.resources import config, ledger\nstarted = time.perf_counter()\n"
             "config.state_settings()\nresolved = time.perf_counter()\n"
             "with ledger.connect() as conn:\n    pass\nended = time.perf_counter()\n"
             "print(resolved - started, ended - resolved, 'alembic' in sys.modules, 'sqlalchemy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    resolving, connecting, alembic_imported, _ = result.stdout.split()
    assert alembic_imported == "False"
    old = new_database()
    _pre_alembic_ledger(old)
    with _connect(old) as conn:  # what the first connect() of every process did before Alembic
        started = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('portability ledger schema'))")
            conn.execute(PRE_ALEMBIC_SCHEMA)
        old_schema = time.perf_counter() - started
    with _connect(conninfo) as conn:
        started = time.perf_counter()
        assert ledger.schema_version(conn) == ledger.SCHEMA_HEAD
        version_check = time.perf_counter() - started
    print(f"\nfirst connect() of a process, ledger at the head: {float(connecting) * 1000:.1f} ms after "
          f"{float(resolving) * 1000:.0f} ms resolving the connection (Airflow); the version check "
          f"{version_check * 1000:.2f} ms, the old code's schema run {old_schema * 1000:.2f} ms")


def test_the_ledger_migrations_command_shows_and_upgrades_the_version(new_database):
    from portability.resources import ledger

    conninfo = new_database()
    _pre_alembic_ledger(conninfo)
    _fill(conninfo)
    rows = _rows(conninfo)

    def command(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "portability.resources.ledger_migrations", *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert ledger.SCHEMA_HEAD not in command("current")
    script = command("upgrade", "head", "--sql")  # the DDL for a DBA, the database untouched
    assert "CREATE OR REPLACE VIEW export_request_status" in script and "portability_ledger_version" in script
    with _connect(conninfo) as conn:
        assert not _has_version_table(conn)
    command("upgrade", "head")
    assert f"{ledger.SCHEMA_HEAD} (head)" in command("current")
    assert _without_added_columns(_rows(conninfo)) == rows


def test_a_ledger_at_a_revision_this_release_does_not_know_is_refused_untouched(new_database):
    from portability.resources import ledger

    conninfo = new_database()
    with ledger.connect():
        pass
    _fill(conninfo)
    with _connect(conninfo) as conn:
        conn.execute("UPDATE portability_ledger_version SET version_num = '9999'")
    rows, schema = _rows(conninfo), _schema(conninfo)
    ledger._SCHEMA_READY.discard(conninfo)
    with pytest.raises(ledger.LedgerError, match="9999"), ledger.connect():
        pass
    assert (_rows(conninfo), _schema(conninfo), _version(conninfo)) == (rows, schema, ["9999"])


def test_revision_0003_goes_down_to_0002_and_up_again_dropping_only_refused_requests(new_database):
    """Downgrading past 0003 drops what 0002 cannot hold (refused requests, progress) and keeps every other row."""
    from alembic import command

    from portability.resources import ledger

    conninfo = new_database()
    _pre_alembic_ledger(conninfo)
    _fill(conninfo)
    ledger.upgrade(conninfo)
    with _connect(conninfo) as conn:
        kept = _rows(conninfo)
        ledger.refuse(conn, reason="invalid export request: field 'account_id' is required", requested_by="x")

    def run(revision: str, direction) -> None:
        cfg, engine = ledger.alembic_config(conninfo), ledger.ledger_engine(conninfo)
        with engine.connect() as connection, connection.begin():
            cfg.attributes["connection"] = connection
            direction(cfg, revision)
        engine.dispose()

    run("0002", command.downgrade)
    assert _version(conninfo) == ["0002"]
    with _connect(conninfo) as conn:
        assert conn.execute("SELECT to_regclass('export_progress')").fetchone()["to_regclass"] is None
        assert conn.execute("SELECT count(*) AS n FROM export_requests").fetchone()["n"] == len(kept["export_requests"])
    run("head", command.upgrade)
    assert _version(conninfo) == [ledger.SCHEMA_HEAD]
    assert _rows(conninfo) == kept
