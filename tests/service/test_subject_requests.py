"""One data subject's request through a running Airflow (SPEC §3, §5): `portability request --subject` triggers
account_export through the REST API; every task reads the address back from the ledger, so it is in no XCom
value and no task log, and the emailed link downloads an archive of exactly her rows."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.airflow_runs import xcom_values
from tests.helpers.commands import portability_cli
from tests.helpers.subjects import (
    check_subject_archive,
    expected_keys,
    find_address,
    object_keys,
    plain_account,
    plant,
    same_address,
)

pytestmark = pytest.mark.service
ACCOUNT = "subjsvc-00001"
SUBJECT = "Svc.Subject+Airflow@Example.ORG"
STORED_AS = ("svc.subject+airflow@example.org", "SVC.SUBJECT+AIRFLOW@EXAMPLE.ORG")
NEIGHBOURS = ("xsvc.subject+airflow@example.org", "svc.subject+airflow@example.org.evil")


@pytest.fixture(scope="module")
def planted(store_env):
    import psycopg

    from portability.resources import config

    with psycopg.connect(config.source_settings().conninfo) as db:
        from portability_dev.seed import create_schema

        create_schema(db)
        made = plain_account(db, ACCOUNT, "eu")
        for address in STORED_AS + NEIGHBOURS:
            plant(db, ACCOUNT, address, lists=made["lists"], campaign=made["campaign"])
        db.commit()
        return expected_keys(db, ACCOUNT, same_address(SUBJECT))


@pytest.fixture(scope="module")
def requested(planted, airflow_server):
    result = portability_cli("request", "--account", ACCOUNT, "--subject", SUBJECT, "--notify-email",
                             "dpo@example.org", "--wait", "--timeout", "600", "--json", env=airflow_server["env"],
                             check=False)
    assert result.returncode == 0, (result.stderr[-3000:], airflow_server["log"].read_text()[-2000:])
    return {"result": json.loads(result.stdout), "output": result.stdout + result.stderr}


def test_the_emailed_link_downloads_exactly_her_rows(planted, requested, mailbox, tmp_path):
    from tests.helpers.archive_checks import unpack

    result = requested["result"]
    assert result["state"] == "delivered"
    [message] = mailbox.wait_for(lambda m: m["To"] == "dpo@example.org" and ACCOUNT in m["Subject"])
    html = next(part.get_payload(decode=True).decode() for part in message.walk()
                if part.get_content_type() == "text/html")
    url = re.search(r'href="([^"]+)"', html).group(1).replace("&amp;", "&")
    with urllib.request.urlopen(url, timeout=60) as response:
        (tmp_path / "a.zip").write_bytes(response.read())
    check_subject_archive(unpack(tmp_path / "a.zip", tmp_path), ACCOUNT, SUBJECT, planted)
    verified = portability_cli("verify", str(tmp_path / "a.zip"), check=False)
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stderr[-2000:]


def test_the_address_is_in_no_xcom_task_log_object_key_or_command_output(requested, airflow_server, api, store):
    values = xcom_values(api, "account_export", requested["result"]["dag_run_id"])
    assert any(task == "validate_request" for task, _, _ in values), values
    for task, key, value in values:
        assert find_address(value, SUBJECT) is None, (task, key, find_address(value, SUBJECT))
    task_logs = [p for p in Path(airflow_server["env"]["AIRFLOW_HOME"], "logs").rglob("*.log")
                 if "dag_id=account_export" in str(p)]
    assert task_logs, "no task log was written"
    for path in Path(airflow_server["env"]["AIRFLOW_HOME"]).rglob("*.log"):
        assert find_address(path.read_text(errors="replace"), SUBJECT) is None, path
    assert find_address(airflow_server["log"].read_text(errors="replace"), SUBJECT) is None
    assert find_address(requested["output"], SUBJECT) is None
    for key in object_keys(store):
        assert find_address(key, SUBJECT) is None, key
