"""The vectorised renderings equal independent Python renderings of the same values."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portability.records import rendering
from portability.records.rendering import RenderedBatch
from portability.records.schemas import BOOLEAN, INTEGER, JSON, STRING, STRING_LIST, TIMESTAMP
from portability.records.validation import BatchValidator
from portability.records.values import neutralise_formula
from tests.helpers.record_batches import (
    CATEGORIES,
    INT64_MAX,
    INT64_MIN,
    SCHEMAS,
    SPECIAL_CHARS,
    SPECIAL_STRINGS,
    TEXT,
    TIMESTAMP_EDGES,
    YEAR_1,
    YEAR_9999_END,
    batches,
    build_batch,
    columns,
    examples,
    junk_under_nulls,
    micros,
    reference_document,
    reference_timestamp,
    reference_valid,
    refuse_json_constant,
    same,
)

SETTINGS = settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))
TIMESTAMP_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$")
# The CSV formula guard as specified (ASCII digits; the whole cell must be the number), to check the
# Python reference records.neutralise_formula against.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
YEAR_0 = YEAR_1 - 366 * 86_400_000_000  # 0000-01-01, a leap year in the proleptic Gregorian calendar


def neutralise_spec(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(text) else text


def sliced(draw, values: list, array: pa.Array):
    """The whole array and a slice with a non-zero offset where possible, with their Python values."""
    start = draw(st.integers(0, len(values)))
    stop = draw(st.integers(start, len(values)))
    return [(values, array), (values[start:stop], array.slice(start, stop - start))]


YEAR_1000 = micros(datetime(1000, 1, 1, tzinfo=UTC))
PYTHON_TIMESTAMPS = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                 timezones=st.just(UTC)).map(micros),
    st.integers(YEAR_1, YEAR_9999_END),
    st.integers(YEAR_1, YEAR_1000).map(lambda us: us - us % 1_000_000),  # years 1-999, whole seconds
    st.integers(YEAR_1, YEAR_1000),
    st.integers(YEAR_0, YEAR_1 - 1),
    st.sampled_from([t for t in TIMESTAMP_EDGES if YEAR_0 <= t <= YEAR_9999_END]),
)


@SETTINGS
@given(values=st.lists(st.one_of(st.none(), PYTHON_TIMESTAMPS), max_size=12),
       others=st.lists(st.one_of(st.sampled_from(TIMESTAMP_EDGES), st.integers(INT64_MIN, INT64_MAX)), max_size=2),
       tz=st.sampled_from(["UTC", None]), junk=st.booleans(), data=st.data())
def test_timestamp_text_equals_render_timestamp(values, others, tz, junk, data):
    """Years 1-9999 as records.render_timestamp (4-digit zero padded), year 0 by calendar arithmetic.

    Other years (a few mixed in, forcing the general path) must never look like a valid timestamp.
    """
    values = values + others
    array = pa.array(values, pa.int64()).cast(pa.timestamp("us", tz=tz))
    if junk:
        array = junk_under_nulls(array)
    for expected_values, arr in sliced(data.draw, values, array):
        got = rendering.timestamp_text(arr).to_pylist()
        assert len(got) == len(expected_values)
        for value, text in zip(expected_values, got, strict=True):
            if value is None:
                assert text is None
                continue
            year, expected = reference_timestamp(value)
            if 0 <= year <= 9999:
                assert text == expected
            else:
                assert not TIMESTAMP_PATTERN.search(text)


STRINGS = st.one_of(TEXT, st.sampled_from(SPECIAL_STRINGS), st.text(st.sampled_from(SPECIAL_CHARS), max_size=6))


def test_postgresql_infinities_as_the_driver_delivers_them_render_as_words():
    # 'infinity' and '-infinity' (int64 max and min from 2000), shifted to 1970 by ADBC with wrap-around.
    delivered = pa.array([-9222425352054775809, -9222425352054775808, 0, None], pa.int64())
    rendered = rendering.timestamp_text(delivered.cast(pa.timestamp("us", tz="UTC"))).to_pylist()
    assert rendered == ["infinity", "-infinity", "1970-01-01T00:00:00.000000Z", None]


@SETTINGS
@given(values=st.lists(st.one_of(st.none(), STRINGS), max_size=10), json_type=st.booleans(), junk=st.booleans(),
       data=st.data())
def test_json_string_equals_json_dumps(values, json_type, junk, data):
    array = pa.array(values, pa.string())
    if junk:
        array = junk_under_nulls(array)
    if json_type:
        array = pa.ExtensionArray.from_storage(pa.json_(pa.string()), array)
    for expected_values, arr in sliced(data.draw, values, array):
        expected = [None if v is None else json.dumps(v, ensure_ascii=False) for v in expected_values]
        assert rendering.json_string(arr).to_pylist() == expected


@SETTINGS
@given(values=st.lists(st.one_of(st.none(), st.lists(st.one_of(st.none(), STRINGS), max_size=4)), max_size=10),
       junk=st.booleans(), data=st.data())
def test_string_list_json_equals_json_dumps(values, junk, data):
    array = pa.array(values, pa.list_(pa.string()))
    if junk:
        array = junk_under_nulls(array)
    for expected_values, arr in sliced(data.draw, values, array):
        expected = [None if v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
                    for v in expected_values]
        assert rendering.string_list_json(arr).to_pylist() == expected


FORMULA_TEXT = st.one_of(
    STRINGS,
    st.builds(lambda a, b: a + b, st.sampled_from([*FORMULA_START, "", " ", "'"]),
              st.one_of(st.from_regex(PLAIN_NUMBER, fullmatch=True), STRINGS)),
    st.from_regex(r"[+-]?([0-9١٢𝟘]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\n?", fullmatch=True),
    st.sampled_from(["-", "+", "-.", "+.e1", "-1e", "-1e+", "-1.5E-3", "+.5", "-5.", "-١", "+𝟘", "-1\n", "-1 ",
                     "=1", "@", "\t1", "\r1", "-0x1F", "-1,5", "- 1", "-∞", "-1e5\x00"]),
)


@SETTINGS
@given(values=st.lists(st.one_of(st.none(), FORMULA_TEXT), max_size=10), data=st.data())
def test_neutralise_formulas_equals_the_python_guard(values, data):
    array = pa.array(values, pa.string())
    for expected_values, arr in sliced(data.draw, values, array):
        expected = [None if v is None else neutralise_formula(v) for v in expected_values]
        assert expected == [None if v is None else neutralise_spec(v) for v in expected_values]
        assert rendering.neutralise_formulas(arr).to_pylist() == expected


@pytest.mark.parametrize("category", CATEGORIES)
@settings(SETTINGS, max_examples=examples(60))
@given(data=st.data())
def test_json_lines_and_csv_cells(category, data):
    generated, _, batch = data.draw(batches(category))
    start = data.draw(st.integers(0, len(generated) - 1))
    for values, part in ((generated, batch), (generated[start:], batch.slice(start))):
        rendered = RenderedBatch(part, columns(category))
        lines = rendering.json_lines(rendered).to_pylist()
        cells = rendering.csv_batch(rendered)
        assert len(lines) == len(values) == cells.num_rows
        for row, (line, value_row) in enumerate(zip(lines, values, strict=True)):
            assert line.endswith("\n") and "\n" not in line[:-1] and "\r" not in line
            parsed = json.loads(line, parse_float=Decimal)  # invalid rows too: the errors file holds them
            if reference_valid(category, value_row):
                assert same(parsed, reference_document(category, value_row))
                for column in columns(category):
                    text = value_row[column.name]
                    if column.kind == JSON and text is not None and not re.search("[\n\r]", text):
                        assert json.dumps(column.name) + ":" + text in line
            else:
                assert_invalid_line(category, value_row, parsed)
            for index, column in enumerate(columns(category)):
                assert_csv_cell(column.kind, value_row[column.name], cells.column(index)[row].as_py())


@pytest.mark.parametrize("category", CATEGORIES)
@settings(SETTINGS, max_examples=examples(20))
@given(data=st.data())
def test_filtered_and_taken_batches_render_as_fresh_ones(category, data):
    """pieces.py renders rendered.filter(valid) and rendered.take(invalid rows) after the checks filled the caches."""
    generated, _, batch = data.draw(batches(category))
    rendered = RenderedBatch(batch, columns(category))
    verdict = BatchValidator(SCHEMAS, category).check(rendered)
    rendering.json_lines(rendered)
    rendering.csv_batch(rendered)
    invalid = sorted(verdict.problems)
    for derived, fresh in ((rendered.filter(verdict.valid), batch.filter(verdict.valid)),
                           (rendered.take(invalid), batch.take(pa.array(invalid, pa.int64())))):
        fresh = RenderedBatch(fresh, columns(category))
        assert rendering.json_lines(derived).to_pylist() == rendering.json_lines(fresh).to_pylist()
        assert rendering.csv_batch(derived).to_pylist() == rendering.csv_batch(fresh).to_pylist()


def assert_invalid_line(category: str, row: dict, parsed: dict) -> None:
    """A quarantined record's line: its values, a JSON text that does not parse as a JSON string of itself."""
    assert list(parsed) == [c.name for c in columns(category)]
    for column in columns(category):
        value, got = row[column.name], parsed[column.name]
        if value is not None and column.kind == JSON:
            try:  # NaN and Infinity are not JSON (RFC 8259): such text is kept as a string, as parse_json does
                expected = json.loads(value, parse_float=Decimal, parse_constant=refuse_json_constant)
            except ValueError:
                expected = value
        elif value is not None and column.kind == TIMESTAMP:
            year, expected = reference_timestamp(value)
            if not 0 <= year <= 9999:
                assert isinstance(got, str) and not TIMESTAMP_PATTERN.search(got)
                continue
        else:
            expected = value
        assert same(got, expected), column.name


