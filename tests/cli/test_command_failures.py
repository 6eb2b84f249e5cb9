"""A failing store ends the command with one clear message and exit status 2: never a traceback, never a secret,
and never a cleanup error in place of the cause (in the output or in the ledger)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e
ACCOUNT = "e2e-00001"
NOBODY_LISTENS = "127.0.0.1:9"  # the discard port: nothing answers there


def _s3(**changes) -> str:
    conn = json.loads(os.environ["AIRFLOW_CONN_PORTABILITY_S3"])
    extra = changes.pop("extra", {})
    return json.dumps({**conn, **changes, "extra": {**conn["extra"], **extra}})


def _postgres(conn_id: str, **changes) -> str:
    return json.dumps({**json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]), **changes})


FAILURES = {
    "a wrong S3 secret key": (lambda: {"AIRFLOW_CONN_PORTABILITY_S3": _s3(password="wrong-" + uuid.uuid4().hex)},
                              "refused the credentials of Airflow connection 'portability_s3'"),
    "a wrong S3 key id": (lambda: {"AIRFLOW_CONN_PORTABILITY_S3": _s3(login="NOSUCHKEYID")},
                          "refused the credentials of Airflow connection 'portability_s3'"),
    "a stopped S3 server": (lambda: {"AIRFLOW_CONN_PORTABILITY_S3": _s3(extra={"endpoint_url":
                                                                               f"http://{NOBODY_LISTENS}"})},
                            "cannot reach object storage"),
    "an unreachable source": (lambda: {"AIRFLOW_CONN_PORTABILITY_SOURCE": _postgres("portability_source", port=9)},
                              "cannot reach the database of Airflow connection 'portability_source'"),
    "an unreachable ledger": (lambda: {"AIRFLOW_CONN_PORTABILITY_STATE": _postgres("portability_state", port=9)},
                              "cannot reach the database of Airflow connection 'portability_state'"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_store_gives_one_clear_message_and_exit_2(failure, seeded, tally):
    from portability.resources import ledger

    broken, expected = FAILURES[failure]
    env = broken()
    started = _newest_export()
    result = portability_cli("export", "--account", ACCOUNT, "--categories", "account,lists", env=env, check=False)
    tally["faults injected"] += 1
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("portability export: ") and expected in lines[0]
    secrets = [json.loads(value).get("password") for value in env.values()] + [
        json.loads(os.environ["AIRFLOW_CONN_PORTABILITY_S3"])["password"]]
    assert not [s for s in secrets if s and s in result.stderr + result.stdout]
    if "ledger" not in failure:  # the ledger records the cause, not what cleaning up after it met
        with ledger.connect() as conn:
            row = conn.execute("SELECT state, error FROM exports WHERE account_id = %s ORDER BY created_at DESC "
                               "LIMIT 1", (ACCOUNT,)).fetchone()
        assert row["state"] == "failed" and row != started and expected in row["error"]


def _newest_export():
    from portability.resources import ledger

    with ledger.connect() as conn:
        return conn.execute("SELECT state, error FROM exports WHERE account_id = %s ORDER BY created_at DESC LIMIT 1",
                            (ACCOUNT,)).fetchone()
