"""Exports for one data subject, and exports bounded in time.

`exports` gains `subject_email` (the data subject whose archive it is; null for a whole account's) and
`since`/`until` (the bounds on messages and events, RFC 3339 in UTC as the request gave them; null for
none). They decide what the archive holds, so a request joins only an export with the same three. The
status view shows them to the privacy team. Existing rows keep null: whole-account, unbounded exports,
which is what they were.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE exports ADD COLUMN subject_email text")
    op.execute("ALTER TABLE exports ADD COLUMN since text")
    op.execute("ALTER TABLE exports ADD COLUMN until text")
    op.execute("""CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason,
           e.subject_email, e.since, e.until
    FROM export_requests r JOIN exports e USING (export_id)""")


def downgrade() -> None:
    op.execute("""CREATE OR REPLACE VIEW export_request_status AS
    SELECT r.request_id, r.export_id, r.idempotency_key, r.account_id, r.requested_by, r.notify_email,
           r.categories, r.formats, r.state, r.requested_at, r.deadline_at, r.delivered_at, r.link_expires_at,
           r.cancelled_at, r.notification_error, e.started_at, e.ready_at, e.failed_at, e.expired_at, e.retain_until,
           e.dag_run_id, e.region, e.bucket, e.archive_key, e.bytes, e.sha256, e.counts, e.error, e.expiry_reason
    FROM export_requests r JOIN exports e USING (export_id)""")
    for column in ("until", "since", "subject_email"):
        op.execute(f"ALTER TABLE exports DROP COLUMN {column}")
