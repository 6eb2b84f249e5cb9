"""The columnar validator accepts and rejects exactly what `jsonschema` does, for every record category.

Rows are generated column by column from each column's kind and resolved subschema (tests/helpers/record_batches.py);
the reference verdict is `jsonschema` on a document built from the generated Python values, independently of
the code under test. Each batch is checked whole and as a slice with a non-zero offset.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import cache

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portability.records import validation
from portability.records.rendering import RenderedBatch
from portability.records.schemas import JSON, TIMESTAMP
from tests.helpers.record_batches import (
    CATEGORIES,
    INT64_MAX,
    INT64_MIN,
    SCHEMAS,
    TIMESTAMP_EDGES,
    batches,
    build_batch,
    columns,
    examples,
    full_validator,
    json_columns,
    reference_timestamp,
    reference_valid,
    refuse_json_constant,
    rows,
    same,
)

TIMESTAMP_PATTERN = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$")
SETTINGS = settings(max_examples=examples(150), deadline=None, suppress_health_check=list(HealthCheck))


@cache
def validator(category: str) -> validation.BatchValidator:
    return validation.BatchValidator(SCHEMAS, category)


def assert_verdict(category: str, batch: pa.RecordBatch, generated: list[dict]) -> validation.Verdict:
    verdict = validator(category).check(RenderedBatch(batch, columns(category)))
    expected = [reference_valid(category, row) for row in generated]
    assert verdict.valid.null_count == 0
    assert verdict.valid.to_pylist() == expected
    assert sorted(verdict.problems) == [row for row, ok in enumerate(expected) if not ok]
    assert all(verdict.problems.values())
    return verdict


@pytest.mark.parametrize("category", CATEGORIES)
@SETTINGS
@given(data=st.data())
def test_verdict_equals_jsonschema(category, data):
    generated, _, batch = data.draw(batches(category))
    assert_verdict(category, batch, generated)
    start = data.draw(st.integers(0, len(generated) - 1), label="slice start")
    stop = data.draw(st.integers(start + 1, len(generated)), label="slice stop")
    assert_verdict(category, batch.slice(start, stop - start), generated[start:stop])


@pytest.mark.parametrize("category", CATEGORIES)
@settings(SETTINGS, max_examples=examples(30))
@given(data=st.data())
def test_valid_rows_are_judged_by_the_fast_path(category, data):
    """Not a vacuous equivalence: good rows with source-validated JSON objects never reach jsonschema."""
    source_json = frozenset(json_columns(category))
    generated = data.draw(st.lists(rows(category, source_json, "good"), min_size=1, max_size=8))
    verdict = assert_verdict(category, build_batch(category, generated, source_json), generated)
    assert verdict.suspects == len(verdict.problems)


@pytest.mark.parametrize("category", [c for c in CATEGORIES if any(col.kind == TIMESTAMP for col in columns(c))])
@settings(SETTINGS, max_examples=examples(30))
@given(data=st.data())
def test_fast_path_never_accepts_what_jsonschema_rejects_for_any_int64_timestamp(category, data):
    """Raw int64 timestamps, judged by jsonschema on `validation.documents()` (Arrow's own rendering)."""
    source_json = frozenset(json_columns(category))
    generated = data.draw(st.lists(rows(category, source_json, "good"), min_size=1, max_size=6))
    for row in generated:
        for column in columns(category):
            if column.kind == TIMESTAMP:
                row[column.name] = data.draw(st.one_of(st.sampled_from(TIMESTAMP_EDGES),
                                                       st.integers(INT64_MIN, INT64_MAX)))
    rendered = RenderedBatch(build_batch(category, generated, source_json), columns(category))
    verdict = validator(category).check(rendered)
    for row, (document, bad_json) in enumerate(validation.documents(rendered, list(range(len(generated))))):
        if bad_json or not full_validator(category).is_valid(document):
            assert not verdict.valid[row].as_py()


@pytest.mark.parametrize("category", CATEGORIES)
@settings(SETTINGS, max_examples=examples(30))
@given(data=st.data())
def test_documents_are_the_records(category, data):
    """What jsonschema judges (and the problems describe) is the record itself, bad JSON text kept as text."""
    generated, _, batch = data.draw(batches(category))
    start = data.draw(st.integers(0, len(generated) - 1))
    wanted = data.draw(st.lists(st.integers(0, len(generated) - start - 1), max_size=6))
    built = validation.documents(RenderedBatch(batch.slice(start), columns(category)), wanted)
    for position, (document, bad_json) in zip(wanted, built, strict=True):
        row = generated[start + position]
        assert list(document) == [c.name for c in columns(category)]
        expected_bad = []
        for column in columns(category):
            value, got = row[column.name], document[column.name]
            if value is not None and column.kind == JSON:
                try:
                    value = json.loads(value, parse_float=Decimal, parse_constant=refuse_json_constant)
                except ValueError:
                    expected_bad.append(column.name)
            elif value is not None and column.kind == TIMESTAMP:
                year, value = reference_timestamp(value)
                if not 0 <= year <= 9999:
                    assert not TIMESTAMP_PATTERN.search(got)
                    continue
            assert same(got, value), column.name
        assert bad_json == expected_bad


def test_problems_name_the_broken_field():
    """A bad JSON text and a bad email are both reported, the JSON one without jsonschema's echo of the text."""
    category = "contacts"
    good = {"id": 1, "email": "a@b.c", "full_name": None, "properties": "{not json", "created_at": 0,
            "updated_at": 0}
    verdict = assert_verdict(category, build_batch(category, [good, {**good, "properties": "{}"}], frozenset()),
                             [good, {**good, "properties": "{}"}])
    assert [p["path"] for p in verdict.problems[0]] == ["/properties"]
    assert verdict.problems[0][0]["keyword"] == "json"
    bad_email = {**good, "properties": "{}", "email": "a@b.c\n\n"}
    verdict = assert_verdict(category, build_batch(category, [bad_email], frozenset()), [bad_email])
    assert [(p["path"], p["keyword"]) for p in verdict.problems[0]] == [("/email", "pattern")]


def test_null_lists_may_hold_items():
    """Regression: a null list spanning items (valid Arrow) misaligned flatten() and list_parent_indices."""
    category = "suppressions"
    row = {"id": 1, "kind": "bounce", "address": "a@b.c", "domain": None, "code": None, "reason": None,
           "tags": None, "created_at": 0}
    generated = [row, {**row, "tags": ["x"]}, {**row, "tags": [None]}]
    batch = build_batch(category, generated, frozenset(), junk=True)
    assert batch.column("tags").offsets.to_pylist() == [0, 3, 4, 5]  # the null list spans three items
    assert assert_verdict(category, batch, generated).valid.to_pylist() == [False, True, False]
    assert assert_verdict(category, batch.slice(1), generated[1:]).valid.to_pylist() == [True, False]


def test_an_empty_batch():
    for category in CATEGORIES:
        batch = build_batch(category, [], frozenset())
        verdict = validator(category).check(RenderedBatch(batch, columns(category)))
        assert len(verdict.valid) == 0 and not verdict.problems


def test_json_beyond_the_standard_or_too_deep_is_quarantined_not_a_crash():
    """NaN/Infinity are not JSON; nesting deeper than Python's recursion limit is reported, not raised."""
    category = "contacts"
    good = {"id": 1, "email": "a@b.c", "full_name": None, "properties": "{}", "created_at": 0, "updated_at": 0}
    deep = "[" * 5000 + "]" * 5000
    generated = [{**good, "properties": '{"a": NaN}'}, {**good, "properties": '{"a": ' + deep + "}"}]
    verdict = assert_verdict(category, build_batch(category, generated, frozenset()), generated)
    assert [p["keyword"] for p in verdict.problems[0]] == ["json"]
    # Valid jsonb (PostgreSQL vouches for it) that a suspect row carries: judged without crashing.
    with_bad_email = {**good, "email": "not an email", "properties": '{"a": ' + deep + "}"}
    batch = build_batch(category, [with_bad_email], frozenset({"properties"}))
    verdict = validator(category).check(RenderedBatch(batch, columns(category)))
    assert sorted(p["path"] for p in verdict.problems[0]) == ["/email", "/properties"]
