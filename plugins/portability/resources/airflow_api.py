"""Triggering and reading DAG runs through Airflow's REST API v2, as any outside caller would.

The calls (documented in the README):

    POST /auth/token                          {"username", "password"} -> {"access_token"}
    POST /api/v2/dags/{dag_id}/dagRuns        {"dag_run_id", "logical_date": null, "conf", "note"}
                                              with "Authorization: Bearer <token>"; 409 if the run id exists
    GET  /api/v2/dags/{dag_id}/dagRuns/{run_id}
    PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}  {"state": "failed"} stops a run; {"note": ...} names it

Where Airflow is and who calls it is the connection `portability_airflow` (type http: host,
port, schema http or https, login and password of an Airflow user allowed to trigger DAGs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from portability.resources import config

AIRFLOW_CONN_ID = "portability_airflow"
TIMEOUT_SECONDS = 30
MAX_NOTE = 1000  # Airflow's limit on a run's note


class AirflowApiError(RuntimeError):
    """Airflow refused or failed a call; the message says which and what to check."""


@dataclass
class AirflowApi:
    base_url: str
    username: str | None
    password: str | None = field(repr=False)
    _token: str | None = field(default=None, repr=False)

    @classmethod
    def from_connection(cls) -> AirflowApi:
        conn = config.connection(AIRFLOW_CONN_ID)
        scheme = conn.schema or "http"
        if not conn.host:
            raise config.ConfigurationError(f"connection {AIRFLOW_CONN_ID!r} has no host: set the API server's "
                                            "host and port (e.g. http://airflow.internal:8080)")
        host = conn.host.split("://", 1)[-1].rstrip("/")
        return cls(f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}", conn.login, conn.password)

    def _request(self, method: str, path: str, **kwargs):
        import requests

        headers = {"Authorization": f"Bearer {self.token()}"} if not path.startswith("/auth/") else {}
        try:
            return requests.request(method, self.base_url + path, headers=headers, timeout=TIMEOUT_SECONDS, **kwargs)
        except requests.RequestException as exc:
            raise AirflowApiError(f"Airflow at {self.base_url} did not answer ({type(exc).__name__}): is the "
                                  f"API server running, and is connection {AIRFLOW_CONN_ID!r} right?") from None

    def token(self) -> str:
        if self._token is None:
            response = self._request("POST", "/auth/token", json={"username": self.username,
                                                                  "password": self.password})
            if response.status_code not in (200, 201):
                raise AirflowApiError(f"Airflow refused the login of {self.username!r} (HTTP "
                                      f"{response.status_code}): check the login and password of connection "
                                      f"{AIRFLOW_CONN_ID!r}")
            self._token = response.json()["access_token"]
        return self._token

    def trigger(self, dag_id: str, dag_run_id: str, conf: dict, note: str | None = None) -> bool:
        """Start a run with this id (and `note`, shown in the UI's run list and details); False if a run with this
        id already exists (the trigger is idempotent)."""
        body = {"dag_run_id": dag_run_id, "logical_date": None, "conf": conf}
        if note:
            body["note"] = note[:MAX_NOTE]
        response = self._request("POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", json=body)
        if response.status_code == 409:
            return False
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"triggering {dag_id} failed (HTTP {response.status_code}): {_detail(response)}")
        return True

    def stop_run(self, dag_id: str, dag_run_id: str) -> bool:
        """Mark a run failed, so its remaining tasks do not start; False if there is no such run."""
        response = self._request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                          f"{quote(dag_run_id, safe='')}", json={"state": "failed"})
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise AirflowApiError(f"stopping run {dag_run_id} of {dag_id} failed (HTTP {response.status_code}): "
                                  f"{_detail(response)}")
        return True

    def set_note(self, dag_id: str, dag_run_id: str, note: str) -> None:
        """Write a run's note (what the UI shows beside the run id); needs a user allowed to edit DAG runs."""
        response = self._request("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                          f"{quote(dag_run_id, safe='')}", params={"update_mask": "note"},
                                 json={"note": note[:MAX_NOTE]})
        if response.status_code != 200:
            raise AirflowApiError(f"writing the note of run {dag_run_id} of {dag_id} failed (HTTP "
                                  f"{response.status_code}): {_detail(response)}")

    def run_note(self, dag_id: str, dag_run_id: str) -> str | None:
        response = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                        f"{quote(dag_run_id, safe='')}")
        if response.status_code != 200:
            raise AirflowApiError(f"reading run {dag_run_id} of {dag_id} failed (HTTP {response.status_code}): "
                                  f"{_detail(response)}")
        return response.json().get("note")

    def run_state_or_none(self, dag_id: str, dag_run_id: str) -> str | None:
        """A run's state, or None if there is no such run."""
        response = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                        f"{quote(dag_run_id, safe='')}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AirflowApiError(f"reading run {dag_run_id} of {dag_id} failed (HTTP {response.status_code}): "
                                  f"{_detail(response)}")
        return response.json()["state"]

    def run_state(self, dag_id: str, dag_run_id: str) -> str:
        response = self._request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/"
                                        f"{quote(dag_run_id, safe='')}")
        if response.status_code != 200:
            raise AirflowApiError(f"reading run {dag_run_id} of {dag_id} failed (HTTP {response.status_code}): "
                                  f"{_detail(response)}")
        return response.json()["state"]


def dag_run_state_in_task(dag_id: str) -> Callable[[str], str | None]:
    """Inside a task: a DAG run's state (None if there is no such run), asked through the Task SDK."""
    def state(run_id: str) -> str | None:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        if not RuntimeTaskInstance.get_dr_count(dag_id=dag_id, run_ids=[run_id]):
            return None
        return str(RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id))

    return state


def name_run(run, note: str, *, or_add: str | None = None) -> None:
    """Inside a task: write the note of the task's own DAG run through the REST API, as the user of connection
    `portability_airflow`. Airflow 3.3's Task SDK can read a run's note but not write it (apache/airflow#64890), so
    this is the only way a run triggered from the UI or the REST API can show its account and requester in the run
    list. A note already there (written by `portability request` at the trigger, or by an engineer) is kept, with
    `or_add` appended. Best effort: without the connection, or if Airflow refuses, the run goes on and the log
    says why."""
    import logging

    try:
        api = AirflowApi.from_connection()
        existing = api.run_note(run.dag_id, run.run_id)
        if existing:
            if or_add and or_add not in existing:
                api.set_note(run.dag_id, run.run_id, f"{existing} · {or_add}")
            return
        api.set_note(run.dag_id, run.run_id, note)
    except (config.ConfigurationError, AirflowApiError) as exc:
        logging.getLogger(__name__).warning("the run's note was not written (%s); the account and requester are in "
                                            "the request ledger", exc)


def _detail(response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    return str(detail)[:300]
