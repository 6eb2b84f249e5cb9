"""Helper modules the tests share. Test files import from here (or take a fixture), never from another test file
or from a conftest.py."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
