"""Every request served, against a running Airflow: the trigger form's own defaults, and a request for an account
whose export died mid-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.airflow_runs import wait_for_run

pytestmark = pytest.mark.service


def _portability(env: dict, *args: str) -> subprocess.Popen:
    executable = Path(sys.executable).with_name("portability")
    return subprocess.Popen([str(executable), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_the_trigger_forms_defaults_export_through_the_rest_api(airflow_server, api):
    """The conf the UI's form sends when only the account is filled in: every Param at its default, null for the
    fields left empty (who to notify)."""
    import requests

    from portability import service
    from portability.resources.ledger import connect
    from portability.service.request import export_id_for_run

    details = requests.get(f"{api.base_url}/api/v2/dags/account_export/details",
                           headers={"Authorization": f"Bearer {api.token()}"}, timeout=30).json()
    form = {name: param["value"] for name, param in details["params"].items()}
    assert form["notify_email"] is None and form["webhook_url"] is None  # what broke validate_request
    conf = {**form, "account_id": "e2e-00003"}
    run_id = f"form-{uuid.uuid4()}"
    assert api.trigger("account_export", run_id, conf) is True
    assert wait_for_run(api, "account_export", run_id) == "success"
    with connect() as conn:
        [row] = conn.execute("SELECT request_id FROM export_requests WHERE export_id = %s",
                             (export_id_for_run("account_export", run_id),)).fetchall()
    status = service.status(str(row["request_id"]))
    assert status["state"] == "ready" and status["notify_email"] is None
    assert status["formats"] == ["csv", "jsonl"] and len(status["categories"]) == len(form["categories"])


def test_a_request_after_the_command_was_killed_mid_export_is_served(airflow_server):
    """kill -9 of `portability export` leaves its export 'running' in the ledger: a request for the account must
    not wait on it for ever, but be served by a new export, and the dead one is marked failed with why."""
    from portability.resources import ledger

    account = "e2e-00001"
    env = {**airflow_server["env"], "PORTABILITY_LEASE_SECONDS": "4"}
    exporting = _portability(env, "export", "--account", account)
    try:
        deadline = time.monotonic() + 120
        running = None
        while running is None and time.monotonic() < deadline:
            with ledger.connect() as conn:
                running = conn.execute(
                    "SELECT export_id FROM exports WHERE account_id = %s AND state = 'running' AND dag_run_id IS NULL "
                    "AND created_at > now() - interval '2 minutes'", (account,)).fetchone()
            time.sleep(0.05)
        assert running is not None, "the command never started its export"
    finally:
        os.kill(exporting.pid, signal.SIGKILL)
        exporting.communicate()
    dead_export = str(running["export_id"])

    # At once, while the dead export's lease may still hold: the request may join it, and must still be served.
    requesting = _portability(env, "request", "--account", account, "--requested-by", "after-the-kill", "--wait",
                              "--timeout", "600", "--json")
    out, err = requesting.communicate(timeout=900)
    assert requesting.returncode == 0, err[-3000:] + airflow_server["log"].read_text()[-2000:]
    result = json.loads(out)
    assert result["state"] == "delivered" and result["export_id"] != dead_export
    with urllib.request.urlopen(result["url"], timeout=60) as response:
        assert response.read(4) == b"PK\x03\x04"
    with ledger.connect() as conn:
        dead = ledger.export_record(conn, dead_export)
        left_behind = conn.execute("SELECT count(*) AS n FROM export_requests WHERE export_id = %s",
                                   (dead_export,)).fetchone()["n"]
        served = {row["requested_by"] for row in conn.execute(
            "SELECT requested_by FROM export_requests WHERE export_id = %s", (result["export_id"],)).fetchall()}
    assert dead["state"] == "failed" and dead["error"].startswith("abandoned: the process exporting it stopped")
    # The killed command's own request moved on with the new one: nobody waits on the dead export.
    assert left_behind == 0 and {"after-the-kill", "portability export"} <= served
