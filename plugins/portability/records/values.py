"""The Python reference renderings of a value: RFC 3339 timestamps and the CSV formula guard.

The export renders whole columns with Arrow kernels (`rendering`); these per-value functions
state the same rules for the odd single value (the snapshot instant) and for the tests.
"""

from __future__ import annotations

import re
from datetime import datetime

# OWASP CSV injection: a cell starting with one of these runs as a formula in a spreadsheet...
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ...unless it is a plain (ASCII) number, which spreadsheets read as a number. Same rules as
# rendering.FORMULA_START and rendering.PLAIN_NUMBER.
_PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def render_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds; formatted by hand so that years below 1000 keep 4 digits."""
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


def neutralise_formula(text: str) -> str:
    """Prefix a spreadsheet formula with an apostrophe so it shows as text (OWASP CSV injection)."""
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text
