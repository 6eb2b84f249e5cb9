"""Requests refused before any read, and the progress of exports under way.

A request refused by validation (a DAG run's `validate_request`, the `request` and `export` commands)
is now kept as a request in state `refused`, with `refused_reason` and the DAG run that refused it
(`dag_run_id`): the privacy team sees every request made, not only those that started an export. It has
no export, and may lack an account or options, so those columns of `export_requests` become nullable.
The status view joins exports with a LEFT JOIN so that refused requests show too.

`export_progress` holds, per export, category and part (a shard's label, or '' for an export done whole
in one process), the rows and pieces done of the estimate: the Exports page shows it while the export
runs. A retried shard overwrites its own part.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD_STATES = "'requested', 'running', 'ready', 'delivered', 'expired', 'failed', 'cancelled'"
_NULLABLE = ("export_id", "account_id", "categories", "formats", "expires_in_hours", "on_invalid")

_VIEW_0002 = """CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason,
           e.subject_email, e.since, e.until
    FROM export_requests r JOIN exports e USING (export_id)"""


def upgrade() -> None:
    op.execute("ALTER TABLE export_requests ADD COLUMN refused_reason text")
    op.execute("ALTER TABLE export_requests ADD COLUMN dag_run_id text")
    # The same refusing run recorded once, however often its task is retried.
    op.execute("CREATE UNIQUE INDEX export_requests_refused_run ON export_requests (dag_run_id) "
               "WHERE dag_run_id IS NOT NULL")
    for column in _NULLABLE:
        op.execute(f"ALTER TABLE export_requests ALTER COLUMN {column} DROP NOT NULL")
    op.execute("ALTER TABLE export_requests DROP CONSTRAINT export_requests_state_check")
    op.execute(f"ALTER TABLE export_requests ADD CONSTRAINT export_requests_state_check "
               f"CHECK (state IN ({_OLD_STATES}, 'refused'))")
    # Only a refused request goes without an export.
    op.execute("ALTER TABLE export_requests ADD CONSTRAINT export_requests_export_unless_refused "
               "CHECK (state = 'refused' OR export_id IS NOT NULL)")
    op.execute("""CREATE TABLE export_progress (
    export_id      uuid NOT NULL REFERENCES exports ON DELETE CASCADE,
    category       text NOT NULL,
    part           text NOT NULL DEFAULT '',
    rows_done      bigint NOT NULL,
    rows_estimated bigint,
    pieces_done    integer NOT NULL,
    pieces_total   integer,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (export_id, category, part)
)""")
    # A new column of a view can only come last (CREATE OR REPLACE VIEW keeps the old ones in place).
    op.execute("""CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           coalesce(e.dag_run_id, r.dag_run_id) AS dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256,
           e.counts, e.error, e.expiry_reason, e.subject_email, e.since, e.until, r.refused_reason
    FROM export_requests r LEFT JOIN exports e USING (export_id)""")


def downgrade() -> None:
    op.execute("DROP VIEW export_request_status")
    op.execute(_VIEW_0002)
    op.execute("DROP TABLE export_progress")
    # Refused requests have no export: they cannot be kept in the schema of 0002.
    op.execute("DELETE FROM export_requests WHERE state = 'refused'")
    op.execute("ALTER TABLE export_requests DROP CONSTRAINT export_requests_export_unless_refused")
    op.execute("ALTER TABLE export_requests DROP CONSTRAINT export_requests_state_check")
    op.execute(f"ALTER TABLE export_requests ADD CONSTRAINT export_requests_state_check "
               f"CHECK (state IN ({_OLD_STATES}))")
    for column in _NULLABLE:
        op.execute(f"ALTER TABLE export_requests ALTER COLUMN {column} SET NOT NULL")
    op.execute("DROP INDEX export_requests_refused_run")
    op.execute("ALTER TABLE export_requests DROP COLUMN dag_run_id")
    op.execute("ALTER TABLE export_requests DROP COLUMN refused_reason")
