"""Running the installed `portability` command, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def portability_cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed `portability` command, as a user would."""
    executable = Path(sys.executable).with_name("portability")
    result = subprocess.run([str(executable), *args], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"portability {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result
