"""Two `portability export` runs of one account at the same moment do the work once: the second joins the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e


def test_two_commands_at_once_publish_one_archive(store_env, store):
    # Big enough that the first is still exporting when the second has started (each takes ~3 s to start).
    [account] = json.loads(portability_cli("seed", "--accounts", "1", "--contacts", "20000", "--prefix", "race",
                                           "--json").stdout)["accounts"]
    executable = Path(sys.executable).with_name("portability")
    args = [str(executable), "export", "--account", account, "--json"]
    env = {**os.environ, "PORTABILITY_PROGRESS_SECONDS": "0.5"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    summaries = [json.loads(out) for out, _ in outputs]
    assert summaries[0]["export_id"] == summaries[1]["export_id"]
    assert summaries[0]["sha256"] == summaries[1]["sha256"]
    assert sum("under way: waiting for its archive" in err for _, err in outputs) == 1
    # Both show the export's progress: the one that joined follows it through the ledger.
    total = sum(counts["source_count"] for counts in summaries[0]["counts"].values())
    assert all(f"portability export: exporting done: {total:,} rows in " in err for _, err in outputs), outputs
    archives = [key for key in store.keys(summaries[0]["bucket"], f"exports/{summaries[0]['export_id']}/")
                if key.endswith(".zip")]
    assert len(archives) == 1
    from portability.resources import ledger

    with ledger.connect() as conn:
        requests = conn.execute("SELECT state FROM export_requests WHERE export_id = %s",
                                (summaries[0]["export_id"],)).fetchall()
    assert [r["state"] for r in requests] == ["delivered", "delivered"]  # each command handed its link over
