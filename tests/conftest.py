"""Shared fixtures: real embedded stores for the session, seeded accounts, and Airflow runs."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest

from tests.helpers import REPO
from tests.helpers.accounts import BAD_ACCOUNT, BAD_CONTACT_EMAIL, GOOD_ACCOUNTS
from tests.helpers.tally import TALLY

os.environ.setdefault("PORTABILITY_SCHEMAS_DIR", str(REPO / "schemas"))

# Fixtures that start a server: embedded PostgreSQL and SeaweedFS (store_env, which every store fixture needs),
# `airflow standalone`, the SMTP server, the webhook receiver. A test that needs one, even through other
# fixtures, carries one of SERVER_MARKERS, so `-m "not e2e and not service and not reliability"` starts none.
SERVER_FIXTURES = frozenset({"store_env", "airflow_server", "mailbox", "webhook", "own_webhook", "steady_webhook"})
SERVER_MARKERS = ("e2e", "service", "reliability")


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
                and not any(item.get_closest_marker(name) for name in SERVER_MARKERS)]
    if unmarked:
        raise pytest.UsageError(
            "these tests start a server (through the fixtures " + ", ".join(sorted(SERVER_FIXTURES))
            + ") but carry none of the markers " + ", ".join(SERVER_MARKERS)
            + "; add `pytestmark = pytest.mark.e2e` (or service, reliability) to their module:\n  "
            + "\n  ".join(unmarked))


@pytest.fixture
def tally() -> Counter:
    """Add to "faults injected", "hostile inputs tried" or "records checked"."""
    return TALLY


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_sep("-", "reliability counts")
        for name in ("faults injected", "hostile inputs tried", "records checked"):
            terminalreporter.write_line(f"{name}: {TALLY[name]}")


@pytest.fixture(scope="session")
def store_env(tmp_path_factory):
    """Start a real PostgreSQL and SeaweedFS for this session and point this process at them."""
    from portability_dev import embedded, local

    state = tmp_path_factory.mktemp("state")
    endpoints = embedded.start(state / "stores")
    env = local.airflow_env(endpoints.airflow_env(), state)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    embedded.stop(state / "stores")


@pytest.fixture(scope="session")
def source_dsn(store_env) -> str:
    from portability.resources import config

    return config.source_settings().conninfo


@pytest.fixture(scope="session")
def seeded(source_dsn) -> dict:
    """Three good accounts (both regions, colliding values across them) and one with a planted bad record."""
    import psycopg

    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(source_dsn) as conn:
        good = seed(conn, SeedOptions(accounts=3, contacts=300, prefix="e2e"))
        bad = seed(conn, SeedOptions(accounts=1, contacts=40, prefix="bad", large_html_bytes=0))
        conn.execute(
            "UPDATE contacts SET email = %s WHERE id = (SELECT min(id) FROM contacts WHERE account_id = %s)",
            (BAD_CONTACT_EMAIL, BAD_ACCOUNT),
        )
        conn.commit()
    assert tuple(good) == GOOD_ACCOUNTS and bad == [BAD_ACCOUNT]
    return {"good": good, "bad": bad[0]}


@pytest.fixture
def db(source_dsn):
    import psycopg

    with psycopg.connect(source_dsn) as conn:
        yield conn


@pytest.fixture
def store(store_env):
    from portability.resources import config
    from portability.resources.storage import ObjectStore

    return ObjectStore(config.storage_settings())


@pytest.fixture(scope="session")
def airflow_db(store_env):
    """Airflow's metadata database in the embedded PostgreSQL, migrated once per session."""
    from portability_dev import local

    result = local.airflow(["db", "migrate"], store_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return store_env


_run_numbers = count()
_session_start = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def run_dag(airflow_db):
    """Run account_export through `airflow dags test`; returns (run_id, state, task states, output)."""
    from portability_dev import local

    def run(conf: dict) -> dict:
        # After the DAG's start_date, or Airflow creates the run without any task instance.
        logical_date = _session_start - timedelta(hours=1) + timedelta(minutes=next(_run_numbers))
        result = local.airflow(
            ["dags", "test", "account_export", logical_date.isoformat(), "-c", json.dumps(conf)],
            airflow_db, capture_output=True, text=True, timeout=900,
        )
        listed = local.airflow_json(["dags", "list-runs", "account_export"], airflow_db)
        run = next(r for r in listed if datetime.fromisoformat(r["logical_date"]) == logical_date)
        states = local.airflow_json(["tasks", "states-for-dag-run", "account_export", run["run_id"]], airflow_db)
        tasks = {t["task_id"]: t["state"] for t in states}
        return {"run_id": run["run_id"], "state": run["state"], "tasks": tasks,
                "output": result.stdout + result.stderr}

    return run
