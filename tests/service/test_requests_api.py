"""Exports as a service, against a running Airflow: REST triggers, idempotency, email and webhook, residency,
revocation and retention."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.helpers.airflow_runs import wait_for_run

pytestmark = pytest.mark.service
EU_ACCOUNT = "e2e-00002"  # seeded in the EU region
US_ACCOUNT = "e2e-00003"


def cli(airflow_server, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("portability")
    result = subprocess.run([str(executable), *args], capture_output=True, text=True, env=airflow_server["env"],
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"portability {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}\n"
                             f"airflow log tail:\n{airflow_server['log'].read_text()[-2000:]}")
    return result


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def refused(url: str) -> int:
    with pytest.raises(urllib.error.HTTPError) as refusal:
        download(url)
    return refusal.value.code


def html_of(message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode()
    raise AssertionError("the email has no HTML part")


@pytest.fixture(scope="module")
def requested(airflow_server, mailbox, webhook):
    """One request of the EU account through `portability request --wait`, with email and webhook."""
    key = f"ticket-{uuid.uuid4()}"
    args = ["request", "--account", EU_ACCOUNT, "--requested-by", "dpo@example.com",
            "--notify-email", "customer@example.org", "--webhook-url", webhook.url, "--idempotency-key", key,
            "--wait", "--timeout", "600", "--json"]
    result = cli(airflow_server, *args)
    return {"args": args, "key": key, "result": json.loads(result.stdout), "stderr": result.stderr}


def test_requested_export_emails_a_link_that_downloads_the_verified_archive(requested, mailbox, airflow_server,
                                                                            tmp_path):
    from portability import service

    result = requested["result"]
    assert result["state"] == "delivered" and not result["joined"] and not result["replayed"]
    [message] = mailbox.wait_for(lambda m: m["To"] == "customer@example.org" and EU_ACCOUNT in m["Subject"])
    body = html_of(message)
    url = re.search(r'href="([^"]+)"', body).group(1).replace("&amp;", "&")
    data = download(url)
    sha256 = hashlib.sha256(data).hexdigest()
    assert sha256 in body and result["sha256"] == sha256
    assert "sha256sum -c manifest-sha256.txt" in body and "The link works until" in body
    (tmp_path / "a.zip").write_bytes(data)
    assert cli(airflow_server, "verify", str(tmp_path / "a.zip")).stdout.startswith("OK")

    status = service.status(result["request_id"])
    assert status["state"] == "delivered" and status["requested_by"] == "dpo@example.com"
    assert status["bytes"] == len(data) and status["deadline_at"] > status["requested_at"]
    assert "X-Amz-Signature" not in airflow_server["log"].read_text()  # no link in Airflow's own output


def test_residency_the_eu_archive_is_only_in_the_eu_bucket(requested, store):
    export_id = requested["result"]["export_id"]
    assert list(store.keys("exports-eu", f"exports/{export_id}/"))
    assert not list(store.keys("exports-us", f"exports/{export_id}/"))
    assert not list(store.keys("exports-eu", f"staging/{export_id}/"))


def test_webhook_is_signed_and_retried(requested, webhook):
    from portability.resources import ledger
    from portability.resources.delivery import NOTIFICATION_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, verify_signature

    calls = [c for c in webhook.calls if json.loads(c["body"])["export_id"] == requested["result"]["export_id"]]
    assert len(calls) >= 2  # the receiver answered 503 first: the notice was retried
    last = calls[-1]
    notice = json.loads(last["body"])
    assert notice["event"] == "export.ready" and notice["sha256"] == requested["result"]["sha256"]
    assert verify_signature(b"whsec-test-secret", last["headers"][WEBHOOK_SIGNATURE_HEADER], last["body"])
    assert not verify_signature(b"another-secret", last["headers"][WEBHOOK_SIGNATURE_HEADER], last["body"])
    # Every attempt carries the same notification id, in the body and a header: the receiver drops repeats.
    ids = {json.loads(c["body"])["notification_id"] for c in calls} | {c["headers"][NOTIFICATION_ID_HEADER]
                                                                       for c in calls}
    assert ids == {ledger.notification_id(requested["result"]["request_id"], "export.ready")}


def test_the_email_carries_the_notifications_id(requested, mailbox):
    from portability.resources import ledger
    from portability.resources.delivery import NOTIFICATION_ID_HEADER

    expected = ledger.notification_id(requested["result"]["request_id"], "export.ready")
    [message] = mailbox.wait_for(lambda m: m[NOTIFICATION_ID_HEADER] == expected)
    assert message["Message-ID"] == f"<{expected}@example.com>"


def test_same_idempotency_key_twice_gives_one_export(requested, airflow_server, api):
    again = json.loads(cli(airflow_server, *requested["args"]).stdout)
    first = requested["result"]
    assert again["replayed"] and (again["request_id"], again["export_id"]) == (first["request_id"],
                                                                             first["export_id"])
    # The REST API itself refuses a second run with the same run id: the caller's idempotency key.
    assert api.trigger("account_export", first["dag_run_id"], {"account_id": EU_ACCOUNT}) is False


def test_a_run_triggered_with_plain_rest_calls_is_recorded_and_notifies(airflow_server, api, mailbox):
    """What the README documents for callers without the command: POST /api/v2/dags/account_export/dagRuns."""
    from portability import service
    from portability.resources.ledger import connect
    from portability.service.request import export_id_for_run

    run_id = f"crm-ticket-{uuid.uuid4()}"
    conf = {"account_id": US_ACCOUNT, "categories": ["contacts", "suppressions"], "formats": ["jsonl"],
            "notify_email": "owner@example.net", "requested_by": "support"}
    assert api.trigger("account_export", run_id, conf) is True
    assert wait_for_run(api, "account_export", run_id) == "success"
    [message] = mailbox.wait_for(lambda m: m["To"] == "owner@example.net")
    url = re.search(r'href="([^"]+)"', html_of(message)).group(1).replace("&amp;", "&")
    assert download(url)[:4] == b"PK\x03\x04"
    export_id = export_id_for_run("account_export", run_id)
    with connect() as conn:
        [row] = conn.execute("SELECT request_id FROM export_requests WHERE export_id = %s", (export_id,)).fetchall()
    status = service.status(str(row["request_id"]))
    assert (status["state"], status["bucket"], status["requested_by"]) == ("delivered", "exports-us", "support")


def test_revoked_archive_link_is_refused(requested, airflow_server):
    from portability import service

    export_id = requested["result"]["export_id"]
    link = service.link(export_id, 1)
    assert download(link.url)[:4] == b"PK\x03\x04"
    cli(airflow_server, "revoke", export_id)
    assert refused(link.url) == 404
    again = cli(airflow_server, "link", export_id, check=False)
    assert again.returncode == 2 and "revoked" in again.stderr
    assert service.status(requested["result"]["request_id"])["state"] == "expired"


def test_cleanup_dag_deletes_archives_past_retention_and_alerts_on_deadlines(airflow_server, api, store,
                                                                             mailbox, monkeypatch):
    from portability import service
    from portability.records.schemas import SchemaSet
    from portability.resources import ledger
    from portability.service.request import parse_request

    summary, request_id = service.export_now({"account_id": US_ACCOUNT, "categories": ["domains"]})
    link = service.link(summary.export_id, 1, request_id=request_id)
    assert download(link.url)[:4] == b"PK\x03\x04"
    with ledger.connect() as conn:
        conn.execute("UPDATE exports SET retain_until = now() - interval '1 minute' WHERE export_id = %s",
                     (summary.export_id,))
        # A request nobody served, 40 days old: past its one-month deadline.
        late = ledger.submit(conn, parse_request({"account_id": "late-00001"}, SchemaSet()).to_dict(),
                             requested_by="forgotten ticket")
        conn.execute("UPDATE export_requests SET requested_at = now() - interval '40 days', "
                     "deadline_at = now() - interval '9 days' WHERE request_id = %s", (late.request_id,))
        conn.commit()
    run_id = f"test-cleanup-{uuid.uuid4()}"
    assert api.trigger("export_cleanup", run_id, {}) is True
    assert wait_for_run(api, "export_cleanup", run_id) == "failed"  # red while a request is overdue
    def about_late(message) -> bool:
        return message["To"] == "privacy-team@example.com" and late.request_id in html_of(message)

    [alert] = mailbox.wait_for(about_late)
    assert "overdue" in alert["Subject"] and "late-00001" in html_of(alert)
    for name in ("AIRFLOW_CONN_SMTP_DEFAULT", "PORTABILITY_PRIVACY_EMAIL"):
        monkeypatch.setenv(name, airflow_server["env"][name])
    again = service.watch_deadlines()  # a re-run the same day: still overdue, nothing sent twice
    assert again["overdue"] >= 1 and again["alerted"] is False
    assert len([m for m in mailbox.messages if about_late(m)]) == 1
    assert refused(link.url) == 404
    assert not list(store.keys(summary.bucket, f"exports/{summary.export_id}/"))
    with ledger.connect() as conn:
        record = conn.execute("SELECT state, expiry_reason FROM exports WHERE export_id = %s",
                              (summary.export_id,)).fetchone()
    assert (record["state"], record["expiry_reason"]) == ("expired", "retention")
    rules = store.client.get_bucket_lifecycle_configuration(Bucket=summary.bucket)["Rules"]
    assert {r["Filter"]["Prefix"]: r["Expiration"]["Days"] for r in rules} == {"exports/": 31, "staging/": 2}
    assert all(r["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1} for r in rules)


def test_no_link_or_credential_in_task_logs_or_xcom(requested, airflow_server, api):
    """Presigned links, S3 and SMTP credentials, the webhook secret and planted secret columns reach neither a
    task log nor XCom."""
    import os

    import requests

    s3 = json.loads(os.environ["AIRFLOW_CONN_PORTABILITY_S3"])
    secrets = ["X-Amz-Signature", "X-Amz-Credential", s3["password"], "whsec-test-secret", airflow_server["password"],
               "PLANTEDSECRET"]  # every secret column's seeded value carries it
    logs = sorted(Path(airflow_server["env"]["AIRFLOW_HOME"], "logs").rglob("*.log"))
    task_logs = [p for p in logs if "dag_id=account_export" in str(p)]
    assert task_logs, "no task log was written"
    for path in logs:
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], path
    headers = {"Authorization": f"Bearer {api.token()}"}
    run_id = requested["result"]["dag_run_id"]
    entries = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances/~/"
                           "xcomEntries", headers=headers, params={"limit": 500}, timeout=30).json()["xcom_entries"]
    assert entries
    for entry in entries:
        value = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances/"
                             f"{entry['task_id']}/xcomEntries/{entry['key']}", headers=headers,
                             params={"map_index": entry.get("map_index", -1)}, timeout=30).json()
        text = json.dumps(value)
        assert not [s for s in secrets if s in text], entry["task_id"]
