"""Against a running Airflow: a run names its account and requester in the run list (its note), and a request
that fails for good tells its requester (export.failed, email and signed webhook, once per channel) and the privacy
team (one email), with no internals in what the requester reads."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.helpers.accounts import BAD_ACCOUNT
from tests.helpers.airflow_runs import wait_for_run
from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.service
ACCOUNT = "e2e-00003"
PRIVACY = "privacy-team@example.com"
INTERNALS = ("export_account", "record #", "fails its schema", "/email", "Traceback", "portability_", "127.0.0.1",
             "postgresql", "X-Amz", "href", "http://", "https://", "planted-invalid-address")


def run_list(api) -> dict[str, dict]:
    """The DAG's runs as the UI's run list reads them (REST `GET dagRuns`), by run id."""
    response = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns",
                            headers={"Authorization": f"Bearer {api.token()}"},
                            params={"limit": 1000, "order_by": "-run_after"}, timeout=30)
    response.raise_for_status()
    return {run["dag_run_id"]: run for run in response.json()["dag_runs"]}


def html_of(message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode()
    raise AssertionError("the email has no HTML part")


def test_runs_triggered_from_the_rest_api_name_their_account_and_requester(airflow_server, api):
    named, anonymous = f"crm-{uuid.uuid4()}", f"ui-like-{uuid.uuid4()}"
    conf = {"account_id": ACCOUNT, "categories": ["domains"], "formats": ["jsonl"]}
    assert api.trigger("account_export", named, {**conf, "requested_by": "support desk"}) is True
    assert api.trigger("account_export", anonymous, conf) is True  # as the UI's form sends it: no requester
    assert wait_for_run(api, "account_export", named) == "success"
    assert wait_for_run(api, "account_export", anonymous) == "success"
    runs = run_list(api)
    assert runs[named]["note"] == f"account {ACCOUNT} · requested by support desk"
    assert runs[anonymous]["note"] == f"account {ACCOUNT} · requested by Airflow user portability"


def test_a_run_of_portability_request_names_its_account_requester_and_request(airflow_server, api):
    result = portability_cli("request", "--account", ACCOUNT, "--categories", "lists", "--requested-by",
                             "dpo@example.com", "--json", env=airflow_server["env"])
    requested = json.loads(result.stdout)
    assert wait_for_run(api, "account_export", requested["dag_run_id"]) == "success"
    note = run_list(api)[requested["dag_run_id"]]["note"]
    assert note == f"account {ACCOUNT} · requested by dpo@example.com · request {requested['request_id']}"


def test_a_run_that_fails_for_good_tells_the_requester_once_per_channel_and_the_privacy_team_once(
        airflow_server, api, mailbox, own_webhook):
    from portability.resources import ledger
    from portability.resources.delivery import NOTIFICATION_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, verify_signature
    from portability.service.request import export_id_for_run

    run_id = f"fails-{uuid.uuid4()}"
    conf = {"account_id": BAD_ACCOUNT, "on_invalid": "fail", "categories": ["contacts"], "requested_by": "owner",
            "notify_email": "bad-owner@example.org", "webhook_url": own_webhook.url}
    assert api.trigger("account_export", run_id, conf) is True
    assert wait_for_run(api, "account_export", run_id) == "failed"
    export_id = export_id_for_run("account_export", run_id)
    with ledger.connect() as conn:
        [request] = conn.execute("SELECT request_id, state, deadline_at FROM export_requests WHERE export_id = %s",
                                 (export_id,)).fetchall()
        error = ledger.export_record(conn, export_id)["error"]
    request_id, deadline = str(request["request_id"]), f"{request['deadline_at']:%Y-%m-%dT%H:%M:%SZ}"
    assert request["state"] == "failed" and "on_invalid=fail" in error  # the raw error stays in the ledger
    expected_id = ledger.notification_id(request_id, "export.failed")

    [email] = mailbox.wait_for(lambda m: m["To"] == "bad-owner@example.org", 120)
    body = html_of(email)
    assert email["Subject"] == f"Your data export of account {BAD_ACCOUNT} could not be completed"
    assert email[NOTIFICATION_ID_HEADER] == expected_id
    assert "did not pass validation" in body and "privacy team has been told" in body and deadline in body
    assert not [word for word in INTERNALS if word in body]

    [team] = mailbox.wait_for(lambda m: m["To"] == PRIVACY and request_id in (m["Subject"] or ""), 120)
    assert BAD_ACCOUNT in team["Subject"] and deadline[:10] in team["Subject"]
    assert "on_invalid=fail" in html_of(team) and deadline in html_of(team) and run_id in html_of(team)

    calls = [c for c in own_webhook.calls if json.loads(c["body"]).get("request_id") == request_id]
    assert len(calls) == 2  # answered 503, retried once and accepted: delivered once
    assert {json.loads(c["body"])["notification_id"] for c in calls} == {expected_id}
    delivered = calls[-1]
    notice = json.loads(delivered["body"])
    assert verify_signature(b"whsec-test-secret", delivered["headers"][WEBHOOK_SIGNATURE_HEADER], delivered["body"])
    assert delivered["headers"][NOTIFICATION_ID_HEADER] == expected_id
    assert (notice["event"], notice["reason"], notice["deadline_at"]) == ("export.failed", "invalid_records",
                                                                          deadline)
    assert not [word for word in INTERNALS if word in delivered["body"].decode()]

    # Exactly one of each, after the run and its callbacks are all done.
    assert len([m for m in mailbox.messages if m["To"] == "bad-owner@example.org"]) == 1
    assert len([m for m in mailbox.messages if m["To"] == PRIVACY and request_id in (m["Subject"] or "")]) == 1
    with ledger.connect() as conn:
        sent = conn.execute("SELECT event, sent_at IS NOT NULL AS sent FROM notifications WHERE request_id = %s "
                            "ORDER BY event", (request_id,)).fetchall()
    assert [(row["event"], row["sent"]) for row in sent] == [("export.failed", True), ("privacy.export.failed", True)]
    assert run_list(api)[run_id]["note"] == f"account {BAD_ACCOUNT} · requested by owner"
