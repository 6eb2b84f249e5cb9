"""Hostile and malformed requests sent the way an attacker would, through Airflow's REST API: each is
refused with a message naming the field, and nothing is read from the source."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.service
ACCOUNT = "e2e-00001"


def nested(depth: int):
    value: object = "contacts"
    for _ in range(depth):
        value = [value]
    return value


# (conf, the field the refusal must name)
HOSTILE = [
    ({"account_id": "../../../etc/passwd"}, "account_id"),
    ({"account_id": "e2e-00001/../e2e-00002"}, "account_id"),
    ({"account_id": "..%2f..%2fexports"}, "account_id"),
    ({"account_id": "e2e-00001'; DROP TABLE contacts; --"}, "account_id"),
    ({"account_id": "e2e-00001' OR '1'='1"}, "account_id"),
    ({"account_id": "e2e-00001\r\nX-Injected: 1"}, "account_id"),
    ({"account_id": "e2e-０００01"}, "account_id"),  # full-width digits
    ({"account_id": 12345}, "account_id"),
    ({"account_id": ["e2e-00001"]}, "account_id"),
    ({"account_id": None}, "account_id"),
    ({"account_id": {"$ne": ""}}, "account_id"),
    ({"account_id": "a" * 1_000_000}, "account_id"),  # a megabyte
    ({}, "account_id"),
    ({"account_id": ACCOUNT, "categories": ["contacts", "../secrets"]}, "categories"),
    ({"account_id": ACCOUNT, "categories": ["password_hashes"]}, "categories"),  # a secret column, no category
    ({"account_id": ACCOUNT, "categories": "contacts"}, "categories"),
    ({"account_id": ACCOUNT, "categories": []}, "categories"),
    ({"account_id": ACCOUNT, "categories": nested(9)}, "categories"),
    ({"account_id": ACCOUNT, "formats": ["csv", "exe"]}, "formats"),
    ({"account_id": ACCOUNT, "formats": ["csv", "csv"]}, "formats"),
    ({"account_id": ACCOUNT, "expires_in_hours": 10**40}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "expires_in_hours": "72"}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "expires_in_hours": 72.5}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "expires_in_hours": True}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "expires_in_hours": 0}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "expires_in_hours": 169}, "expires_in_hours"),
    ({"account_id": ACCOUNT, "on_invalid": "ignore"}, "on_invalid"),
    ({"account_id": ACCOUNT, "bucket": "exports-eu"}, "bucket"),
    ({"account_id": ACCOUNT, "export_id": "../../staging"}, "export_id"),
    ({"account_id": ACCOUNT, "key": "exports/../../../other.zip"}, "key"),
    ({"account_id": ACCOUNT, "notify_email": "a@b.example\r\nBcc: everyone@victims.example"}, "notify_email"),
    ({"account_id": ACCOUNT, "notify_email": "a@b.example, c@d.example"}, "notify_email"),
    ({"account_id": ACCOUNT, "webhook_url": "file:///etc/passwd"}, "webhook_url"),
    ({"account_id": ACCOUNT, "webhook_url": "http://x.example/\r\nHost: evil"}, "webhook_url"),
    ({"account_id": ACCOUNT, "requested_by": "x" * 5000}, "requested_by"),
    ({"account_id": ACCOUNT, "requested_by": "support\u001b[31m"}, "requested_by"),
    ({"account_id": ACCOUNT, **{f"field_{n}": n for n in range(5000)}}, "field_0"),  # very wide
]


def _log_of(airflow_server, run_id: str, task_id: str) -> str:
    logs = Path(airflow_server["env"]["AIRFLOW_HOME"], "logs", "dag_id=account_export", f"run_id={run_id}",
                f"task_id={task_id}")
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.rglob("*.log")))


def _task_states(api, headers, run_id: str) -> dict:
    response = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances",
                            headers=headers, params={"limit": 100}, timeout=30)
    response.raise_for_status()
    return {t["task_id"]: t["state"] for t in response.json()["task_instances"]}


def test_hostile_confs_are_refused_naming_the_field_before_any_source_read(airflow_server, api, store, tally):
    from portability.service.request import export_id_for_run

    headers = {"Authorization": f"Bearer {api.token()}"}
    url = f"{api.base_url}/api/v2/dags/account_export/dagRuns"
    created, refused_at_trigger = {}, 0
    for conf, field in HOSTILE:
        run_id = f"hostile-{uuid.uuid4()}"
        response = requests.post(url, headers=headers, timeout=60,
                                 json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        if response.status_code == 200:
            created[run_id] = field
        else:  # Airflow checked the Params itself and created no run
            assert response.status_code in (400, 422), (field, response.status_code, response.text[:300])
            assert field in response.text, (field, response.text[:300])
            refused_at_trigger += 1
    tally["hostile inputs tried"] += len(HOSTILE)

    deadline, pending = time.monotonic() + 600, dict(created)
    while pending and time.monotonic() < deadline:
        for run_id in list(pending):
            if api.run_state("account_export", run_id) in ("success", "failed"):
                pending.pop(run_id)
        time.sleep(3)
    assert not pending, f"{len(pending)} hostile runs did not finish"
    for run_id, field in created.items():
        assert api.run_state("account_export", run_id) == "failed", field
        tasks = _task_states(api, headers, run_id)
        assert tasks["validate_request"] == "failed", (field, tasks["validate_request"])
        assert tasks["cleanup"] == "success", (field, tasks["cleanup"])  # a refusal is no cleanup failure
        # Nothing downstream ran.
        ran = {task: state for task, state in tasks.items()
               if task not in ("validate_request", "cleanup") and state not in ("upstream_failed", "skipped", None)}
        assert not ran, (field, ran)
        log = _log_of(airflow_server, run_id, "validate_request")
        assert field in log, (field, log[-500:])
        export_id = export_id_for_run("account_export", run_id)
        for bucket in ("exports-us", "exports-eu"):
            for prefix in ("exports", "staging"):
                assert not list(store.keys(bucket, f"{prefix}/{export_id}/")), (field, bucket)
    print(f"{refused_at_trigger} refused by Airflow's Params at the trigger, {len(created)} by validate_request")


def test_a_deeply_nested_conf_creates_no_run(airflow_server, api, tally):
    """Airflow checks the Params before our task and, 500 levels deep, cannot print its own error (its API
    answers 500); whatever it answers, no run may start. The same conf from the command is refused by name."""
    headers = {"Authorization": f"Bearer {api.token()}"}
    run_id = f"nested-{uuid.uuid4()}"
    response = requests.post(f"{api.base_url}/api/v2/dags/account_export/dagRuns", headers=headers, timeout=60,
                             json={"dag_run_id": run_id, "conf": {"account_id": ACCOUNT, "categories": nested(500)}})
    assert response.status_code >= 400
    assert requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}", headers=headers,
                        timeout=30).status_code == 404
    tally["hostile inputs tried"] += 1


@pytest.mark.parametrize(("body", "answers"), [
    (b'{"dag_run_id": "malformed-1", "conf": {"account_id": "e2e-00001"', (422,)),      # cut short
    (b'{"dag_run_id": "malformed-3", "conf": ["e2e-00001"]}', (422,)),                   # conf not an object
    (b'{"dag_run_id": "malformed-4", "conf": "account_id=e2e-00001"}', (422,)),
    (b"\xff\xfe{}", (422,)),                                                             # not UTF-8
    # Not JSON; FastAPI reads it, then cannot print NaN back in its 422 and answers 500. No run either way.
    (b'{"dag_run_id": "malformed-2", "conf": {"account_id": NaN}}', (422, 500)),
])
def test_malformed_json_is_refused_and_creates_no_run(airflow_server, api, body, answers, tally):
    headers = {"Authorization": f"Bearer {api.token()}", "Content-Type": "application/json"}
    response = requests.post(f"{api.base_url}/api/v2/dags/account_export/dagRuns", headers=headers, data=body,
                             timeout=60)
    assert response.status_code in answers, response.text[:300]
    if response.status_code == 422:
        detail = json.dumps(response.json())
        assert "body" in detail or "conf" in detail, detail[:300]
    tally["hostile inputs tried"] += 1
    runs = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns", headers=headers,
                        params={"limit": 1000}, timeout=30).json()["dag_runs"]
    assert not [r for r in runs if r["dag_run_id"].startswith("malformed-")]
