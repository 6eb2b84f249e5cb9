"""Waiting on DAG runs of a running Airflow (the service suite's `api` fixture)."""

from __future__ import annotations

import time


def wait_for_run(api, dag_id: str, run_id: str, timeout: float = 600) -> str:
    """The run's final state, "success" or "failed"; fails the test if it has none within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.run_state(dag_id, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"run {run_id} of {dag_id} did not finish in {timeout} s")


def xcom_values(api, dag_id: str, run_id: str) -> list[tuple[str, str, str]]:
    """(task id, key, value as JSON text) of every XCom entry of a run, through Airflow's REST API as the UI shows
    them (mapped tasks' entries each)."""
    import json

    import requests

    headers = {"Authorization": f"Bearer {api.token()}"}
    runs = f"{api.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    entries = requests.get(f"{runs}/~/xcomEntries", headers=headers, params={"limit": 500},
                           timeout=30).json()["xcom_entries"]
    values = []
    for entry in entries:
        value = requests.get(f"{runs}/{entry['task_id']}/xcomEntries/{entry['key']}", headers=headers,
                             params={"map_index": entry.get("map_index", -1)}, timeout=30).json()
        values.append((entry["task_id"], entry["key"], json.dumps(value, ensure_ascii=False)))
    return values
