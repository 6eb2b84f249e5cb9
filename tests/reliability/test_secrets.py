"""No secret reaches an exception text or a log line when things fail: credentials of every connection,
presigned links, webhook secrets, planted secret columns, and the values of an invalid record."""

from __future__ import annotations

import json
import logging
import os
import socket
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import pytest

pytestmark = pytest.mark.reliability
ACCOUNT = "e2e-00001"
SECRET = "PLANTEDSECRET-credential-7f3a9c"  # the seed's secret columns carry the same marker
LINK = "https://s3.example/exports-us/x.zip?X-Amz-Credential=AKID&X-Amz-Signature=PLANTEDSECRETsignature"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failure_text(exc: BaseException, caplog) -> str:
    """Everything a failure shows an engineer: the message, the whole chained traceback, every log record."""
    return "".join(traceback.format_exception(exc)) + caplog.text


def assert_clean(text: str, *also: str) -> None:
    for needle in ("PLANTEDSECRET", "X-Amz-Signature", *also):
        assert needle not in text, f"{needle!r} leaked: ...{text[max(0, text.find(needle) - 300):][:600]}"


def with_password(env_name: str, **changes) -> str:
    connection = json.loads(os.environ[env_name])
    return json.dumps({**connection, **changes})


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # the most an engineer could turn on
    return caplog


def test_a_wrong_s3_secret_key_fails_without_showing_it(seeded, monkeypatch, debug_logs, tally):
    from portability.pipeline import export

    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_S3", with_password("AIRFLOW_CONN_PORTABILITY_S3", password=SECRET))
    with pytest.raises(Exception) as failure:
        export.run_export({"account_id": ACCOUNT, "categories": ["lists"]}, str(uuid.uuid4()))
    assert "SignatureDoesNotMatch" in str(failure.value) or "Forbidden" in str(failure.value)
    assert_clean(failure_text(failure.value, debug_logs))
    tally["faults injected"] += 1


def test_an_unreachable_source_fails_without_showing_its_password(seeded, monkeypatch, debug_logs, tally):
    from portability.pipeline import export

    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_SOURCE",
                       with_password("AIRFLOW_CONN_PORTABILITY_SOURCE", password=SECRET, port=closed_port()))
    with pytest.raises(Exception) as failure:
        export.run_export({"account_id": ACCOUNT}, str(uuid.uuid4()))
    assert_clean(failure_text(failure.value, debug_logs))
    assert "portability_source" in str(failure.value), str(failure.value)
    tally["faults injected"] += 1


def test_an_unreachable_ledger_fails_without_showing_its_password(seeded, monkeypatch, debug_logs, tally):
    from portability import service

    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_STATE",
                       with_password("AIRFLOW_CONN_PORTABILITY_STATE", password=SECRET, port=closed_port()))
    with pytest.raises(Exception) as failure:
        service.export_now({"account_id": ACCOUNT})
    assert_clean(failure_text(failure.value, debug_logs))
    assert "portability_state" in str(failure.value), str(failure.value)
    tally["faults injected"] += 1


def test_a_failed_email_shows_neither_the_link_nor_the_smtp_password(monkeypatch, debug_logs, tally):
    from portability.resources import delivery

    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": closed_port(), "login": "mailer", "password": SECRET,
        "extra": {"disable_ssl": True, "disable_tls": True, "retry_limit": 1, "timeout": 5}}))
    notice = {"notification_id": str(uuid.uuid4()), "request_id": str(uuid.uuid4()), "account_id": ACCOUNT,
              "url": LINK, "bytes": 1,
              "expires_at": "2026-12-01T00:00:00Z", "sha256": "0" * 64, "export_id": str(uuid.uuid4()),
              "snapshot_at": "2026-11-24T00:00:00.000000Z",
              "counts": {"contacts": {"source_count": 1, "exported": 1, "quarantined": 0}}}
    with pytest.raises(delivery.DeliveryError) as failure:
        delivery.send_email("customer@example.org", notice)
    assert "customer@example.org" in str(failure.value)
    assert_clean(failure_text(failure.value, debug_logs))
    tally["faults injected"] += 1


def test_a_failed_webhook_shows_neither_the_link_nor_the_signing_secret(monkeypatch, debug_logs, tally):
    from portability.resources import delivery

    class AlwaysFailing(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysFailing)
    Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET}))
    notice = {"event": "export.ready", "url": LINK, "account_id": ACCOUNT}
    try:
        with pytest.raises(delivery.DeliveryError) as failure:
            delivery.post_webhook(f"http://127.0.0.1:{server.server_port}/hook", notice, attempts=3,
                                  backoff_seconds=0.01)
    finally:
        server.shutdown()
    assert_clean(failure_text(failure.value, debug_logs))
    tally["faults injected"] += 3


def test_an_invalid_record_that_fails_the_run_is_named_by_id_not_by_its_values(seeded, debug_logs):
    from portability.pipeline import export
    from tests.helpers.accounts import BAD_ACCOUNT, BAD_CONTACT_EMAIL

    with pytest.raises(Exception) as failure:
        export.run_export({"account_id": BAD_ACCOUNT, "categories": ["contacts"], "on_invalid": "fail"},
                          str(uuid.uuid4()))
    assert "/email" in str(failure.value) and "id " in str(failure.value)
    assert_clean(failure_text(failure.value, debug_logs), BAD_CONTACT_EMAIL)


def test_the_categories_beside_secret_columns_export_none_of_them(seeded, db, store, tmp_path):
    """Users, API keys, webhooks and domains are exported (SPEC §3) without their secret columns (SPEC §2), whose
    planted values appear in no file of any format."""
    from portability.pipeline import export
    from tests.helpers.archive_checks import SECRET_COLUMNS, check_no_secrets, jsonl, unpack

    categories = ["domains", "users", "api_keys", "webhooks"]
    summary = export.run_export({"account_id": ACCOUNT, "categories": categories,
                                 "formats": ["csv", "jsonl", "parquet"]}, str(uuid.uuid4()))
    (tmp_path / "archive.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    root = unpack(tmp_path / "archive.zip", tmp_path)
    for category in categories:
        owned = db.execute(f"SELECT count(*) FROM {category} WHERE account_id = %s", (ACCOUNT,)).fetchone()[0]
        assert summary.counts[category] == {"source_count": owned, "exported": owned, "quarantined": 0}, category
        assert owned and all(not set(SECRET_COLUMNS[category]) & set(record)
                             for record in jsonl(root / f"data/{category}.jsonl")), category
    assert check_no_secrets(root, db) >= 3 * 7  # every account's planted secrets were looked for
