"""The command finds its connections exactly where Airflow would, and never starts development stores on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e
CONNECTIONS = ("portability_source", "portability_state", "portability_s3")


def _bare_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell with no AIRFLOW_CONN_* at all: only what a deployment's operator would set."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"),
            "PORTABILITY_SCHEMAS_DIR": str(REPO / "schemas"),
            # Where development stores would go if anything started them: it must stay absent.
            "PORTABILITY_STATE_DIR": str(home / "dev-state"), **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(executable), *args[1:]], env=env, capture_output=True, text=True, timeout=600)


def _dev_store_processes(home: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(home / "dev-state") in cmdline:
            found.append(cmdline[:200])
    return found


def _connection_json(store_env: dict, conn_id: str) -> dict:
    return json.loads(store_env[f"AIRFLOW_CONN_{conn_id.upper()}"])


def _assert_exported_without_dev_stores(result: subprocess.CompletedProcess, home: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["account_id"] == "e2e-00001"
    assert summary["counts"]["lists"]["exported"] > 0  # the seeded account's rows, read from the real source
    assert not (home / "dev-state").exists()
    assert not _dev_store_processes(home)


def test_connections_only_in_the_metadata_database(store_env, seeded, tmp_path):
    env = _bare_env(tmp_path, PORTABILITY_BUCKETS=store_env["PORTABILITY_BUCKETS"],
                    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}")
    migrated = _run(["airflow", "db", "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    for conn_id in CONNECTIONS:
        added = _run(["airflow", "connections", "add", conn_id, "--conn-json",
                      json.dumps(_connection_json(store_env, conn_id))], env)
        assert added.returncode == 0, added.stderr[-3000:]

    result = _run(["portability", "export", "--account", "e2e-00001", "--categories", "account,lists", "--json"], env)
    _assert_exported_without_dev_stores(result, tmp_path)


def test_connections_only_in_a_secrets_backend(store_env, seeded, tmp_path):
    connections = tmp_path / "connections.json"
    connections.write_text(json.dumps({conn_id: _connection_json(store_env, conn_id) for conn_id in CONNECTIONS}))
    env = _bare_env(
        tmp_path, PORTABILITY_BUCKETS=store_env["PORTABILITY_BUCKETS"],
        AIRFLOW__SECRETS__BACKEND="airflow.secrets.local_filesystem.LocalFilesystemBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"connections_file_path": str(connections)}),
        # A metadata database that holds nothing: the secrets backend is the only place to find them.
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'empty.db'}",
    )
    result = _run(["portability", "export", "--account", "e2e-00001", "--categories", "account,lists", "--json"], env)
    _assert_exported_without_dev_stores(result, tmp_path)


def test_nothing_configured_is_refused_and_starts_nothing(tmp_path):
    env = _bare_env(tmp_path, PORTABILITY_BUCKETS='{"us": "exports-us"}')
    result = _run(["portability", "export", "--account", "e2e-00001"], env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "connection 'portability_" in message and "--dev-stores" in message
    assert not (tmp_path / "dev-state").exists()
    assert not _dev_store_processes(tmp_path)
