"""Notification bodies and webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import json

from portability.pipeline.export import Link
from portability.resources.delivery import email_body, ready_notice, sign, verify_signature

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
