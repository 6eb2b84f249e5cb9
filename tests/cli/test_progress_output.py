"""`portability export` and `portability verify` show their progress on stderr: a bar on a terminal (a real
pseudo-terminal here), plain lines when stderr is piped, nothing with --quiet; stdout stays exactly the link or the
report, so scripts parsing it keep working."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e
ACCOUNT = "e2e-00003"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _on_a_terminal(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    """Run the installed command with stderr on a pseudo-terminal and stdout on a pipe: (status, stdout, terminal)."""
    main, terminal = os.openpty()
    os.set_blocking(main, False)
    executable = Path(sys.executable).with_name("portability")
    process = subprocess.Popen([str(executable), *args], stdout=subprocess.PIPE, stderr=terminal,
                               stdin=subprocess.DEVNULL,
                               env={**os.environ, "COLUMNS": "120", "TERM": "xterm-256color", **(env or {})})
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the terminal's other side closed: the command ended
                break
            if not data:
                break
            shown += data
        elif process.poll() is not None:
            break
    stdout = process.stdout.read().decode()
    status = process.wait(timeout=60)
    os.close(main)
    return status, stdout, shown.decode(errors="replace")


def test_export_shows_a_bar_on_a_terminal_and_keeps_stdout_the_link(seeded):
    status, stdout, shown = _on_a_terminal("export", "--account", ACCOUNT, "--formats", "csv",
                                           env={"PORTABILITY_PIECE_ROWS": "20"})
    assert status == 0, shown[-3000:]
    assert stdout.count("\n") == 1 and stdout.startswith("http") and "X-Amz-Signature" in stdout  # as before
    plain = ANSI.sub("", shown)
    assert "━" in shown and re.search(r"exporting .*\d+/\d+ rows\s+[\d,]+ rows/s", plain), plain[-2000:]
    assert "X-Amz-Signature" not in shown  # the link is on stdout only
    assert "portability export: exporting" not in plain  # a terminal gets the bar, not the plain lines


def test_export_prints_plain_lines_when_piped_and_nothing_with_quiet(seeded):
    result = portability_cli("export", "--account", ACCOUNT, "--formats", "jsonl", "--json",
                             env={"PORTABILITY_PROGRESS_SECONDS": "0.2", "PORTABILITY_PIECE_ROWS": "20"})
    summary = json.loads(result.stdout)  # stdout is the one JSON object, as before
    total = sum(c["source_count"] for c in summary["counts"].values())
    lines = [line for line in result.stderr.splitlines() if line.startswith("portability export: exporting")]
    assert lines[-1].startswith(f"portability export: exporting done: {total:,} rows in "), result.stderr
    assert all("\x1b" not in line and "━" not in line for line in lines)
    assert all(re.fullmatch(r"portability export: exporting [\d,]+( of [\d,]+ rows \(\d+%\))?( rows)?, [\d,]+ rows/s"
                            r"(, about \d+ s left)?", line) for line in lines[:-1]), lines

    quiet = portability_cli("export", "--account", ACCOUNT, "--formats", "jsonl", "-q",
                            env={"PORTABILITY_PROGRESS_SECONDS": "0.2"})
    assert "portability export:" not in quiet.stderr and quiet.stdout.startswith("http")


def test_verify_shows_progress_without_changing_its_report(seeded, tmp_path):
    exported = json.loads(portability_cli("export", "--account", ACCOUNT, "--formats", "csv,jsonl", "--json").stdout)
    piped = portability_cli("verify", exported["url"], env={"PORTABILITY_PROGRESS_SECONDS": "0.01"})
    assert piped.stdout.startswith(f"OK: export {exported['export_id']} of account {ACCOUNT}")
    lines = [line for line in piped.stderr.splitlines() if line.startswith("portability verify:")]
    assert [line for line in lines if line.startswith("portability verify: downloading done: ")], piped.stderr
    assert lines[-1].startswith("portability verify: checking done: "), piped.stderr
    assert "X-Amz-Signature" not in piped.stderr

    archive = tmp_path / "archive.zip"
    import urllib.request

    with urllib.request.urlopen(exported["url"], timeout=60) as response:
        archive.write_bytes(response.read())
    status, stdout, shown = _on_a_terminal("verify", str(archive))
    assert status == 0, shown[-3000:]
    assert stdout == portability_cli("verify", str(archive), "--quiet").stdout  # the same report, byte for byte
    assert "checking" in ANSI.sub("", shown) and "MB" in ANSI.sub("", shown), shown[-2000:]
