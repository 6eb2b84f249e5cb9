"""A real Airflow on this machine: `airflow standalone` (API server, scheduler, DAG processor, triggerer,
LocalExecutor) against the embedded stores, on free local ports, for the benchmark and the service tests.

    from portability_dev import airflow_local, local

    with airflow_local.running_airflow(local.start_stores()) as airflow:
        token = airflow.token()
        ...  # airflow.base_url, airflow.username, airflow.password, airflow.env, airflow.pid

Its metadata database is a fresh database in the embedded PostgreSQL (dropped on exit), its home a
temporary folder, the DAGs and plugins this checkout's. A user `portability` (admin) logs in with a
generated password, and `AIRFLOW_CONN_PORTABILITY_AIRFLOW` in `airflow.env` points `portability
request` at it. On exit the whole process group is stopped; the stores keep running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from portability_dev import local

USERNAME = "portability"
STARTUP_SECONDS = 240
LOG_TAIL_CHARS = 3000


class AirflowNotReady(RuntimeError):
    """`airflow standalone` exited or did not become ready; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningAirflow:
    base_url: str
    port: int
    username: str
    password: str = field(repr=False)
    env: dict[str, str] = field(repr=False)
    home: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def pid(self) -> int:
        """The standalone's pid, also its process group: every Airflow process runs under it."""
        return self.process.pid

    def token(self) -> str:
        """A fresh JWT for the REST API (POST /auth/token)."""
        import requests

        response = requests.post(f"{self.base_url}/auth/token",
                                 json={"username": self.username, "password": self.password}, timeout=10)
        response.raise_for_status()
        return response.json()["access_token"]

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def metadata_url(store_env: dict[str, str], database: str) -> str:
    """The SQLAlchemy URL of `database` on the server of the stores' Airflow metadata database."""
    from sqlalchemy.engine import make_url

    base = store_env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    return make_url(base).set(database=database).render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def recreate_database(store_env: dict[str, str], database: str) -> str:
    """Drop (if any) and create `database` next to the stores' metadata database; returns its SQLAlchemy URL."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(_libpq(metadata_url(store_env, "postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return metadata_url(store_env, database)


def drop_database(store_env: dict[str, str], database: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(_libpq(metadata_url(store_env, "postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def standalone_env(store_env: dict[str, str], home: Path, sql_alchemy_conn: str, password: str, api_port: int, *,
                   parallelism: int = 4, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `airflow standalone`: the stores, this checkout's DAGs, LocalExecutor, free ports."""
    venv_bin = str(Path(sys.executable).parent)
    base = f"http://127.0.0.1:{api_port}"
    return {
        **os.environ,
        **local.airflow_env(store_env, home),  # DAGs, plugins and schemas of this checkout; no examples
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),  # standalone starts its parts as `airflow …`
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_PORTABILITY_AIRFLOW": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": api_port, "schema": "http",
            "login": USERNAME, "password": password}),
        **(extra_env or {}),
    }


@contextlib.contextmanager
def running_airflow(store_env: dict[str, str], *, database: str = "airflow_standalone", parallelism: int = 4,
                    extra_env: dict[str, str] | None = None, dag_ids: tuple[str, ...] = ("account_export",),
                    home: Path | None = None, startup_seconds: float = STARTUP_SECONDS,
                    keep_database: bool = False) -> Iterator[RunningAirflow]:
    """Start `airflow standalone` and wait until each of `dag_ids` is parsed and unpaused; stop it on exit."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airflow-standalone-")))
        home.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(16)
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({USERNAME: password}))
        passwords.chmod(0o600)
        api_port = free_port()
        env = standalone_env(store_env, home, recreate_database(store_env, database), password, api_port,
                             parallelism=parallelism, extra_env=extra_env)
        if not keep_database:
            stack.callback(drop_database, store_env, database)
        log_path = home / "standalone.log"
        with open(log_path, "w") as log:
            # Its own session: on exit the whole group (scheduler, executor workers, tasks) is stopped at once.
            process = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"], env=env,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        stack.callback(stop, process)
        airflow = RunningAirflow(base_url=f"http://127.0.0.1:{api_port}", port=api_port, username=USERNAME,
                                 password=password, env=env, home=home, log_path=log_path, process=process)
        wait_until_ready(airflow, dag_ids, startup_seconds)
        yield airflow


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the standalone's process group, SIGKILL after `timeout`, then to whatever is left in it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Workers the executor started may outlive the parent: stop whatever still runs in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_until_ready(airflow: RunningAirflow, dag_ids: tuple[str, ...], timeout: float) -> None:
    """Until the API answers, the scheduler is healthy and GET /api/v2/dags/{dag_id} is 200 for each, unpaused."""
    import requests

    deadline = time.monotonic() + timeout
    token = None
    waiting_for = "the API server"
    while time.monotonic() < deadline:
        if airflow.process.poll() is not None:
            raise AirflowNotReady(f"airflow standalone exited {airflow.process.returncode}:\n{airflow.log_tail()}")
        try:
            token = token or airflow.token()
            headers = {"Authorization": f"Bearer {token}"}
            health = requests.get(f"{airflow.base_url}/api/v2/monitor/health", timeout=5).json()
            if health.get("scheduler", {}).get("status") != "healthy":
                waiting_for = "a healthy scheduler"
                raise LookupError
            for dag_id in dag_ids:
                response = requests.get(f"{airflow.base_url}/api/v2/dags/{dag_id}", headers=headers, timeout=5)
                if response.status_code == 401:
                    token = None
                if response.status_code != 200:
                    waiting_for = f"DAG {dag_id} to be parsed"
                    raise LookupError
                if response.json().get("is_paused"):
                    requests.patch(f"{airflow.base_url}/api/v2/dags/{dag_id}", json={"is_paused": False},
                                   headers=headers, timeout=5).raise_for_status()
            return
        except (requests.RequestException, LookupError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise AirflowNotReady(f"airflow standalone was not ready in {timeout:.0f} s (waiting for {waiting_for}):\n"
                          f"{airflow.log_tail()}")
