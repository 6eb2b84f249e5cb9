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

With `executor=EDGE_EXECUTOR` the parts are started one by one instead (standalone forces the
LocalExecutor): API server (serving the Edge workers' API too), scheduler and DAG processor. Tasks
then run only on Edge workers, each started with `running_edge_worker` as a machine of its own
would run it: its own home, no metadata database, nothing shared but the API server and the stores.

    with airflow_local.running_airflow(stores, executor=airflow_local.EDGE_EXECUTOR) as airflow, \
            airflow_local.running_edge_worker(airflow, "worker-a") as worker:
        ...  # worker.kill() stops it as a lost machine would stop
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
EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
STARTUP_SECONDS = 240
LOG_TAIL_CHARS = 3000


class AirflowNotReady(RuntimeError):
    """Airflow (or an Edge worker) exited or did not become ready; the message ends with its log's tail."""


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
        """The standalone's pid (the API server's with another executor), also its process group: every process
        standalone starts runs under it."""
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
                   parallelism: int = 4, executor: str = "LocalExecutor", extra_env: dict[str, str] | None = None,
                   ) -> dict[str, str]:
    """The environment of Airflow's central parts: the stores, this checkout's DAGs, the executor, free ports."""
    venv_bin = str(Path(sys.executable).parent)
    base = f"http://127.0.0.1:{api_port}"
    return {
        **os.environ,
        **local.airflow_env(store_env, home),  # DAGs, plugins and schemas of this checkout; no examples
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),  # standalone starts its parts as `airflow …`
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base,
        # Every part signs or checks the same tokens: the API server, the scheduler, each worker and its tasks.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW_CONN_PORTABILITY_AIRFLOW": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": api_port, "schema": "http",
            "login": USERNAME, "password": password}),
        **(edge_env(base) if executor == EDGE_EXECUTOR else {}),
        **(extra_env or {}),
    }


def edge_env(base_url: str) -> dict[str, str]:
    """What the central parts and the Edge workers add for the EdgeExecutor: the workers' API on the API server,
    and a heartbeat every 2 s (a lost worker is noticed after 5 missed ones), a poll for work every second."""
    return {
        "AIRFLOW__EDGE__API_ENABLED": "True",
        "AIRFLOW__EDGE__API_URL": f"{base_url}/edge_worker/v1/rpcapi",
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "2",
        "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",
    }


@contextlib.contextmanager
def running_airflow(store_env: dict[str, str], *, database: str = "airflow_standalone", parallelism: int = 4,
                    executor: str = "LocalExecutor", extra_env: dict[str, str] | None = None,
                    dag_ids: tuple[str, ...] = ("account_export",), home: Path | None = None,
                    startup_seconds: float = STARTUP_SECONDS, keep_database: bool = False) -> Iterator[RunningAirflow]:
    """Start Airflow and wait until each of `dag_ids` is parsed and unpaused; stop it on exit.

    With the LocalExecutor, `airflow standalone`; with another executor, the central parts one by one (the
    workers are the caller's: `running_edge_worker`)."""
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
                             parallelism=parallelism, executor=executor, extra_env=extra_env)
        if not keep_database:
            stack.callback(drop_database, store_env, database)
        log_path = home / "standalone.log"
        with open(log_path, "w") as log:
            parts = [_start_standalone(env, log)] if executor == "LocalExecutor" else _start_central_parts(env, log)
        stack.callback(stop_all, parts)
        process = parts[0]
        airflow = RunningAirflow(base_url=f"http://127.0.0.1:{api_port}", port=api_port, username=USERNAME,
                                 password=password, env=env, home=home, log_path=log_path, process=process)
        wait_until_ready(airflow, dag_ids, startup_seconds)
        yield airflow


def _airflow_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("airflow")), *args]


