"""Scheduled bulk exports through a running Airflow: 200 accounts, one broken, batches under a pool."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.airflow_runs import wait_for_run

pytestmark = pytest.mark.service
ACCOUNTS = 200
BROKEN = "sched-00137"


@pytest.fixture(scope="module")
def scheduled_accounts(airflow_server, source_dsn):
    import psycopg

    from portability import service
    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(source_dsn) as conn:
        accounts = seed(conn, SeedOptions(accounts=ACCOUNTS, contacts=3, lists=1, templates=1, campaigns=1,
                                          suppressions=4, domains=1, prefix="sched", large_html_bytes=0))
        # Broken data in one account: an invalid email, and its schedule asks to fail on invalid records.
        conn.execute("UPDATE contacts SET email = 'not-an-address' WHERE id = "
                     "(SELECT min(id) FROM contacts WHERE account_id = %s)", (BROKEN,))
        conn.commit()
    for account in accounts:
        service.schedule({"account_id": account, "categories": ["account", "contacts", "suppressions"],
                          "formats": ["jsonl"], "on_invalid": "fail"}, 60)
    return accounts


def test_scheduled_run_exports_199_accounts_and_reports_the_broken_one(scheduled_accounts, airflow_server, api):
    import requests

    from portability.resources.ledger import connect

    headers = {"Authorization": f"Bearer {api.token()}"}
    # The pool the README's set-up creates: at most 2 exports read the source at once.
    pool = requests.post(f"{api.base_url}/api/v2/pools", headers=headers, timeout=30,
                         json={"name": "portability_source", "slots": 2, "include_deferred": False})
    assert pool.status_code in (200, 201, 409), pool.text

    run_id = f"test-scheduled-{uuid.uuid4()}"
    assert api.trigger("scheduled_exports", run_id, {}) is True
    assert wait_for_run(api, "scheduled_exports", run_id, timeout=1500) == "failed"  # red: one account failed

    summary = requests.get(f"{api.base_url}/api/v2/dags/scheduled_exports/dagRuns/{run_id}/taskInstances/"
                           "summarize/xcomEntries/return_value", headers=headers, timeout=30).json()["value"]
    assert summary["succeeded"] == ACCOUNTS - 1
    assert [f["account_id"] for f in summary["failed"]] == [BROKEN]
    assert "InvalidRecords" in summary["failed"][0]["error"]
    tasks = requests.get(f"{api.base_url}/api/v2/dags/scheduled_exports/dagRuns/{run_id}/taskInstances",
                         headers=headers, params={"limit": 100}, timeout=30).json()["task_instances"]
    batches = [t for t in tasks if t["task_id"] == "export_batch"]
    assert len(batches) == ACCOUNTS // 25 and all(t["pool"] == "portability_source" for t in batches)

    with connect() as conn:
        rows = {r["account_id"]: r for r in conn.execute(
            "SELECT s.account_id, s.next_due_at > now() AS done, s.last_error, e.state FROM export_schedules s "
            "LEFT JOIN exports e ON e.export_id = s.last_export_id WHERE s.account_id LIKE 'sched-%'").fetchall()}
    assert len(rows) == ACCOUNTS
    assert all(r["done"] and r["state"] == "ready" for a, r in rows.items() if a != BROKEN)
    assert not rows[BROKEN]["done"] and "fails its schema" in rows[BROKEN]["last_error"]
