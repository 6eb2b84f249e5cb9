"""A running Airflow (`airflow standalone`: API server, scheduler, DAG processor, triggerer, LocalExecutor),
a real SMTP server (aiosmtpd) and a real HTTP receiver for webhooks, all on free local ports."""

from __future__ import annotations

import email
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from portability_dev.airflow_local import free_port

VIEWER = "privacy-viewer"  # a user of Airflow's read-only role, beside the admin


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


@pytest.fixture
def own_webhook():
    """A receiver for one test alone (its first call answered 503 too), for a test that counts the calls it gets:
    the session's `webhook` answers 503 only to the session's first call, whichever test makes it."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def steady_webhook():
    """A webhook receiver of its own that answers every call 204 (the shared `webhook` fails its first call, which
    the test of retries counts on)."""
    receiver = WebhookReceiver(fail_first=0)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="session")
def airflow_server(store_env, seeded, mailbox, tmp_path_factory):
    """`airflow standalone` against the embedded stores (`portability_dev.airflow_local`), with the SMTP server
    and the webhook secret; yields the environment that reaches it."""
    from portability_dev import airflow_local

    services = {
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": mailbox.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "exports@example.com"}}),
        "PORTABILITY_PRIVACY_EMAIL": "privacy-team@example.com",
        "AIRFLOW_CONN_PORTABILITY_WEBHOOK": json.dumps({"conn_type": "generic", "password": "whsec-test-secret"}),
        # A read-only user beside the admin, for the Exports page's permissions (its password is generated into
        # the passwords file when the API server starts: the `viewer` fixture).
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{airflow_local.USERNAME}:admin,{VIEWER}:viewer",
    }
    with airflow_local.running_airflow(store_env, dag_ids=("account_export", "export_cleanup"),
                                       home=tmp_path_factory.mktemp("airflow-standalone"),
                                       extra_env=services) as airflow:
        yield {"env": airflow.env, "port": airflow.port, "password": airflow.password, "log": airflow.log_path,
               "base_url": airflow.base_url}


@pytest.fixture
def viewer(airflow_server) -> dict:
    """The read-only user (Airflow's viewer role): its username and the password that Airflow's SimpleAuthManager
    generated into the passwords file when the API server started."""
    passwords = Path(airflow_server["env"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    return {"username": VIEWER, "password": json.loads(passwords.read_text())[VIEWER]}


@pytest.fixture
def api(airflow_server):
    """An Airflow REST client logged in as the test user."""
    from portability.resources.airflow_api import AirflowApi

    return AirflowApi(f"http://127.0.0.1:{airflow_server['port']}", "portability", airflow_server["password"])
