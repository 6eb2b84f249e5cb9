"""Every request is in the ledger, including those refused before any read: `validate_request` (through Airflow's
REST API), `portability request` and `portability export` record a refusal with its reason, once however often it
is retried or replayed, and never with a data subject's address."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.helpers.airflow_runs import wait_for_run
from tests.helpers.commands import portability_cli

ACCOUNT = "e2e-00001"
BACKWARDS = {"since": "2026-06-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}  # passes the Params, not the request
SUBJECT = "refused.subject@example.org"


def refused_rows(**where) -> list[dict]:
    from portability.resources import ledger

    (column, value), = where.items()
    with ledger.connect() as conn:
        return conn.execute(f"SELECT * FROM export_requests WHERE state = 'refused' AND {column} = %s",
                            (value,)).fetchall()


def no_subject_anywhere(rows: list[dict]) -> None:
    assert rows and not [row for row in rows if SUBJECT in json.dumps(row, default=str)]


@pytest.mark.e2e
def test_a_dag_runs_refusal_is_recorded_once_with_its_reason_account_and_run(store_env):
    from portability import service
    from portability.service.request import RequestError

    run_id = f"refused-{uuid.uuid4()}"
    conf = {"account_id": ACCOUNT, "subject_email": SUBJECT, "requested_by": "support", **BACKWARDS}
    for _ in range(2):  # the task cleared and run again: still one refused request
        with pytest.raises(RequestError) as refusal:
            service.begin(conf, "account_export", run_id, triggering_user="admin")
    [row] = refused_rows(dag_run_id=run_id)
    assert row["refused_reason"] == str(refusal.value) and "'until'" in row["refused_reason"]
    assert (row["account_id"], row["requested_by"], row["export_id"]) == (ACCOUNT, "support", None)
    no_subject_anywhere([row])
    [listed] = [r for r in service.request_list(state="refused") if r["request_id"] == str(row["request_id"])]
    assert listed["refused_reason"] == row["refused_reason"] and not listed["overdue"] and not listed["due_soon"]


@pytest.mark.e2e
def test_a_malformed_account_id_is_not_recorded_and_a_hostile_requester_is_not_either(store_env):
    from portability import service
    from portability.service.request import RequestError

    run_id = f"refused-{uuid.uuid4()}"
    with pytest.raises(RequestError):
        service.begin({"account_id": "../../etc/passwd", "requested_by": "x\u001b[31m"}, "account_export", run_id,
                      triggering_user="admin")
    [row] = refused_rows(dag_run_id=run_id)
    assert (row["account_id"], row["requested_by"]) == (None, "Airflow user admin")


@pytest.mark.e2e
def test_a_submitted_refusal_is_recorded_once_per_idempotency_key(store_env):
    from portability import service
    from portability.service.request import RequestError

    key = f"ticket-{uuid.uuid4()}"
    conf = {"account_id": ACCOUNT, "subject_email": SUBJECT, "requested_by": "dpo@example.com", **BACKWARDS}
    for _ in range(2):  # the caller retries with the same key
        with pytest.raises(RequestError):
            service.submit(conf, idempotency_key=key)
    [row] = refused_rows(idempotency_key=key)
    assert (row["account_id"], row["requested_by"]) == (ACCOUNT, "dpo@example.com")
    no_subject_anywhere([row])


@pytest.mark.e2e
def test_the_commands_refuse_with_one_message_and_record_it(store_env, seeded):
    from portability import service

    account = "e2e-00002"
    before = {r["request_id"] for r in service.request_list(state="refused", account_id=account)}
    dummy_airflow = {"AIRFLOW_CONN_PORTABILITY_AIRFLOW": json.dumps({"conn_type": "http", "host": "127.0.0.1",
                                                                     "port": 9})}
    for command in ("export", "request"):
        result = portability_cli(command, "--account", account, "--subject", SUBJECT, "--since", BACKWARDS["since"],
                                 "--until", BACKWARDS["until"], env=dummy_airflow, check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"portability {command}: invalid export request: field 'until' ({BACKWARDS['until'].replace('Z', '')}"
            f".000000Z) must be after 'since' ({BACKWARDS['since'].replace('Z', '')}.000000Z)"]
        assert SUBJECT not in result.stderr
    rows = [r for r in service.request_list(state="refused", account_id=account) if r["request_id"] not in before]
    assert sorted(r["requested_by"] for r in rows) == ["portability export", "portability request"]
    no_subject_anywhere(rows)


@pytest.mark.service
def test_a_rest_trigger_refused_by_validate_request_is_recorded_and_named_in_the_run_list(airflow_server, api):
    from portability.service.request import export_id_for_run

    run_id = f"backwards-{uuid.uuid4()}"
    conf = {"account_id": ACCOUNT, "subject_email": SUBJECT, "requested_by": "crm", **BACKWARDS}
    assert api.trigger("account_export", run_id, conf) is True  # Airflow's Params accept it
    assert wait_for_run(api, "account_export", run_id) == "failed"
    headers = {"Authorization": f"Bearer {api.token()}"}
    tasks = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances",
                         headers=headers, params={"limit": 100}, timeout=30).json()["task_instances"]
    [validate] = [t for t in tasks if t["task_id"] == "validate_request"]
    assert (validate["state"], validate["try_number"]) == ("failed", 1)  # refused without retries
    [row] = refused_rows(dag_run_id=run_id)
    assert "'until'" in row["refused_reason"] and (row["account_id"], row["requested_by"]) == (ACCOUNT, "crm")
    no_subject_anywhere([row])
    assert not refused_rows(export_id=export_id_for_run("account_export", run_id))
    run = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}", headers=headers,
                       timeout=30).json()
    assert run["note"].startswith(f"account {ACCOUNT} · requested by crm · refused: invalid export request: "
                                  "field 'until'")
    assert SUBJECT not in run["note"]
