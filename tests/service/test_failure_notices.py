"""Nobody left uninformed, at the service's level: a request that fails for good tells its requester (export.failed,
email and signed webhook) and the privacy team (one email per failed request), once, however often the failure is
reported; a cancelled request tells its requester. Real SMTP server and webhook receiver, real ledger."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta

import pytest

pytestmark = pytest.mark.e2e
SECRET = "whsec-test-secret"
PRIVACY = "privacy-team@example.com"
SOURCE_DOWN = ("export_account: cannot reach the database of Airflow connection 'portability_source': connection to "
               "server at \"127.0.0.1\", port 1 failed: Connection refused")
INTERNALS = ("portability_source", "127.0.0.1", "port 1", "Connection refused", "export_account", "Traceback",
             "X-Amz", "https://", "href")


@pytest.fixture
def channels(store_env, mailbox, own_webhook, monkeypatch):
    """This process sends through the session's SMTP server and signs webhooks with the test secret."""
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": mailbox.port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "exports@example.com"}}))
    monkeypatch.setenv("AIRFLOW_CONN_PORTABILITY_WEBHOOK", json.dumps({"conn_type": "generic", "password": SECRET}))
    monkeypatch.setenv("PORTABILITY_PRIVACY_EMAIL", PRIVACY)
    return {"mailbox": mailbox, "webhook": own_webhook}


