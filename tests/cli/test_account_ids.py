"""Every valid account id works as typed, including one that begins with '-', and so do the requester's commands."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e
DASHED_PREFIX = "-dash"  # the pattern ^[A-Za-z0-9_-]{1,64}$ allows a leading '-'


def test_an_account_id_beginning_with_a_dash_exports_and_its_archive_passes_the_readmes_commands(store_env, tmp_path):
    [account] = json.loads(portability_cli("seed", "--accounts", "1", "--contacts", "5", "--prefix", DASHED_PREFIX,
                                           "--json").stdout)["accounts"]
    assert account.startswith("-")
    summary = json.loads(portability_cli("export", "--account", account, "--categories", "account,contacts",
                                         "--json").stdout)
    assert summary["account_id"] == account
    name = summary["key"].rsplit("/", 1)[1]
    assert name == f"export{account}-{summary['export_id']}.zip" and not name.startswith("-")
    with urllib.request.urlopen(summary["url"], timeout=60) as response:
        (tmp_path / name).write_bytes(response.read())
    # Exactly the lines the README and the ready email give the requester.
    folder = name.removesuffix(".zip")
    script = f"set -e\nsha256sum {name}\nunzip -q {name}\ncd {folder} && sha256sum -c manifest-sha256.txt\n"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == summary["sha256"]
    assert "data/contacts.csv: OK" in result.stdout
    manifest = json.loads((tmp_path / folder / "manifest.json").read_text())
    assert manifest["account_id"] == account and manifest["contents"]["contacts"]["exported"] == 5
