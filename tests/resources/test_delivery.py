"""Notification bodies (ready, failed, cancelled, the privacy team's) and webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import html
import json

import pytest

from portability.pipeline.export import Link
from portability.resources.delivery import (
    cancelled_notice,
    email_body,
    email_of,
    failed_notice,
    privacy_failure_email,
    public_reason,
    ready_notice,
    sign,
    verify_signature,
)

SECRET = b"whsec-unit"


def _notice(account: str = "acme-00042") -> dict:
    summary = {"export_id": "0b6f1c1e-8f3a-4a57-9d55-1d2a5c7e9b10", "account_id": account, "bytes": 12_345_678,
               "sha256": "ab" * 32, "snapshot_at": "2026-11-24T06:10:00.123456Z",
               "counts": {"contacts": {"source_count": 3, "exported": 2, "quarantined": 1}}}
    link = Link("https://s3.example/exports/x.zip?X-Amz-Signature=abc&X-Amz-Expires=60", "2026-11-27T06:11:02Z",
                "exports-us", "exports/x.zip")
    return ready_notice({"request_id": "3d1c6c1a-0c49-4c6f-8b7a-2f5d0c9e1a22",
                         "notification_id": "9b2e4f6a-1c3d-5e7f-8a9b-0c1d2e3f4a5b"}, summary, link)


def test_signature_is_hmac_sha256_over_timestamp_and_body():
    body = json.dumps(_notice()).encode()
    header = sign(SECRET, 1_800_000_000, body)
    expected = hmac.new(SECRET, b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={expected}"
    assert verify_signature(SECRET, header, body, now=1_800_000_100)


def test_signature_refuses_another_body_secret_or_a_stale_timestamp():
    body = json.dumps(_notice()).encode()
    header = sign(SECRET, 1_800_000_000, body)
    assert not verify_signature(SECRET, header, body + b" ", now=1_800_000_000)
    assert not verify_signature(b"other", header, body, now=1_800_000_000)
    assert not verify_signature(SECRET, header, body, now=1_800_000_000 + 301)
    assert not verify_signature(SECRET, "garbage", body, now=1_800_000_000)


def test_email_has_link_expiry_size_checksum_and_how_to_verify():
    subject, body = email_body(_notice())
    assert subject == "Your data export of account acme-00042 is ready"
    assert 'href="https://s3.example/exports/x.zip?X-Amz-Signature=abc&amp;X-Amz-Expires=60"' in body
    assert "2026-11-27T06:11:02Z" in body and "12.3 MB" in body and "ab" * 32 in body
    assert "sha256sum -c manifest-sha256.txt" in body


def test_email_escapes_what_came_from_the_account():
    _, body = email_body(_notice(account="<script>x</script>"))
    assert "<script>" not in body and "&lt;script&gt;" in body


# A recorded error as the DAG's failure callback keeps it, with what a requester must never read.
RAW_SOURCE_ERROR = ("export_account: cannot reach the database of Airflow connection 'portability_source': connection "
                    "to server at \"db.internal\" (10.0.0.7), port 5432 failed: FATAL: password authentication failed")
INTERNALS = ("portability_source", "db.internal", "10.0.0.7", "5432", "FATAL", "export_account", "Traceback", "http")


@pytest.mark.parametrize(("error", "code"), [
    ("export_account: account not found: 'acme-1'; check the account id. Nothing was exported.", "account_not_found"),
    ("export_shard: contacts: record #3 (id 7) fails its schema at /email (pattern); nothing was published because "
     "on_invalid=fail. Fix the source record or export with on_invalid=quarantine.", "invalid_records"),
    ("abandoned: its DAG run request__x is failed but never finished the export", "interrupted"),
    (RAW_SOURCE_ERROR, "data_unavailable"),
    ("package: cannot reach object storage (EndpointConnectionError): check the endpoint_url of Airflow connection "
     "'portability_s3' and that the server is up", "storage_unavailable"),
    ("deliver: KeyError: 'bytes'", "internal_error"),
    (None, "internal_error"),
])
def test_a_failure_is_told_as_a_fixed_public_reason(error, code):
    chosen, sentence = public_reason(error)
    assert chosen == code
    assert not [word for word in INTERNALS if word in sentence]
    assert not error or error[:20] not in sentence


def _failed(error: str = RAW_SOURCE_ERROR) -> dict:
    from datetime import UTC, datetime

    notification = {"notification_id": "9b2e4f6a-1c3d-5e7f-8a9b-0c1d2e3f4a5b",
                    "request_id": "3d1c6c1a-0c49-4c6f-8b7a-2f5d0c9e1a22", "account_id": "acme-00042",
                    "export_id": "0b6f1c1e-8f3a-4a57-9d55-1d2a5c7e9b10", "requested_by": "support",
                    "notify_email": "owner@example.org", "webhook_url": None,
                    "requested_at": datetime(2026, 11, 7, 9, 0, tzinfo=UTC),
                    "deadline_at": datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
                    "cancelled_at": datetime(2026, 11, 8, 10, 30, tzinfo=UTC)}
    export = {"export_id": notification["export_id"], "error": error, "dag_run_id": "request__abc",
              "failed_at": datetime(2026, 11, 7, 9, 5, tzinfo=UTC)}
    return {"notification": notification, "export": export}


def test_the_failed_notice_says_why_what_next_and_the_deadline_without_internals_or_a_link():
    case = _failed()
    notice = failed_notice(case["notification"], case["export"])
    assert set(notice) == {"event", "notification_id", "request_id", "export_id", "account_id", "reason", "message",
                           "next_steps", "deadline_at", "failed_at"}
    assert (notice["event"], notice["reason"], notice["deadline_at"]) == ("export.failed", "data_unavailable",
                                                                          "2026-12-07T09:00:00Z")
    assert "privacy team" in notice["next_steps"] and "2026-12-07T09:00:00Z" in notice["next_steps"]
    subject, body = email_of(notice)
    assert subject == "Your data export of account acme-00042 could not be completed"
    for text in (json.dumps(notice), subject, body):
        assert not [word for word in INTERNALS if word in text]
        assert "href" not in text and "url" not in text
    assert html.escape(notice["message"]) in body and "2026-12-07T09:00:00Z" in body


def test_the_cancelled_notice_has_no_link():
    notice = cancelled_notice(_failed()["notification"])
    assert set(notice) == {"event", "notification_id", "request_id", "export_id", "account_id", "message",
                           "cancelled_at"}
    subject, body = email_of(notice)
    assert subject == "Your data export request for account acme-00042 was cancelled"
    assert "2026-11-08T10:30:00Z" in body and "href" not in body


def test_the_privacy_teams_email_has_the_ids_the_recorded_error_and_the_deadline():
    case = _failed()
    subject, body = privacy_failure_email(case["notification"], case["export"])
    assert subject == ("Data export failed: account acme-00042, request 3d1c6c1a-0c49-4c6f-8b7a-2f5d0c9e1a22, "
                       "deadline 2026-12-07")
    assert html.escape(RAW_SOURCE_ERROR) in body and "2026-12-07T09:00:00Z" in body
    assert "request__abc" in body and "told by email" in body
