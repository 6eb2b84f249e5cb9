"""account_export spread over two workers that share nothing but the API server, the databases and S3.

Airflow's EdgeExecutor sends each task to `airflow edge worker` processes, each with its own home and no
access to Airflow's metadata database, as two machines would run them (`portability_dev.airflow_local`).
A task reports its worker's name as its hostname. Shards of one account spread over both; a worker
killed mid-shard has its shard retried on the other; the archive is byte for byte the one a single
worker makes.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.helpers.airflow_runs import wait_for_run
from tests.helpers.exports import data_entries

pytestmark = pytest.mark.reliability

CONF = {"account_id": "e2e-00003", "categories": ["contacts"], "formats": ["csv", "jsonl", "parquet"]}
CENTRAL = {
    # The account's 300 contacts in 4 shards of 75 rows, each of 3 pieces.
    "PORTABILITY_SHARD_ROWS": "75",
    "PORTABILITY_PIECE_ROWS": "25",
    # A task whose worker vanished stops heartbeating: it is failed after 10 s (not 5 minutes) and retried
    # at most 5 s later (not after the DAG's back-off of 15 to 60 s).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__CORE__MAX_TASK_RETRY_DELAY": "5",
}


@pytest.fixture(scope="module")
def edge_airflow(store_env, seeded, tmp_path_factory):
    """API server, scheduler and DAG processor with the EdgeExecutor; no worker yet."""
    from portability_dev import airflow_local

    with airflow_local.running_airflow(store_env, database="airflow_edge", executor=airflow_local.EDGE_EXECUTOR,
                                       home=tmp_path_factory.mktemp("airflow-edge"), extra_env=CENTRAL) as airflow:
        yield airflow


@pytest.fixture
def api(edge_airflow):
    from portability.resources.airflow_api import AirflowApi

    return AirflowApi(edge_airflow.base_url, edge_airflow.username, edge_airflow.password)


def test_shards_spread_over_two_workers_and_survive_losing_one(edge_airflow, api, store, tmp_path_factory,
                                                              monkeypatch):
    from portability.pipeline import export as pipeline
    from portability_dev import airflow_local

    homes = tmp_path_factory.mktemp("edge-workers")
    with airflow_local.running_edge_worker(edge_airflow, "worker-a", home=homes / "a"):
        one_worker = export(api, store)
        assert {try_["hostname"] for try_ in shard_tries(api, one_worker.run_id)} == {"worker-a"}

        with airflow_local.running_edge_worker(edge_airflow, "worker-b", home=homes / "b") as worker_b:
            two_workers = export(api, store)
            tries = shard_tries(api, two_workers.run_id)
            assert {try_["hostname"] for try_ in tries} == {"worker-a", "worker-b"}, tries
            assert len({try_["map_index"] for try_ in tries}) == 4

            run_id = trigger(api)
            killed = kill_mid_shard(api, run_id, worker_b)
            lost_one = finish(api, store, run_id)
            # The API server lists the killed worker as lost (no heartbeat for 5 intervals), the other as alive.
            workers = airflow_local.edge_workers(edge_airflow)
            assert workers["worker-b"] == "unknown" and workers["worker-a"] in ("idle", "running"), workers

    retried = [try_ for try_ in shard_tries(api, lost_one.run_id) if try_["map_index"] == killed]
    assert [(t["hostname"], t["state"]) for t in retried] == [("worker-b", "failed"), ("worker-a", "success")]
    assert one_worker.files == two_workers.files == lost_one.files

    # And the same data files as the `portability export` command makes in one process, without Airflow.
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", CENTRAL["PORTABILITY_PIECE_ROWS"])  # pieces fix the bytes
    command = pipeline.run_export(CONF, str(uuid.uuid4()))
    assert data_entries(store.read_bytes(command.bucket, command.key)) == one_worker.files


class Export:
    def __init__(self, run_id: str, archive: bytes):
        self.run_id = run_id
        self.files = data_entries(archive)  # the manifest differs (export id, instants); the data must not


def trigger(api) -> str:
    run_id = f"workers-{uuid.uuid4().hex[:12]}"
    api.trigger("account_export", run_id, CONF)
    return run_id


def finish(api, store, run_id: str) -> Export:
    from portability.pipeline import export as pipeline
    from portability.service.request import export_id_for_run

    assert wait_for_run(api, "account_export", run_id, timeout=300) == "success"
    _, summary = pipeline.find_archive(export_id_for_run("account_export", run_id))
    return Export(run_id, store.read_bytes(summary.bucket, summary.key))


def export(api, store) -> Export:
    return finish(api, store, trigger(api))


def task_instances(api, run_id: str, task_id: str) -> list[dict]:
    response = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances",
                            headers={"Authorization": f"Bearer {api.token()}"}, params={"limit": 500}, timeout=30)
    response.raise_for_status()
    return [ti for ti in response.json()["task_instances"] if ti["task_id"] == task_id]


def shard_tries(api, run_id: str) -> list[dict]:
    """Every try of every export_shard task instance of the run, in order: map index, hostname, state."""
    headers = {"Authorization": f"Bearer {api.token()}"}
    tries = []
    for ti in task_instances(api, run_id, "export_shard"):
        response = requests.get(f"{api.base_url}/api/v2/dags/account_export/dagRuns/{run_id}/taskInstances/"
                                f"export_shard/{ti['map_index']}/tries", headers=headers, timeout=30)
        response.raise_for_status()
        tries += sorted(response.json()["task_instances"], key=lambda t: t["try_number"])
    return tries


def kill_mid_shard(api, run_id: str, worker, timeout: float = 240) -> int:
    """SIGKILL `worker` (and its tasks) once one of the run's shards has been running on it for a moment;
    returns that shard's map index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [ti for ti in task_instances(api, run_id, "export_shard")
                   if ti["state"] == "running" and ti["hostname"] == worker.name]
        if running:
            worker.kill()
            return running[0]["map_index"]
        time.sleep(0.2)
    raise AssertionError(f"no shard of {run_id} ran on {worker.name} within {timeout} s")