def html_of(message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode()
    raise AssertionError("the email has no HTML part")


def _requests_of_one_run(account: str, *asks: dict) -> tuple[str, list[str]]:
    """A DAG run's export with one request per ask (the first records the run, the others join it)."""
    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    request = parse_request({"account_id": account}, SchemaSet()).to_dict()
    ids = []
    with ledger.connect() as conn:
        first = ledger.submit(conn, request, **asks[0])
        ids.append(first.request_id)
        for ask in asks[1:]:
            ids.append(ledger.submit(conn, request, **ask).request_id)
        ledger.begin(conn, {**request, "export_id": first.export_id}, first.dag_run_id)
    return first.dag_run_id, ids


def ledger_request(request_id: str) -> dict:
    from portability.resources import ledger

    with ledger.connect() as conn:
        return ledger.request_status(conn, request_id)


def _mail_about(mailbox, request_id: str) -> list:
    return [m for m in mailbox.messages if request_id in html_of(m)]


def test_a_failed_export_tells_each_requester_once_and_the_privacy_team_once_per_request(channels):
    from portability import service
    from portability.resources import ledger
    from portability.resources.delivery import NOTIFICATION_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, verify_signature

    mailbox, webhook = channels["mailbox"], channels["webhook"]
    account = f"fails-{uuid.uuid4().hex[:8]}"
    run_id, (told, silent) = _requests_of_one_run(
        account, {"requested_by": "owner", "notify_email": "owner@example.org", "webhook_url": webhook.url},
        {"requested_by": "support ticket 7"})  # no channel: only the privacy team hears of it
    first = service.fail("account_export", run_id, SOURCE_DOWN)
    # Another task failing for good, a repeated callback, the cleanup DAG's sweep: nothing is sent again.
    again = service.fail("account_export", run_id, SOURCE_DOWN)
    swept = service.send_pending_notices()
    assert (first["notified"], first["privacy_team_told"], first["failures"]) == (1, 2, [])
    assert (again["notified"], again["privacy_team_told"], swept["notified"]) == (0, 0, 0)

    expected_id = ledger.notification_id(told, "export.failed")
    [email] = [m for m in _mail_about(mailbox, told) if m["To"] == "owner@example.org"]
    body = html_of(email)
    assert email["Subject"] == f"Your data export of account {account} could not be completed"
    assert email[NOTIFICATION_ID_HEADER] == expected_id
    assert "a database holding it did not answer" in body and "privacy team has been told" in body
    deadline = ledger_request(told)["deadline_at"]
    assert f"{deadline:%Y-%m-%dT%H:%M:%SZ}" in body
    assert not [word for word in INTERNALS if word in body + email["Subject"]]

    calls = [c for c in webhook.calls if json.loads(c["body"])["request_id"] == told]
    assert len(calls) == 2  # answered 503, retried once and accepted: delivered once
    assert {json.loads(c["body"])["notification_id"] for c in calls} == {expected_id}
    assert {c["headers"][NOTIFICATION_ID_HEADER] for c in calls} == {expected_id}
    notice = json.loads(calls[-1]["body"])
    assert verify_signature(SECRET.encode(), calls[-1]["headers"][WEBHOOK_SIGNATURE_HEADER], calls[-1]["body"])
    assert (notice["event"], notice["reason"], notice["account_id"]) == ("export.failed", "data_unavailable", account)
    assert notice["deadline_at"] == f"{deadline:%Y-%m-%dT%H:%M:%SZ}"
    assert not [word for word in INTERNALS if word in calls[-1]["body"].decode()]

    team = [m for m in mailbox.messages if m["To"] == PRIVACY and account in m["Subject"]]
    assert sorted(m["Subject"].split("request ")[1].split(",")[0] for m in team) == sorted([told, silent])
    for message in team:
        text = html_of(message)
        assert "127.0.0.1" in text and "portability_source" in text  # the recorded error, for the privacy team
        assert "legal deadline" in text and account in text
    assert "not told" in html_of(next(m for m in team if silent in m["Subject"]))
    assert not [m for m in _mail_about(mailbox, silent) if m["To"] != PRIVACY]


def test_a_failed_send_stays_in_the_outbox_and_the_sweep_sends_it_once(channels, monkeypatch):
    from portability import service

    mailbox = channels["mailbox"]
    account = f"retry-{uuid.uuid4().hex[:8]}"
    run_id, [request_id] = _requests_of_one_run(account, {"requested_by": "a", "notify_email": "late@example.org"})
    working = json.loads(os.environ["AIRFLOW_CONN_SMTP_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({**working, "port": 1}))  # the SMTP server is down
    failed = service.fail("account_export", run_id, "export_account: account not found: 'x'")
    assert failed["notified"] == 0 and len(failed["failures"]) == 2  # the requester's and the privacy team's
    assert ledger_request(request_id)["notification_error"].startswith("email to late@example.org failed")
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(working))
    assert service.send_pending_notices()["notified"] == 2
    assert service.send_pending_notices()["notified"] == 0
    [email] = [m for m in mailbox.messages if m["To"] == "late@example.org"]
    assert "We could not find the account this request names." in html_of(email)
    assert len([m for m in mailbox.messages if m["To"] == PRIVACY and request_id in m["Subject"]]) == 1


def test_a_cancelled_request_tells_its_requester(channels):
    from portability import service
    from portability.resources import ledger
    from portability.resources.delivery import WEBHOOK_SIGNATURE_HEADER, verify_signature

    mailbox, webhook = channels["mailbox"], channels["webhook"]
    account = f"cancel-{uuid.uuid4().hex[:8]}"
    _, [request_id] = _requests_of_one_run(
        account, {"requested_by": "owner", "notify_email": "withdrawn@example.org", "webhook_url": webhook.url})
    result = service.cancel(request_id)
    assert result["export_cancelled"] and result["requester_told"]
    [email] = [m for m in mailbox.messages if m["To"] == "withdrawn@example.org"]
    assert email["Subject"] == f"Your data export request for account {account} was cancelled"
    assert "href" not in html_of(email) and request_id in html_of(email)
    [call] = [c for c in webhook.calls if json.loads(c["body"])["request_id"] == request_id][-1:]
    notice = json.loads(call["body"])
    assert notice["event"] == "export.cancelled"
    assert notice["notification_id"] == ledger.notification_id(request_id, "export.cancelled")
    assert verify_signature(SECRET.encode(), call["headers"][WEBHOOK_SIGNATURE_HEADER], call["body"])
    assert not [m for m in mailbox.messages if m["To"] == PRIVACY and request_id in m["Subject"]]


def test_a_failed_command_export_tells_a_requester_who_has_a_channel(channels, seeded):
    """`service.export_now` (the command, scheduled exports): an unknown account fails the export for good."""
    from portability import service
    from portability.pipeline.export import AccountNotFound

    mailbox = channels["mailbox"]
    account = f"nobody-{uuid.uuid4().hex[:8]}"
    with pytest.raises(AccountNotFound):
        service.export_now({"account_id": account, "notify_email": "scheduled@example.org"},
                           requested_by="scheduled_exports")
    [email] = mailbox.wait_for(lambda m: m["To"] == "scheduled@example.org" and account in m["Subject"], 30)
    assert "We could not find the account this request names." in html_of(email)
    [team] = [m for m in mailbox.messages if m["To"] == PRIVACY and account in m["Subject"]]
    assert "account not found" in html_of(team)


def test_an_export_found_dead_by_the_cleanup_dag_tells_its_requester(channels):
    from portability import service
    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    mailbox = channels["mailbox"]
    account = f"dead-{uuid.uuid4().hex[:8]}"
    request = parse_request({"account_id": account}, SchemaSet()).to_dict()
    with ledger.connect() as conn:  # a `portability export` process killed mid-export: its lease ran out
        request_id, export_id, _ = ledger.start_in_process(conn, request, requested_by="cron",
                                                           notify_email="dead@example.org", lease=timedelta(0))
    report = service.watch_deadlines()
    assert report["abandoned"] >= 1
    [email] = [m for m in mailbox.messages if m["To"] == "dead@example.org"]
    assert "stopped before it finished" in html_of(email) and export_id not in email["Subject"]
    assert [m for m in mailbox.messages if m["To"] == PRIVACY and request_id in m["Subject"]]


def test_a_failed_notice_left_unsent_is_dropped_once_a_cleared_run_publishes_the_archive(channels, monkeypatch):
    from portability import service
    from portability.resources import config, ledger

    mailbox = channels["mailbox"]
    account = f"cleared-{uuid.uuid4().hex[:8]}"
    run_id, [request_id] = _requests_of_one_run(account, {"requested_by": "a", "notify_email": "cleared@example.org"})
    working = os.environ["AIRFLOW_CONN_SMTP_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps({**json.loads(working), "port": 1}))
    assert service.fail("account_export", run_id, "export_account: account not found: 'x'")["notified"] == 0
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", working)
    export_id = ledger_request(request_id)["export_id"]
    with ledger.connect() as conn:  # the engineer cleared the run and it published the archive
        ledger.finish(conn, {"export_id": str(export_id), "region": "us", "bucket": "exports-us",
                             "key": f"exports/{export_id}/t/a.zip", "bytes": 1, "sha256": "00" * 32,
                             "snapshot_at": "2026-01-01T00:00:00.000000Z", "counts": {}}, config.retention())
    service.send_pending_notices()
    assert not [m for m in mailbox.messages if m["To"] == "cleared@example.org"]
