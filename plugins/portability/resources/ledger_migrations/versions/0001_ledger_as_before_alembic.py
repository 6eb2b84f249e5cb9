"""The ledger as the code before Alembic created it.

Tables exports, export_requests, export_schedules and notifications, the view export_request_status and
the indexes, as `_SCHEMA` of plugins/portability/ledger.py at commit 0aeb3dc created them.

Every statement is idempotent (IF NOT EXISTS, ADD COLUMN IF NOT EXISTS, CREATE OR REPLACE VIEW), so this
revision creates the whole schema in an empty database and adopts a ledger made by earlier code (which had
no version table) without touching a row. The text is frozen: a later change of the schema is a new
revision, never an edit here.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_STATES = "'requested', 'running', 'ready', 'delivered', 'expired', 'failed', 'cancelled'"

STATEMENTS = (
    f"""CREATE TABLE IF NOT EXISTS exports (
    export_id     uuid PRIMARY KEY,
    account_id    text NOT NULL,
    categories    text[] NOT NULL,
    formats       text[] NOT NULL,
    on_invalid    text NOT NULL,
    state         text NOT NULL CHECK (state IN ({_STATES})),
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
)""",
    "CREATE INDEX IF NOT EXISTS exports_account_state ON exports (account_id, state)",
    f"""CREATE TABLE IF NOT EXISTS export_requests (
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
    state              text NOT NULL CHECK (state IN ({_STATES})),
    requested_at       timestamptz NOT NULL DEFAULT now(),
    deadline_at        timestamptz NOT NULL,
    delivered_at       timestamptz,
    cancelled_at       timestamptz,
    link_expires_at    timestamptz,
    notification_error text,
    deadline_alerted_at timestamptz
)""",
    # Columns added after the first release: a ledger of that release lacks them.
    "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS cancelled_at timestamptz",
    "ALTER TABLE export_requests ADD COLUMN IF NOT EXISTS deadline_alerted_at timestamptz",
    "CREATE INDEX IF NOT EXISTS export_requests_export ON export_requests (export_id)",
    """CREATE INDEX IF NOT EXISTS export_requests_open_deadline ON export_requests (deadline_at)
    WHERE state IN ('requested', 'running', 'ready', 'failed')""",
    """CREATE TABLE IF NOT EXISTS export_schedules (
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
)""",
    "CREATE INDEX IF NOT EXISTS export_schedules_due ON export_schedules (next_due_at)",
    # An export under way proves it is alive.
    "ALTER TABLE exports ADD COLUMN IF NOT EXISTS lease_until timestamptz",
    """CREATE TABLE IF NOT EXISTS notifications (
    notification_id uuid PRIMARY KEY,
    request_id      uuid NOT NULL REFERENCES export_requests,
    event           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    sent_at         timestamptz,
    last_error      text,
    UNIQUE (request_id, event)
)""",
    """CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason
    FROM export_requests r JOIN exports e USING (export_id)""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("revision 0001 is the ledger itself: undoing it would drop every request and export")