def _start_standalone(env: dict[str, str], log) -> subprocess.Popen:
    # Its own session: on exit the whole group (scheduler, executor workers, tasks) is stopped at once.
    return subprocess.Popen(_airflow_command("standalone"), env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _start_central_parts(env: dict[str, str], log) -> list[subprocess.Popen]:
    """`airflow db migrate` (Airflow's tables and the Edge provider's), then the API server, the scheduler and the
    DAG processor, each in a session of its own as standalone is (`stop` ends each part's group). The API server
    first."""
    migrated = subprocess.run(_airflow_command("db", "migrate"), env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, check=False)
    if migrated.returncode != 0:
        raise AirflowNotReady(f"airflow db migrate exited {migrated.returncode}; see {log.name}")
    return [subprocess.Popen(_airflow_command(part), env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
            for part in ("api-server", "scheduler", "dag-processor")]


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


def stop_all(processes: list[subprocess.Popen], timeout: float = 30) -> None:
    """`stop` each, having told them all to stop first: they shut down side by side, not one after another."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        stop(process, timeout)


def wait_until_ready(airflow: RunningAirflow, dag_ids: tuple[str, ...], timeout: float) -> None:
    """Until the API answers, the scheduler is healthy and GET /api/v2/dags/{dag_id} is 200 for each, unpaused."""
    import requests

    deadline = time.monotonic() + timeout
    token = None
    waiting_for = "the API server"
    while time.monotonic() < deadline:
        if airflow.process.poll() is not None:
            raise AirflowNotReady(f"airflow exited {airflow.process.returncode}:\n{airflow.log_tail()}")
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
    raise AirflowNotReady(f"airflow was not ready in {timeout:.0f} s (waiting for {waiting_for}):\n"
                          f"{airflow.log_tail()}")


@dataclass
class EdgeWorker:
    name: str
    home: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def kill(self) -> None:
        """SIGKILL the worker and every process under it (each task's supervisor and task process, which run in
        process groups of their own), as a machine that is lost stops: no task is told, no state is reported."""
        import psutil

        try:
            tree = [psutil.Process(self.process.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(tree, timeout=10)
        self.process.wait()

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def edge_worker_env(airflow: RunningAirflow, home: Path) -> dict[str, str]:
    """A worker's environment: the central parts' (the stores' connections, the DAGs, the API server, the shared
    JWT secret), with its own home and without Airflow's metadata database, which a worker never reaches."""
    env = {key: value for key, value in airflow.env.items() if key != "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"}
    return {**env, "AIRFLOW_HOME": str(home), "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}


@contextlib.contextmanager
def running_edge_worker(airflow: RunningAirflow, name: str, *, home: Path | None = None, concurrency: int = 1,
                        startup_seconds: float = STARTUP_SECONDS) -> Iterator[EdgeWorker]:
    """Start `airflow edge worker` named `name` (the hostname its tasks report) and wait until the API server
    lists it as idle; stop it on exit (if it is still running)."""
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"edge-{name}-")))
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / "worker.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                _airflow_command("edge", "worker", "--edge-hostname", name, "--concurrency", str(concurrency)),
                env=edge_worker_env(airflow, home), cwd=home, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        worker = EdgeWorker(name=name, home=home, log_path=log_path, process=process)
        stack.callback(stop, process)
        _wait_until_listed(airflow, worker, startup_seconds)
        yield worker


def edge_workers(airflow: RunningAirflow) -> dict[str, str]:
    """Each Edge worker's state by name, as the API server lists them (its Edge Worker UI's route)."""
    import requests

    response = requests.get(f"{airflow.base_url}/edge_worker/ui/worker",
                            headers={"Authorization": f"Bearer {airflow.token()}"}, timeout=10)
    response.raise_for_status()
    return {worker["worker_name"]: worker["state"] for worker in response.json()["workers"]}


def _wait_until_listed(airflow: RunningAirflow, worker: EdgeWorker, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise AirflowNotReady(f"edge worker {worker.name} exited {worker.process.returncode}:\n"
                                  f"{worker.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if edge_workers(airflow).get(worker.name) in ("idle", "running"):
                return
        time.sleep(1)
    raise AirflowNotReady(f"edge worker {worker.name} did not register in {timeout:.0f} s:\n{worker.log_tail()}")
