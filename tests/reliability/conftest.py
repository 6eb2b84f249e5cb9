"""Fault injection in front of the real servers: an HTTP proxy before SeaweedFS that fails chosen calls."""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

# What S3 answers when it throttles, and when it fails inside; injected faults alternate between them.
ANSWERS = (
    (503, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
          b"<Message>Please reduce your request rate.</Message></Error>"),
    (500, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
          b"<Message>We encountered an internal error. Please try again.</Message></Error>"),
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultyS3:
    """Forwards every call to the real S3 server unchanged (so signatures still hold) except those that
    `fails(method, path, attempt, attempts)` picks, which get 503 SlowDown or 500 InternalError without
    reaching the server. `attempt` of `attempts` is botocore's count of tries of one call (amz-sdk-request)."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.fails: Callable[[str, str, int, int], bool] = lambda method, path, attempt, attempts: False
        self.calls = self.injected = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                tries = dict(field.strip().partition("=")[::2]
                             for field in self.headers.get("amz-sdk-request", "").split(";"))
                with proxy._lock:
                    proxy.calls += 1
                    fail = proxy.fails(self.command, self.path, int(tries.get("attempt") or 1),
                                       int(tries.get("max") or 1))
                    status, answer = ANSWERS[proxy.injected % len(ANSWERS)]
                    proxy.injected += fail
                if fail:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(answer)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP_BY_HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders(body)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 (http.server's naming)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_transiently(self, share: float, seed: int = 7) -> None:
        """Every call's first attempt fails, and `share` of its next ones but never its last: transient
        faults, as S3's 503s and 500s are, which the export must get through by retrying. Every call is
        hit, however few calls the export makes."""
        chance = random.Random(seed)
        self.fails = lambda method, path, attempt, attempts: attempt < attempts and (
            attempt == 1 or chance.random() < share)


@pytest.fixture
def faulty_s3(store_env, monkeypatch, tally):
    """The S3 connection pointed at a fault-injecting proxy of the real server (for this test only)."""
    connection = json.loads(os.environ["AIRFLOW_CONN_PORTABILITY_S3"])
    proxy = FaultyS3(connection["extra"]["endpoint_url"])
    # The archive keys are keyed by the secret, not the endpoint, so the proxy changes nothing but the route.
    connection["extra"] = {**connection["extra"], "endpoint_url": proxy.endpoint}
    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_S3", json.dumps(connection))
    yield proxy
    proxy.server.shutdown()
    tally["faults injected"] += proxy.injected
