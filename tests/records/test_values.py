"""Rendering of values in each format, and the CSV formula guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from portability.records.schemas import Column
from portability.records.values import neutralise_formula, render_timestamp


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


def rendered(rows: list[list], source_json: frozenset = frozenset()):
    import pyarrow as pa

    from portability.records.rendering import RenderedBatch
    from portability.records.schemas import arrow_schema

    schema = arrow_schema(COLUMNS, source_json)
    arrays = [pa.array(list(values), type=f.type.storage_type if isinstance(f.type, pa.JsonType) else f.type)
              for values, f in zip(zip(*rows, strict=True), schema, strict=True)]
    arrays = [pa.ExtensionArray.from_storage(f.type, a) if isinstance(f.type, pa.JsonType) else a
              for a, f in zip(arrays, schema, strict=True)]
    return RenderedBatch(pa.RecordBatch.from_arrays(arrays, schema=schema), COLUMNS)


def test_json_lines_keep_the_exact_json_text():
    from portability.records.rendering import json_lines

    source = '{"b": 1.10, "a": [1, 2], "big": 12345678901234567890}'
    (line,) = json_lines(rendered([[1, "Zoë\n\"q\"", source, ["x,y"], None, True]])).to_pylist()
    assert '"props":' + source in line and line.endswith("}\n") and "\n" not in line[:-1]
    assert json.loads(line)["name"] == "Zoë\n\"q\""
    assert json.loads(line)["at"] is None


def test_csv_cells_render_nested_values_as_json():
    from portability.records.rendering import csv_batch

    at = datetime(2024, 1, 2, tzinfo=UTC)
    cells = csv_batch(rendered([[1, "=1+1", "{}", ["a", "b"], at, False]])).to_pylist()
    assert cells == [{"id": 1, "name": "'=1+1", "props": "{}", "tags": '["a","b"]',
                      "at": "2024-01-02T00:00:00.000000Z", "ok": False}]


def test_invalid_json_text_is_reported_not_raised():
    from portability.records.validation import documents

    ((document, bad_json),) = documents(rendered([[1, None, "{not json", [], None, True]]), [0])
    assert bad_json == ["props"] and document["props"] == "{not json"
