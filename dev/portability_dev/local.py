"""The local set-up of the README: a state folder, the embedded stores and an Airflow home.

Used only when asked for (`portability --dev-stores`, `portability stores start --env`, the demo, the
tests, the benchmark): a real PostgreSQL and a real S3 server started from PyPI packages under
`.state/`. A deployment never reaches this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    return Path(os.environ.get("PORTABILITY_STATE_DIR") or REPO / ".state").resolve()


def airflow_env(store_env: dict[str, str], state: Path) -> dict[str, str]:
    """Environment for Airflow commands and for this library against the embedded stores."""
    return {
        **store_env,
        "AIRFLOW_HOME": str(state / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # An export request is interactive: an idle scheduler looks for the run's next task every 0.2 s
        # instead of every second (the default), between each of the run's tasks.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "PORTABILITY_SCHEMAS_DIR": str(REPO / "schemas"),
    }


def start_stores(state: Path | None = None) -> dict[str, str]:
    """Start (or reuse) the embedded stores; returns the environment that points at them."""
    from portability_dev import embedded

    state = state or state_dir()
    endpoints = embedded.start(state / "stores")
    return airflow_env(endpoints.airflow_env(), state)


def apply(env: dict[str, str]) -> None:
    """Point this process at the local set-up; only ever on request (--dev-stores, the demo, the benchmark)."""
    os.environ.update(env)


def airflow(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """Run the `airflow` command of this virtualenv with the local environment."""
    executable = Path(sys.executable).with_name("airflow")
    return subprocess.run([str(executable), *args], env={**os.environ, **env}, check=False, **kwargs)


def airflow_json(args: list[str], env: dict[str, str]) -> list[dict]:
    """Run an `airflow … --output json` listing; Airflow may print warnings before the JSON line."""
    import json

    result = airflow([*args, "--output", "json"], env, capture_output=True, text=True)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith("["):
            return json.loads(line)
    raise RuntimeError(f"airflow {' '.join(args)} printed no JSON (exit {result.returncode}): {result.stderr[-500:]}")
