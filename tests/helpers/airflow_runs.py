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
