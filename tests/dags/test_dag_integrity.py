"""DAG integrity: the files parse, follow the house rules and stay light at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY_MODULES = ("pyarrow", "boto3", "botocore", "psycopg", "adbc_driver_postgresql", "adbc_driver_manager")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow-home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "account_export" in dagbag.dags


def test_house_rules(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id} retries={task.retries}"


def test_account_export_is_triggered_not_scheduled(dagbag):
    dag = dagbag.dags["account_export"]
    assert dag.schedule is None or str(dag.timetable.summary) == "None"
    assert dag.is_paused_upon_creation is False
    assert dag.catchup is False


def test_params_are_the_request_schema(dagbag):
    schema = json.loads((REPO / "schemas/export_request.schema.json").read_text())
    params = dagbag.dags["account_export"].params
    assert set(params.keys()) == set(schema["properties"])
    for name, prop in schema["properties"].items():
        param = params.get_param(name)
        expected = {k: v for k, v in prop.items() if k not in ("default", "description")}
        assert {k: param.schema.get(k) for k in expected} == expected, name
        assert param.description == prop["description"], name
        assert param.value == prop.get("default", param.value), name


def test_the_trigger_forms_defaults_are_a_valid_request_and_only_the_account_is_required(dagbag):
    from portability.records.schemas import SchemaSet
    from portability.service.request import parse_request

    params = dagbag.dags["account_export"].params
    # Airflow's form marks a field required unless its type allows null, and sends null for one left empty.
    required_in_form = [name for name in params if "null" not in _types(params.get_param(name).schema)]
    assert required_in_form == ["account_id"]
    form_conf = {**params.dump(), "account_id": "acme-00042"}
    assert form_conf["notify_email"] is None and form_conf["webhook_url"] is None
    request = parse_request(form_conf, SchemaSet())
    assert request.formats == ("csv", "jsonl") and request.expires_in_hours == 72
    assert request.notify_email is None and request.webhook_url is None
    cleared = {name: None for name in params.dump()} | {"account_id": "acme-00042"}  # every optional field emptied
    assert parse_request(cleared, SchemaSet()) == request


def _types(schema: dict) -> list:
    kind = schema.get("type", [])
    return kind if isinstance(kind, list) else [kind]


def test_account_export_runs_the_pipelines_steps(dagbag):
    """The same steps as the command; only the shards of a big account are mapped tasks."""
    dag = dagbag.dags["account_export"]
    assert set(dag.task_ids) == {"validate_request", "export_account", "export_shard", "package", "deliver", "cleanup"}
    assert dag.get_task("deliver").trigger_rule == "none_failed_min_one_success"
    assert dag.get_task("cleanup").is_teardown


def test_parsing_imports_no_heavy_library():
    """DAG files are parsed often; pyarrow, boto3, psycopg and adbc load only inside tasks."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('account_export', {str(REPO / 'dags/account_export.py')!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins"), "PORTABILITY_SCHEMAS_DIR": str(REPO / "schemas")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
