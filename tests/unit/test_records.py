"""Rendering of values in each format, and the CSV formula guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from portability.records import build_record, neutralise_formula, render_timestamp
from portability.schemas import Column


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('=HYPERLINK("http://x.example","click")', "'=HYPERLINK(\"http://x.example\",\"click\")"),
        ("+1 555 0100", "'+1 555 0100"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("-2", "-2"),
        ("+3.5e2", "+3.5e2"),
        ("plain text", "plain text"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_csv_formula_guard(text, expected):
    assert neutralise_formula(text) == expected


def test_timestamps_are_utc_with_microseconds():
    assert render_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05.000000Z"
    assert render_timestamp(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01T00:00:00.000000Z"


COLUMNS = [Column("id", "integer", False), Column("name", "string", True), Column("props", "json", False),
           Column("tags", "string_list", False), Column("at", "timestamp", True), Column("ok", "boolean", False)]


def test_json_lines_keep_the_exact_json_text():
    source = '{"b": 1.10, "a": [1, 2], "big": 12345678901234567890}'
    record = build_record(COLUMNS, [1, "Zoë\n\"q\"", source, ["x,y"], None, True])
    assert '"props":' + source in record.json_line
    assert json.loads(record.json_line)["name"] == "Zoë\n\"q\""
    assert record.document["at"] is None and not record.bad_json


def test_csv_row_renders_nested_values_as_json():
    at = datetime(2024, 1, 2, tzinfo=UTC)
    record = build_record(COLUMNS, [1, "=1+1", "{}", ["a", "b"], at, False])
    row = record.csv_row(COLUMNS, [1, "=1+1", "{}", ["a", "b"], at, False])
    assert row == ["1", "'=1+1", "{}", '["a", "b"]', "2024-01-02T00:00:00.000000Z", "false"]


def test_invalid_json_text_is_reported_not_raised():
    record = build_record(COLUMNS, [1, None, "{not json", [], None, True])
    assert record.bad_json == ["props"]
    assert json.loads(record.json_line)["props"] == "{not json"
