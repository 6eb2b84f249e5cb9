"""Delivery sends outside the ledger's transactions: a slow webhook blocks no row of the ledger."""

from __future__ import annotations

import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.e2e


class SlowReceiver:
    """Answers each POST after `delay` seconds; `arrived` is set when one is being held."""

    def __init__(self, delay: float):
        self.arrived = threading.Event()
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.arrived.set()
                time.sleep(delay)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_slow_webhook_holds_no_ledger_lock(store_env, monkeypatch):
    import json

    from portability import service
    from portability.pipeline.model import Summary
    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_WEBHOOK", json.dumps({"conn_type": "generic", "password": "s3cr3t"}))
    receiver = SlowReceiver(delay=4)
    account = f"outbox-{uuid.uuid4().hex[:10]}"
    request = parse_request({"account_id": account}, SchemaSet()).to_dict()
    with ledger.connect() as conn:
        submission = ledger.submit(conn, request, requested_by="a", webhook_url=receiver.url)
        ledger.begin(conn, {**request, "export_id": submission.export_id}, submission.dag_run_id)
    summary = Summary(export_id=submission.export_id, account_id=account, region="us", bucket="exports-us",
                      key=f"exports/{submission.export_id}/t/a.zip", bytes=1, sha256="00" * 32,
                      snapshot_at="2026-01-01T00:00:00.000000Z", counts={})
    delivering = threading.Thread(target=service.deliver, args=(summary,))
    delivering.start()
    try:
        assert receiver.arrived.wait(60), "the webhook was never called"
        with ledger.connect() as other:  # the privacy team cancels or a second delivery runs meanwhile
            other.execute("SET lock_timeout = '1s'")
            with other.transaction():
                other.execute("UPDATE export_requests SET notification_error = 'touched' WHERE request_id = %s",
                              (submission.request_id,))
                other.execute("UPDATE exports SET error = NULL WHERE export_id = %s", (submission.export_id,))
    finally:
        delivering.join(timeout=60)
        receiver.server.shutdown()
    body = json.loads(receiver.bodies[0])
    assert body["notification_id"] == ledger.notification_id(submission.request_id, "export.ready")
    with ledger.connect() as conn:
        assert ledger.request_status(conn, submission.request_id)["state"] == "delivered"
