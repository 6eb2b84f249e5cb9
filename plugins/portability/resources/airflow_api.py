"""Triggering and reading DAG runs through Airflow's REST API v2, as any outside caller would.

The calls (documented in the README):

    POST /auth/token                          {"username", "password"} -> {"access_token"}
    POST /api/v2/dags/{dag_id}/dagRuns        {"dag_run_id", "logical_date": null, "conf"}
                                              with "Authorization: Bearer <token>"; 409 if the run id exists
    GET  /api/v2/dags/{dag_id}/dagRuns/{run_id}

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

    def trigger(self, dag_id: str, dag_run_id: str, conf: dict) -> bool:
        """Start a run with this id; False if a run with this id already exists (the trigger is idempotent)."""
        response = self._request("POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                                 json={"dag_run_id": dag_run_id, "logical_date": None, "conf": conf})
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


def _detail(response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    return str(detail)[:300]