def assert_csv_cell(kind: str, value, cell) -> None:
    if value is None:
        assert cell is None
    elif kind == STRING:
        assert cell == neutralise_formula(value)
    elif kind == TIMESTAMP:
        year, text = reference_timestamp(value)
        if 0 <= year <= 9999:
            assert cell == text
        else:
            assert not TIMESTAMP_PATTERN.search(cell)
    elif kind == JSON:
        assert cell == value
    elif kind == STRING_LIST:
        assert cell == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        assert kind in (INTEGER, BOOLEAN)
        assert type(cell) is type(value) and cell == value


def test_quarantined_json_text_stays_json_lines():
    """Regression: the errors file holds invalid records' lines; a plain-text JSON value that does not parse
    (here the empty string) was written verbatim, making the line `"address":,` unreadable."""
    category = "account"
    row = {"account_id": "a", "name": "n", "company": None, "owner_email": "a@b.c", "country": None, "region": "us",
           "plan": "p", "address": "", "vat_number": None, "created_at": 0, "closed_at": None}
    rows = [row, {**row, "address": '{"k": [1,\n2]}'}, {**row, "address": "{\n"}, {**row, "address": None}]
    lines = rendering.json_lines(RenderedBatch(build_batch(category, rows, frozenset()), columns(category)))
    assert [json.loads(line)["address"] for line in lines.to_pylist()] == ["", {"k": [1, 2]}, "{\n", None]
    assert '"address":{"k": [1, 2]}' in lines[1].as_py()
