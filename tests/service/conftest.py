"""A running Airflow (`airflow standalone`: API server, scheduler, DAG processor, triggerer, LocalExecutor),
a real SMTP server (aiosmtpd) and a real HTTP receiver for webhooks, all on free local ports."""

from __future__ import annotations

import contextlib
import email
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

STARTUP_SECONDS = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mailbox:
    """What the SMTP server received: email.message.Message objects."""

    def __init__(self):
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's handler protocol)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def wait_for(self, predicate, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if predicate(m)]
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"no matching email within {timeout} s; got {[m['Subject'] for m in self.messages]}")


@pytest.fixture(scope="session")
def mailbox():
    from aiosmtpd.controller import Controller

    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


class WebhookReceiver:
    """Records each POST (headers and body); answers 503 to the first `fail_first` calls, as a flaky receiver."""

    def __init__(self, fail_first: int = 1):
        self.calls: list[dict] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = 503 if len(receiver.calls) <= receiver.fail_first else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/exports"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


def _create_database(name: str) -> str:
    import psycopg
    from psycopg import sql

    from portability.resources import config

    with psycopg.connect(config.source_settings().conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        info = conn.info
        return f"postgresql+psycopg2://{info.user}@{info.host}:{info.port}/{name}"


@pytest.fixture(scope="session")
def airflow_server(store_env, seeded, mailbox, tmp_path_factory):
    """`airflow standalone` against the embedded stores; yields the environment that reaches it."""
    home = tmp_path_factory.mktemp("airflow-standalone")
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({"portability": password}))
    api_port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _create_database("airflow_standalone"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "portability:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": mailbox.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "exports@example.com"}}),
        "PORTABILITY_PRIVACY_EMAIL": "privacy-team@example.com",
        "AIRFLOW_CONN_PORTABILITY_WEBHOOK": json.dumps({"conn_type": "generic", "password": "whsec-test-secret"}),
        "AIRFLOW_CONN_PORTABILITY_AIRFLOW": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": api_port, "schema": "http",
            "login": "portability", "password": password}),
    }
    log_path = home / "standalone.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(Path(venv_bin) / "airflow"), "standalone"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_ready(api_port, password, log_path, process)
        yield {"env": env, "port": api_port, "password": password, "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Workers the executor started may outlive the parent's group: stop whatever still runs there.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _wait_until_ready(port: int, password: str, log_path: Path, process: subprocess.Popen) -> None:
    import requests

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"airflow standalone exited {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            token = requests.post(f"{base}/auth/token", json={"username": "portability", "password": password},
                                  timeout=5).json()["access_token"]
            dags = requests.get(f"{base}/api/v2/dags", headers={"Authorization": f"Bearer {token}"},
                                timeout=5).json()
            if {"account_export", "export_cleanup"} <= {d["dag_id"] for d in dags.get("dags", [])}:
                return
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(2)
    raise AssertionError(f"airflow standalone was not ready in {STARTUP_SECONDS} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def api(airflow_server):
    """An Airflow REST client logged in as the test user."""
    from portability.resources.airflow_api import AirflowApi

    return AirflowApi(f"http://127.0.0.1:{airflow_server['port']}", "portability", airflow_server["password"])
