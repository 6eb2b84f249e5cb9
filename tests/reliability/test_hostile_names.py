"""Every name that reaches an object key (account id, export id, request id, DAG run id) is checked or derived
before it is used: traversal and injection are refused by the field's name, or cannot reach a key at all."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.reliability
TRAVERSALS = ["../../exports/x", "..", "exports/../../staging", "%2e%2e%2fexports", "x\\..\\..\\y", "\u2025/x",
              "' OR '1'='1", "", " " + str(uuid.uuid4()), str(uuid.uuid4()) + "\n"]
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.mark.parametrize(("command", "named"), [
    ("link", "export id"), ("revoke", "export id"), ("status", "request id"), ("cancel", "request id")])
def test_commands_refuse_ids_that_are_not_uuids(store_env, command, named, tally):
    for hostile in TRAVERSALS[:3]:  # each a process that imports Airflow: the library test takes them all
        result = portability_cli(command, hostile, check=False)
        assert result.returncode == 2, (command, hostile, result.stderr)
        assert f"invalid {named}" in result.stderr, (command, hostile, result.stderr)
        tally["hostile inputs tried"] += 1


def test_the_library_refuses_an_export_id_that_is_not_a_uuid_before_any_read(store_env, tally):
    from portability.pipeline import export
    from portability.service.request import RequestError

    for hostile in TRAVERSALS:
        with pytest.raises(RequestError, match="invalid export id"):
            export.plan({"account_id": "e2e-00001"}, hostile)
        tally["hostile inputs tried"] += 1


@pytest.mark.parametrize("run_id", ["../../exports/x", "manual__2026-01-01T00:00:00+00:00/../..", "a" * 250,
                                    "run\nid", "\u202e../"])
def test_a_dag_run_id_never_reaches_a_key_only_its_uuid5_does(run_id, tally):
    from portability.resources import keys
    from portability.service.request import export_id_for_run

    export_id = export_id_for_run("account_export", run_id)
    assert UUID.fullmatch(export_id)
    assert keys.archive(export_id, "e2e-00001", b"k").startswith(f"exports/{export_id}/")
    tally["hostile inputs tried"] += 1
