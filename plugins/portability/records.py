"""One exported record in each of its shapes: the JSON document that is validated and written as
JSON Lines, and the CSV row. Values come from the staged Arrow batch; JSON values keep their
exact source text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from portability.schemas import BOOLEAN, JSON, STRING, STRING_LIST, TIMESTAMP, Column

# OWASP CSV injection: a cell starting with one of these runs as a formula in a spreadsheet...
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ...unless it is a plain number, which spreadsheets read as a number.
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


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


@dataclass
class Record:
    document: dict       # JSON values parsed: what the schema validates
    json_line: str       # the JSON Lines form, JSON values as their exact source text
    bad_json: list[str]  # JSON columns whose source text does not parse

    def csv_row(self, columns: list[Column], values: list) -> list[str]:
        return [_csv_cell(column, value) for column, value in zip(columns, values, strict=True)]


def _csv_cell(column: Column, value) -> str:
    if value is None:
        return ""
    if column.kind == TIMESTAMP:
        return render_timestamp(value)
    if column.kind == BOOLEAN:
        return "true" if value else "false"
    if column.kind == STRING_LIST:
        return json.dumps(value, ensure_ascii=False)
    if column.kind == STRING:
        return neutralise_formula(value)
    return str(value)  # integers, numbers, JSON text


def iter_rows(batch) -> Iterator[list]:
    """The rows of an Arrow batch as lists of Python values, column by column conversion."""
    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
    return (list(row) for row in zip(*columns, strict=True))


def build_record(columns: list[Column], values: list) -> Record:
    document = {}
    parts = []
    bad_json = []
    for column, value in zip(columns, values, strict=True):
        if value is None:
            document[column.name] = None
            encoded = "null"
        elif column.kind == TIMESTAMP:
            document[column.name] = render_timestamp(value)
            encoded = json.dumps(document[column.name])
        elif column.kind == JSON:
            try:
                document[column.name] = json.loads(value, parse_float=Decimal)
                encoded = value
            except ValueError:
                bad_json.append(column.name)
                document[column.name] = value
                encoded = json.dumps(value, ensure_ascii=False)
        else:
            document[column.name] = value
            encoded = json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(column.name)}:{encoded}")
    return Record(document, "{" + ",".join(parts) + "}", bad_json)
