"""Hypothesis strategies for staged batches of every record category, and independent Python references.

The references never use the code under test: a document is built from the generated Python values
(timestamps rendered by `records.render_timestamp` or by calendar arithmetic below, JSON text parsed by
`json.loads`), and its verdict is `jsonschema`'s. Shared by test_validation_equivalence.py and
test_rendering.py.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache

import pyarrow as pa
from hypothesis import strategies as st

from portability.records.schemas import BOOLEAN, INTEGER, JSON, STRING, STRING_LIST, TIMESTAMP, SchemaSet, arrow_schema
from portability.records.values import render_timestamp

# PORTABILITY_HYPOTHESIS_SCALE=20 multiplies every example count, for a long bug hunt.
SCALE = float(os.environ.get("PORTABILITY_HYPOTHESIS_SCALE", "1"))
SCHEMAS = SchemaSet()
CATEGORIES = SCHEMAS.categories
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86_400_000_000
CYCLE_DAYS = 146_097  # days in 400 Gregorian years: the proleptic calendar repeats exactly after them
Y2000_DAYS = 10_957  # 1970-01-01 to 2000-01-01

# Characters that break naive code: controls, quotes, Unicode and JSON-unsafe whitespace, line separators,
# astral characters, a combining mark, non-ASCII digits, formula starters.
SPECIAL_CHARS = [
    *map(chr, range(0x20)), " ", '"', "\\", "'", "/", "\x7f", "\x80", "\x9f", "\x85", "\xa0", "\u1680", "\u2003",
    "\u2028", "\u2029", "\u200b", "\u3000", "\ufeff", "\u0301",
    "\ufffd", "\uffff", "\U0010ffff", "😀", "𝟘", "١", "é", "ß", "@", ".", "=", "+", "-", "_", ",", "0", "A", "a",
]
UTF8 = st.characters(codec="utf-8")  # Arrow strings are UTF-8: no lone surrogates
TEXT = st.text(st.one_of(st.sampled_from(SPECIAL_CHARS), UTF8), max_size=12)
SPECIAL_STRINGS = [
    "", " ", "\n", "a\n", "\r\n", "null", "true", "0", "-0", "=1+1", "@SUM(A1)", "+1", "-", "e\u0301", "😀" * 3,
    "\u2028", "a\x00b", '"\\"', "\\u0000", "\t=cmd", "\ud7ff", "\ue000",
]
EMAILS = [
    "a@b.c", "a@b.c\n", "a@b.c\n\n", "a@b.c\r", "a@b.c\r\n", "\na@b.c", " a@b.c", "a@b.c ", "ab", "a@b", "@b.c",
    "a@.c", "a@b.", "a@@b.c", "a@b@c.d", "a b@c.d", "a\u00a0@b.c", "a@b\u2003.c", "a@b.c\u2028", "a\x1c@b.c",
    "a\x0b@b.c", "a\x85@b.c", "a\u200b@b.c", "a\ufeff@b.c", "用户@例子.广告", "😀@😀.😀", "müller@bücher.example",
    "e\u0301@x.y", "a@b.c.d", "a.b@c", "..@..", "@.", "a@", "a@b.c\x00",
    *("x" * (n - 4) + "@b.c" for n in (253, 254, 255)),
    *("x" * (n - 5) + "@b.c\n" for n in (254, 255)),
    *("😀" * (n - 4) + "@b.c" for n in (254, 255)),
]
INVALID_JSON = [
    "", " ", "\n", "{", "}", "{'a': 1}", "[1,]", '{"a":1,}', '{"a"}', "tru", "nul", "01", "1.", ".5", "+1", "{} {}",
    "{}x", "{}\x00", "\ufeff{}", "\u00a0{}", "{}\u00a0", "\x0b{}", "{}\x0c", '{"a":"\n"}', '"\\x"', "[1 2]",
    # Python extensions that the JSON standard does not have: refused.
    "NaN", "-Infinity", '{"a": NaN}', '{"a": Infinity}',
    # json.loads accepts these (lenient escapes, whitespace); the reference follows json.loads.
    '["\\ud800"]', '{"\\udc00": 1}', '{"a":1}\n', "\r\n{}\t",
]
RAW_JSON = [
    "1E400", "-0", "0.5e-3", "1e2", "-12345678901234567890123", '"\\u0000"', '"\\ud83d\\ude00"', '"\\/"', "[]",
    "{}", '{"a":{"b":[]}}', '""', "true", "false", "null", "  {\n}\r\n", "[\r\n1\t]", '{"a":1,"a":2}',
    '{"":null}', " \t\n\r[ ] ", '{"k":"\u2028\u2029😀"}',
]
JSON_WS = st.text(st.sampled_from(" \t\n\r"), max_size=3)


def examples(count: int) -> int:
    return max(1, int(count * SCALE))


def micros(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


YEAR_1 = micros(datetime(1, 1, 1, tzinfo=UTC))
YEAR_9999_END = micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
TIMESTAMP_EDGES = [
    0, 1, -1, 999_999, 1_000_000, YEAR_1, YEAR_1 + 1, YEAR_1 - 1, YEAR_9999_END, YEAR_9999_END - 1,
    YEAR_9999_END + 1, micros(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)), micros(datetime(2000, 2, 29, tzinfo=UTC)),
    YEAR_1 - 366 * DAY_US, YEAR_1 - 367 * DAY_US, YEAR_1 - 10 * 366 * DAY_US, INT64_MIN, INT64_MAX, INT64_MIN + 1,
    INT64_MAX - 1, -62_135_596_800_000_000 * 100, 253_402_300_800_000_000 * 10,
]
INTEGER_EDGES = [0, 1, -1, 2, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1, 2**31, -(2**31) - 1, 2**53 + 1]


def reference_timestamp(us: int) -> tuple[int, str]:
    """The proleptic-Gregorian year and RFC 3339 text of a microsecond count, independent of Arrow.

    Years 1-9999 use `records.render_timestamp`; others shift by whole 400-year cycles into Python's range.
    """
    year_of = EPOCH + timedelta(microseconds=us) if YEAR_1 <= us <= YEAR_9999_END else None
    if year_of is not None:
        return year_of.year, render_timestamp(year_of)
    days, rest = divmod(us, DAY_US)
    cycles = (days - Y2000_DAYS) // CYCLE_DAYS
    shifted = EPOCH + timedelta(days=days - cycles * CYCLE_DAYS, microseconds=rest)
    year = shifted.year + 400 * cycles
    return year, f"{year:04d}" + render_timestamp(shifted)[4:]


def json_value():
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False), TEXT,
    )
    return st.recursive(
        scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3), max_leaves=6
    )


@st.composite
def json_text(draw, top: str | None = None) -> str:
    """Valid (RFC 8259) JSON text, with any amount of JSON whitespace, raw newlines included, between tokens."""
    if top == "object":
        value = draw(st.dictionaries(TEXT, json_value(), max_size=3))
    elif draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(RAW_JSON))
    else:
        value = draw(json_value())
    text = json.dumps(
        value,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, None, 0, 2, "\t"])),
        separators=(draw(st.sampled_from([",", ", ", " ,\r\n", ",\t"])), draw(st.sampled_from([":", ": ", " :\n"]))),
    )
    return draw(JSON_WS) + text + draw(JSON_WS)


def _insert(base: str, char: str, at: int) -> str:
    at %= len(base) + 1
    return base[:at] + char + base[at:]


def _length_edges(prop: dict) -> list[int]:
    lengths = set()
    for bound in (prop.get("minLength"), prop.get("maxLength")):
        if bound is not None:
            lengths |= {max(bound - 1, 0), bound, bound + 1}
    return sorted(lengths)


def _case_variants(value: str) -> list[str]:
    return [value.upper(), value.title(), value + " ", " " + value, value + "\n", value + "\x00", value[:-1]]


def good_value(column, prop: dict, source_json: bool):
    """Values that are mostly valid, so that rows of all-good values test acceptance."""
    kind = column.kind
    if kind == STRING:
        if "enum" in prop:
            base = st.sampled_from([v for v in prop["enum"] if isinstance(v, str)])
        elif "pattern" in prop:
            low, high = prop.get("minLength", 0), prop.get("maxLength", math.inf)
            base = st.from_regex(prop["pattern"], alphabet=UTF8).filter(lambda s: low <= len(s) <= high)
        else:
            low, high = prop.get("minLength", 0), prop.get("maxLength", 30)
            base = st.text(st.one_of(st.sampled_from(SPECIAL_CHARS), UTF8), min_size=low,
                           max_size=min(high, low + 12))
    elif kind == TIMESTAMP:
        base = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                            timezones=st.just(UTC)).map(micros)
    elif kind == INTEGER:
        low = prop.get("minimum", INT64_MIN)
        base = st.integers(max(low, INT64_MIN), min(prop.get("maximum", INT64_MAX), INT64_MAX))
    elif kind == BOOLEAN:
        base = st.booleans()
    elif kind == JSON:
        base = json_text("object")
    elif kind == STRING_LIST:
        base = st.lists(TEXT, max_size=4)
    else:
        raise AssertionError(kind)
    return st.one_of(st.none(), base) if column.nullable else base


def wild_value(column, prop: dict, source_json: bool):
    """Edge cases, valid or not: nulls everywhere, values around every bound, broken text."""
    kind = column.kind
    if kind == STRING:
        options = [TEXT, st.sampled_from(SPECIAL_STRINGS)]
        if "pattern" in prop:
            matching = st.from_regex(prop["pattern"], alphabet=UTF8)
            options += [matching, st.builds(_insert, matching, st.sampled_from(SPECIAL_CHARS), st.integers(0, 300))]
            if "@" in prop["pattern"]:
                options.append(st.sampled_from(EMAILS))
        if "enum" in prop:
            members = [v for v in prop["enum"] if isinstance(v, str)]
            options.append(st.sampled_from(members + [w for v in members for w in _case_variants(v)]))
        lengths = _length_edges(prop)
        if lengths:
            options.append(st.builds(lambda c, n: c * n, st.sampled_from(["x", "😀", "é", "\n", "@"]),
                                     st.sampled_from(lengths)))
        base = st.one_of(*options)
    elif kind == TIMESTAMP:
        base = st.one_of(st.sampled_from(TIMESTAMP_EDGES), st.integers(INT64_MIN, INT64_MAX),
                         st.integers(YEAR_1 - 800 * 366 * DAY_US, YEAR_9999_END + 800 * 366 * DAY_US))
    elif kind == INTEGER:
        base = st.one_of(st.sampled_from(INTEGER_EDGES), st.integers(INT64_MIN, INT64_MAX), st.integers(-3, 3))
    elif kind == BOOLEAN:
        base = st.booleans()
    elif kind == JSON:
        options = [json_text(), json_text("object")]
        if not source_json:  # only plain-string JSON columns may hold text that is not JSON
            options += [st.sampled_from(INVALID_JSON), TEXT]
        base = st.one_of(*options)
    elif kind == STRING_LIST:
        item = st.one_of(st.none(), st.just(""), TEXT, st.sampled_from(SPECIAL_STRINGS))
        base = st.lists(item, max_size=4)
    else:
        raise AssertionError(kind)
    return st.one_of(st.none(), base)


@cache
def properties(category: str) -> dict[str, dict]:
    record = SCHEMAS.record(category)
    return {name: SCHEMAS.resolve(prop, record) for name, prop in record["properties"].items()}


@cache
def columns(category: str):
    return SCHEMAS.columns(category)


@cache
def json_columns(category: str) -> list[str]:
    return [c.name for c in columns(category) if c.kind == JSON]


@st.composite
def rows(draw, category: str, source_json: frozenset[str], mode: str | None = None) -> dict:
    """One row: all good values, one wild column among good ones, or wild values everywhere."""
    cols = columns(category)
    mode = mode or draw(st.sampled_from(["good", "one_wild", "wild"]))
    wild_index = draw(st.integers(0, len(cols) - 1)) if mode == "one_wild" else -1
    row = {}
    for index, column in enumerate(cols):
        wild = mode == "wild" and draw(st.booleans()) or index == wild_index
        row[column.name] = draw(value_strategy(category, index, wild, column.name in source_json))
    return row


@cache
def value_strategy(category: str, index: int, wild: bool, source_json: bool):
    column = columns(category)[index]
    return (wild_value if wild else good_value)(column, properties(category)[column.name], source_json)


@st.composite
def batches(draw, category: str, mode: str | None = None, max_rows: int = 8):
    """(rows, source_json, batch): a batch of several rows; source_json is a random subset of its JSON columns."""
    source_json = frozenset(draw(st.sets(st.sampled_from(json_columns(category))))) if json_columns(category) else (
        frozenset())
    generated = draw(st.lists(rows(category, source_json, mode), min_size=1, max_size=max_rows))
    junk = draw(st.booleans(), label="junk under nulls")
    return generated, source_json, build_batch(category, generated, source_json, junk)


def build_batch(category: str, generated: list[dict], source_json: frozenset[str], junk: bool = False):
    """The staged Arrow batch of the rows; with junk, null slots hold data (valid Arrow, as some readers make)."""
    cols = columns(category)
    schema = arrow_schema(cols, source_json=source_json)
    arrays = []
    for field, column in zip(schema, cols, strict=True):
        values = [row[column.name] for row in generated]
        storage_type = field.type.storage_type if isinstance(field.type, pa.JsonType) else field.type
        if column.kind == TIMESTAMP:
            array = pa.array(values, pa.int64()).cast(field.type)
        else:
            array = pa.array(values, storage_type)
        if junk:
            array = junk_under_nulls(array)
        if isinstance(field.type, pa.JsonType):
            array = pa.ExtensionArray.from_storage(field.type, array)
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


JUNK_TEXT = "=junk\n\x00😀"
JUNK_LIST = ["=junk", None, ""]


def junk_under_nulls(array: pa.Array) -> pa.Array:
    """The same logical array, with data behind its nulls: text, list items, or the most negative int64."""
    if array.null_count == 0:
        return array
    nulls = array.is_null()
    values = array.to_pylist() if not pa.types.is_timestamp(array.type) else array.cast(pa.int64()).to_pylist()
    if pa.types.is_string(array.type):
        dense = pa.array([JUNK_TEXT if v is None else v for v in values], pa.string())
        return pa.StringArray.from_buffers(len(dense), dense.buffers()[1], dense.buffers()[2], array.buffers()[0])
    if pa.types.is_list(array.type):
        dense = pa.array([JUNK_LIST if v is None else v for v in values], array.type)
        return pa.ListArray.from_arrays(dense.offsets, dense.values, mask=nulls)
    if pa.types.is_integer(array.type) or pa.types.is_timestamp(array.type):
        dense = pa.array([INT64_MIN if v is None else v for v in values], pa.int64())
        return pa.Array.from_buffers(array.type, len(dense), [array.buffers()[0], dense.buffers()[1]])
    return array


class BadJson(Exception):
    pass


def refuse_json_constant(name: str):
    raise ValueError(f"{name} is not in the JSON standard")


def reference_document(category: str, row: dict) -> dict:
    """The record as a JSON document, from the Python values alone; BadJson if a JSON text does not parse."""
    document = {}
    for column in columns(category):
        value = row[column.name]
        if value is not None and column.kind == TIMESTAMP:
            value = reference_timestamp(value)[1]
        elif value is not None and column.kind == JSON:
            try:
                value = json.loads(value, parse_float=Decimal, parse_constant=refuse_json_constant)
            except (ValueError, RecursionError) as error:
                raise BadJson(column.name) from error
        document[column.name] = value
    return document


@cache
def full_validator(category: str):
    return SCHEMAS.validator(SCHEMAS.record(category))


def reference_valid(category: str, row: dict) -> bool:
    try:
        document = reference_document(category, row)
    except BadJson:
        return False
    return full_validator(category).is_valid(document)


def same(a, b) -> bool:
    """Deep equality that also tells bool from int, float from Decimal, and NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b
