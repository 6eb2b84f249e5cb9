"""The command's side of one data subject's export (SPEC §5): --subject on export and request, and a bad address
refused by field name, without echo, before anything is recorded or contacted (no store is started here)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.commands import portability_cli
from tests.helpers.subjects import find_address

# Nothing listens here and nothing is contacted: the request is refused before.
NO_AIRFLOW = {"AIRFLOW_CONN_PORTABILITY_AIRFLOW": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 9,
                                                              "login": "nobody", "password": "not-a-real-password"})}


@pytest.mark.parametrize("command", ["export", "request"])
def test_export_and_request_document_subject_since_and_until(command):
    usage = portability_cli(command, "--help").stdout
    assert all(option in usage for option in ("--subject EMAIL", "--since INSTANT", "--until INSTANT")), usage


@pytest.mark.parametrize("args", [
    ["export", "--account", "acme-00001", "--subject", "zelda.private.person"],
    ["export", "--account", "acme-00001", "--subject=zelda.private.person@@example.com"],
    ["export", "--account", "acme-00001", "--subject", "-zelda.private.person"],
    ["request", "--account", "acme-00001", "--subject", "zelda.private.person", "--wait"],
    ["request", "--account", "acme-00001", "--subject", "zelda.private@example.com", "--categories", "templates"],
], ids=["export", "export-equals", "export-dash", "request", "request-category"])
def test_a_bad_subject_is_refused_by_field_name_before_anything_is_contacted(args, tally):
    tally["hostile inputs tried"] += 1
    result = portability_cli(*args, env=NO_AIRFLOW, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    field = "categories" if "--categories" in args else "subject_email"
    assert lines[0].startswith(f"portability {args[0]}: invalid export request: field '{field}'"), lines[0]
    address = next(a.split("=", 1)[-1] for a in args if "zelda" in a)
    assert find_address(result.stderr + result.stdout, address) is None
    assert "zelda" not in result.stderr.lower()
