"""The README's runnable examples (its ```sh blocks) run as written, with the embedded stores in place of the servers
they name: the set of settings they show must be enough, and every command line in them must work."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e
EXPORTED = re.compile(r"^export (\w+)='(.*)'$")


def sh_blocks() -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_runnable_examples():
    assert sh_blocks()


@pytest.mark.parametrize("block", sh_blocks(), ids=lambda block: block.splitlines()[-1][:60])
def test_a_readme_example_runs_as_written(block, store_env, seeded, tmp_path):
    # The servers an example names are the reader's; here they are the embedded stores. Nothing else changes.
    servers = {name: value for name, value in store_env.items() if name.startswith(("AIRFLOW_CONN_", "PORTABILITY_"))}
    lines = []
    for line in block.splitlines():
        exported = EXPORTED.match(line)
        if exported and exported.group(1) in servers:
            line = f"export {exported.group(1)}={_quote(servers[exported.group(1)])}"
        lines.append(line.replace("acme-00001", seeded["good"][0]))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "PORTABILITY_STATE_DIR": str(tmp_path / "dev-state")}  # no AIRFLOW_CONN_* but what the example sets
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
    assert not (tmp_path / "dev-state").exists()
    if "portability export" in block:
        assert result.stdout.strip().splitlines()[-1].startswith("http")  # the link


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def test_the_examples_settings_name_every_connection_the_command_needs():
    """The block that failed before: it set the source and S3 but not the ledger (portability_state)."""
    block = next(b for b in sh_blocks() if "portability export" in b)
    names = {EXPORTED.match(line).group(1) for line in block.splitlines() if EXPORTED.match(line)}
    assert {"AIRFLOW_CONN_PORTABILITY_SOURCE", "AIRFLOW_CONN_PORTABILITY_STATE", "AIRFLOW_CONN_PORTABILITY_S3",
            "PORTABILITY_BUCKETS"} <= names
    assert json.loads(next(line.split("=", 1)[1].strip("'") for line in block.splitlines()
                           if line.startswith("export AIRFLOW_CONN_PORTABILITY_S3=")))["conn_type"] == "aws"
