"""The account_export DAG run by Airflow (`airflow dags test`) against the embedded stores."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest

from tests.helpers.accounts import BAD_ACCOUNT
from tests.helpers.archive_checks import (
    check_counts_and_isolation,
    check_no_secrets,
    check_round_trip,
    check_standard_tools,
    unpack,
)

pytestmark = pytest.mark.e2e


def archive_keys(store, export_id: str) -> list[str]:
    return [key for bucket in ("exports-us", "exports-eu") for key in store.keys(bucket, f"exports/{export_id}/")]


def staging_keys(store, export_id: str) -> list[str]:
    return [key for bucket in ("exports-us", "exports-eu") for key in store.keys(bucket, f"staging/{export_id}/")]


def export_id_of(run: dict) -> str:
    from portability.service.request import export_id_for_run

    return export_id_for_run("account_export", run["run_id"])


def test_dag_publishes_a_verified_archive(seeded, run_dag, store, db, tmp_path):
    from portability import service
    from portability.pipeline import export

    run = run_dag({"account_id": "e2e-00001", "formats": ["csv", "jsonl", "parquet"]})
    assert run["state"] == "success", run["output"][-4000:]
    assert run["tasks"]["deliver"] == "success" and run["tasks"]["cleanup"] == "success"
    export_id = export_id_of(run)
    assert "X-Amz-Signature" not in run["output"]  # no link in any task log

    link = service.link(export_id, 1)
    with urllib.request.urlopen(link.url, timeout=60) as response:
        data = response.read()
    (tmp_path / "a.zip").write_bytes(data)
    root = unpack(tmp_path / "a.zip", tmp_path)
    _, summary = export.find_archive(export_id)
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.bucket == "exports-us"
    check_counts_and_isolation(root, "e2e-00001", db)
    check_round_trip(root, "e2e-00001", db, ["csv", "jsonl", "parquet"])
    check_no_secrets(root, db)
    check_standard_tools(root)
    assert not staging_keys(store, export_id)  # staged copies are cleaned up


def test_dag_refuses_a_bad_request_before_reading(seeded, run_dag, store):
    run = run_dag({"account_id": "e2e-00001", "categories": ["contacts"], "passwords": True})
    assert run["state"] == "failed"
    assert run["tasks"]["validate_request"] == "failed"
    assert run["tasks"]["export_account"] == "upstream_failed"
    assert "unknown field 'passwords'" in run["output"]


def test_dag_unknown_account_fails_with_no_archive(seeded, run_dag, store):
    run = run_dag({"account_id": "nobody-here"})
    assert run["state"] == "failed"
    assert run["tasks"]["export_account"] == "failed"
    assert "account not found" in run["output"]
    assert not archive_keys(store, export_id_of(run))


def test_dag_on_invalid_fail_publishes_nothing(seeded, run_dag, store):
    run = run_dag({"account_id": BAD_ACCOUNT, "categories": ["contacts"], "on_invalid": "fail"})
    assert run["state"] == "failed"
    assert run["tasks"]["export_account"] == "failed"  # the account fits in one shard: one task exports it
    assert run["tasks"]["deliver"] == "upstream_failed"
    assert not archive_keys(store, export_id_of(run))
    assert not staging_keys(store, export_id_of(run))
    assert json.dumps("planted-invalid-address") not in run["output"]
