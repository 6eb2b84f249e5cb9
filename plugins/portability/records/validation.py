"""Checking every record against its JSON Schema at columnar speed, with `jsonschema` as the judge.

Each record schema's flat rules (type, null, enum/const, length, pattern, bounds, list items)
are compiled once into vectorised Arrow checks. A row that passes them all is valid by
construction: every check is exact or stricter than the keyword it stands for. A row that
fails any of them, or has a value the compiled checks cannot judge (a keyword we do not
compile, a JSON value that is not known to be valid JSON), is a suspect: it is rebuilt as a
JSON document and judged by `jsonschema` itself, which also gives the quarantine reasons.
So the verdict always equals `jsonschema`'s, and only unusual rows pay for it. The
equivalence is proven by property-based tests (tests/records/test_validation_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from portability.records.patterns import to_re2
from portability.records.rendering import RenderedBatch, list_items, parse_json
from portability.records.schemas import (
    BOOLEAN,
    INTEGER,
    JSON,
    NUMBER,
    STRING,
    STRING_LIST,
    TIMESTAMP,
    Column,
    SchemaSet,
)

_MESSAGE_LIMIT = 500
_INT64 = (-(2**63), 2**63 - 1)
# Keywords that never reject a value.
_ANNOTATIONS = {"title", "description", "$comment", "examples", "default", "deprecated", "readOnly", "writeOnly"}
_RECORD_KEYWORDS = _ANNOTATIONS | {"$schema", "$id", "$defs", "type", "properties", "required", "additionalProperties"}
# The JSON types a column kind's non-null values have.
_KIND_TYPES = {STRING: "string", TIMESTAMP: "string", INTEGER: "integer", NUMBER: "number", BOOLEAN: "boolean",
               STRING_LIST: "array"}
# First character of valid JSON text -> its JSON type, for source-validated JSON columns.
_JSON_START = {"{": "object", "[": "array", '"': "string"}

Check = Callable[[RenderedBatch, int], pa.Array]  # -> BooleanArray, True where the value is surely valid


class InvalidRecords(RuntimeError):
    """A record failed its schema while the request said on_invalid=fail."""


@dataclass
class Verdict:
    """The outcome for one batch: which rows are valid, and why the others are not."""

    valid: pa.Array                                          # BooleanArray without nulls
    problems: dict[int, list[dict]] = field(default_factory=dict)  # row -> reasons, for invalid rows
    suspects: int = 0                                        # rows the full validator had to judge


class BatchValidator:
    """Validates Arrow batches of one category (its staged schema) against the record schema.

    `references` (the mapping's, see `mapping.Reference`) are checked too: a record whose reference
    is set while every column the join takes from the referenced row is null points outside the
    account (or nowhere) and is invalid, with that reason instead of the nulls' own.
    """

    def __init__(self, schemas: SchemaSet, category: str, references=()):
        record = schemas.record(category)
        self.columns = schemas.columns(category)
        names = [c.name for c in self.columns]
        self._references = [(names.index(r.column), r.what, [names.index(j) for j in r.joined],
                             tuple(f"/{j}" for j in r.joined)) for r in references]
        self._full = schemas.validator(record)
        self._record_is_flat = _record_is_flat(record, self.columns)
        self._checks = [
            _compile(column, schemas.resolve(record["properties"][column.name], record), schemas, record)
            for column in self.columns
        ]

    def check(self, rendered: RenderedBatch) -> Verdict:
        verdict = self._check_schema(rendered)
        unresolved = self._unresolved(rendered)
        if not unresolved:
            return verdict
        problems = dict(verdict.problems)
        for row, (reasons, joined_paths) in unresolved.items():
            # The joined columns are null because nothing was joined: that is the reason, not their nulls.
            kept = [p for p in problems.get(row, []) if not any(p["path"] == path or p["path"].startswith(path + "/")
                                                                for path in joined_paths)]
            problems[row] = sorted(reasons + kept, key=lambda p: (p["path"], p["keyword"], p["message"]))
        valid = pa.array([row not in problems for row in range(rendered.num_rows)], pa.bool_())
        return Verdict(valid, problems, verdict.suspects)

    def _unresolved(self, rendered: RenderedBatch) -> dict[int, tuple[list[dict], tuple[str, ...]]]:
        """Rows whose references found no row of this account: row -> (reasons, the joined columns' paths)."""
        found: dict[int, tuple[list[dict], tuple[str, ...]]] = {}
        for column, what, joined, joined_paths in self._references:
            ids = rendered.batch.column(column)
            unresolved = pc.is_valid(ids)
            for index in joined:
                unresolved = pc.and_(unresolved, pc.is_null(rendered.batch.column(index)))
            if not unresolved.true_count:
                continue
            rows = pc.indices_nonzero(unresolved).to_pylist()
            name = self.columns[column].name
            for row, value in zip(rows, pc.take(ids, pa.array(rows, pa.int64())).to_pylist(), strict=True):
                reasons, paths = found.get(row, ([], ()))
                reasons.append({"path": f"/{name}", "keyword": "reference", "message": _clip(
                    f"{what} {value} is not a {what} of this account (it belongs to another account or does not "
                    "exist)")})
                found[row] = (reasons, paths + joined_paths)
        return found

    def _check_schema(self, rendered: RenderedBatch) -> Verdict:
        rows = rendered.num_rows
        if not self._record_is_flat:
            surely_valid = pa.repeat(pa.scalar(False, pa.bool_()), rows)
        else:
            surely_valid = _all_of([check(rendered, index) for index, check in enumerate(self._checks)
                                    if check is not _always], rows)
        if not surely_valid.false_count:
            return Verdict(surely_valid)
        suspects = pc.indices_nonzero(pc.invert(surely_valid)).to_pylist()
        problems = {}
        for row, (document, bad_json) in zip(suspects, documents(rendered, suspects), strict=True):
            found = self.problems(document, bad_json)
            if found:
                problems[row] = found
        valid = pa.array([row not in problems for row in range(rows)], pa.bool_()) if problems else (
            pa.repeat(pa.scalar(True, pa.bool_()), rows))
        return Verdict(valid, problems, len(suspects))

    def problems(self, document: dict, bad_json: list[str] = ()) -> list[dict]:
        """Why the record breaks its schema, as {path, keyword, message}; empty when it is valid."""
        found = [
            {"path": f"/{name}", "keyword": "json",
             "message": "the source value is not valid JSON (or nests too deeply to check)"}
            for name in bad_json
        ]
        for error in self._full.iter_errors(document):
            if error.absolute_path and error.absolute_path[0] in bad_json:
                continue
            found.append({
                "path": "/" + "/".join(str(p) for p in error.absolute_path),
                "keyword": str(error.validator),
                "message": _clip(error.message),
            })
        return sorted(found, key=lambda p: (p["path"], p["keyword"], p["message"]))


def documents(rendered: RenderedBatch, rows: list[int]) -> list[tuple[dict, list[str]]]:
    """The given rows as the JSON documents the schema describes (JSON text parsed, numbers exact)."""
    taken = pa.array(rows, pa.int64())
    values = {}
    for index, column in enumerate(rendered.columns):
        if column.kind in (STRING, TIMESTAMP, JSON):
            values[column.name] = pc.take(rendered.text(index), taken).to_pylist()
        else:
            values[column.name] = pc.take(rendered.batch.column(index), taken).to_pylist()
    out = []
    for position in range(len(rows)):
        document, bad_json = {}, []
        for column in rendered.columns:
            value = values[column.name][position]
            if column.kind == JSON and value is not None:
                try:
                    value = parse_json(value, parse_float=Decimal)
                except ValueError:
                    bad_json.append(column.name)
            document[column.name] = value
        out.append((document, bad_json))
    return out


def _record_is_flat(record: dict, columns: list[Column]) -> bool:
    """Whether the record-level keywords hold for any row shaped by the columns (exactly the properties)."""
    if set(record) - _RECORD_KEYWORDS or record.get("type", "object") != "object":
        return False
    if record.get("additionalProperties", False) not in (False, True):
        return False
    return set(record.get("required", [])) <= {c.name for c in columns}


def _compile(column: Column, prop: dict, schemas: SchemaSet, base: dict) -> Check:
    """The vectorised check of one column; anything it cannot judge exactly is left to the full validator."""
    keywords = set(prop) - _ANNOTATIONS
    null_ok = _null_allowed(prop)
    value_checks: list[Check] = []
    judged = {"type", "enum", "const"}

    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types) if types is not None else None
    if types is not None:
        value_checks.append(_type_check(column, set(types)))
    for keyword in ("enum", "const"):
        if keyword in prop:
            allowed = prop["enum"] if keyword == "enum" else [prop["const"]]
            value_checks.append(_enum_check(column, allowed))

    if column.kind in (STRING, TIMESTAMP):
        judged |= {"minLength", "maxLength", "pattern", "format"}
        value_checks += _string_checks(prop)
    elif column.kind == INTEGER:
        judged |= {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
        value_checks += _integer_checks(prop)
    elif column.kind == STRING_LIST:
        judged |= {"items", "minItems", "maxItems"}
        value_checks += _list_checks(prop, schemas, base)

    if keywords - judged:
        return _nothing_is_sure
    return _combine(value_checks, null_ok)


def _nothing_is_sure(rendered: RenderedBatch, index: int) -> pa.Array:
    return pa.repeat(pa.scalar(False, pa.bool_()), rendered.num_rows)


def _combine(value_checks: list[Check], null_ok: bool) -> Check:
    value_checks = [value_check for value_check in value_checks if value_check is not _always]
    if null_ok and not value_checks:
        return _always

    def check(rendered: RenderedBatch, index: int) -> pa.Array:
        array = rendered.batch.column(index)
        if not array.null_count:  # the common case: no null to treat apart, fewer kernels per batch
            return _all_of([value_check(rendered, index) for value_check in value_checks], len(array))
        present = pc.is_valid(array)
        absent = pc.invert(present)
        # Keywords apply to present values only; a null passes them and is judged by null_ok.
        results = [pc.or_(absent, pc.fill_null(value_check(rendered, index), False)) for value_check in value_checks]
        return _all_of(results if null_ok else [present, *results], len(array))

    return check


def _all_of(results: list[pa.Array], rows: int) -> pa.Array:
    """True where every result is true (a null counts as false); all true when there is none."""
    combined = None
    for result in results:
        if result.null_count:
            result = pc.fill_null(result, False)
        combined = result if combined is None else pc.and_(combined, result)
    return combined if combined is not None else pa.repeat(pa.scalar(True, pa.bool_()), rows)


def _null_allowed(prop: dict) -> bool:
    types = prop.get("type")
    if types is not None and "null" not in ([types] if isinstance(types, str) else types):
        return False
    if "enum" in prop and not any(v is None for v in prop["enum"]):
        return False
    return not ("const" in prop and prop["const"] is not None)


def _type_check(column: Column, types: set[str]) -> Check:
    if column.kind == JSON:
        starts = [char for char, json_type in _JSON_START.items() if json_type in types]

        def json_type_check(rendered: RenderedBatch, index: int) -> pa.Array:
            # Only source-validated JSON (PostgreSQL json/jsonb) can be judged by its first character.
            if not isinstance(rendered.batch.column(index).type, pa.JsonType) or not starts:
                return _nothing_is_sure(rendered, index)
            text = rendered.text(index)
            # PostgreSQL's jsonb text never starts with whitespace: a plain prefix test settles nearly
            # every value, and only the others (json keeps the source's spacing) need the regex.
            ok = pc.fill_null(_starts_with_any(text, starts), False)
            if pc.all(ok).as_py():
                return ok
            pattern = "^[ \\t\\n\\r]*[" + "".join("\\" + c for c in starts) + "]"
            others = pc.invert(ok)
            return pc.replace_with_mask(ok, others, pc.match_substring_regex(pc.filter(text, others), pattern))

        return json_type_check
    kind_type = _KIND_TYPES[column.kind]
    holds = kind_type in types or (kind_type == "integer" and "number" in types)
    if column.kind == NUMBER:
        holds = "number" in types  # a float with an integral value would also be an "integer"
    return _constant(holds)


def _starts_with_any(text: pa.Array, starts: list[str]) -> pa.Array:
    found = pc.starts_with(text, starts[0])
    for start in starts[1:]:
        found = pc.or_(found, pc.starts_with(text, start))
    return found


def _always(rendered: RenderedBatch, index: int) -> pa.Array:
    """A check every value passes: skipped when checks are combined."""
    return pa.repeat(pa.scalar(True, pa.bool_()), rendered.num_rows)


def _constant(value: bool) -> Check:
    return _always if value else _nothing_is_sure


def _enum_check(column: Column, allowed: list) -> Check:
    # jsonschema's equality: bool is not int, 1 == 1.0, strings compare as strings.
    if column.kind in (STRING, TIMESTAMP):
        members = pa.array([v for v in allowed if isinstance(v, str)], pa.string())

        def check(rendered: RenderedBatch, index: int) -> pa.Array:
            return pc.is_in(rendered.text(index), value_set=members)
    elif column.kind == INTEGER:
        members = pa.array(sorted({int(v) for v in allowed if isinstance(v, int | float) and not isinstance(v, bool)
                                   and float(v).is_integer() and _INT64[0] <= v <= _INT64[1]}), pa.int64())

        def check(rendered: RenderedBatch, index: int) -> pa.Array:
            return pc.is_in(rendered.batch.column(index), value_set=members)
    elif column.kind == BOOLEAN:
        members = pa.array([v for v in allowed if isinstance(v, bool)], pa.bool_())

        def check(rendered: RenderedBatch, index: int) -> pa.Array:
            return pc.is_in(rendered.batch.column(index), value_set=members)
    else:
        return _nothing_is_sure
    return check


def _string_checks(prop: dict) -> list[Check]:
    checks = []
    if "minLength" in prop or "maxLength" in prop:
        low, high = prop.get("minLength", 0), prop.get("maxLength")

        def length_check(rendered: RenderedBatch, index: int) -> pa.Array:
            length = pc.utf8_length(rendered.text(index))  # code points, like len() of a Python str
            ok = pc.greater_equal(length, low)
            return ok if high is None else pc.and_(ok, pc.less_equal(length, high))

        checks.append(length_check)
    if "pattern" in prop:
        translated = to_re2(prop["pattern"])
        if translated is None:
            checks.append(_nothing_is_sure)
        else:
            def pattern_check(rendered: RenderedBatch, index: int) -> pa.Array:
                return pc.match_substring_regex(rendered.text(index), translated)

            checks.append(pattern_check)
    if "format" in prop and _format_is_asserted(prop["format"]):
        checks.append(_nothing_is_sure)  # the few asserted formats are left to jsonschema's own checkers
    return checks


def _format_is_asserted(name: str) -> bool:
    from jsonschema import Draft202012Validator

    return name in Draft202012Validator.FORMAT_CHECKER.checkers


def _integer_checks(prop: dict) -> list[Check]:
    checks = []
    for keyword, compare in (("minimum", pc.greater_equal), ("maximum", pc.less_equal),
                             ("exclusiveMinimum", pc.greater), ("exclusiveMaximum", pc.less)):
        if keyword not in prop:
            continue
        bound = prop[keyword]
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            checks.append(_nothing_is_sure)
        elif isinstance(bound, float) and not bound.is_integer():
            checks.append(_nothing_is_sure)  # exact, but not worth the rounding care; never used by our schemas
        elif not _INT64[0] <= bound <= _INT64[1]:
            # Every int64 is on one side of a bound outside the int64 range.
            above = bound < _INT64[0]
            checks.append(_constant(above == (keyword in ("minimum", "exclusiveMinimum"))))
        else:
            checks.append(_bound_check(compare, int(bound)))
    return checks


def _bound_check(compare, bound: int) -> Check:
    def check(rendered: RenderedBatch, index: int) -> pa.Array:
        return compare(rendered.batch.column(index), pa.scalar(bound, pa.int64()))

    return check


def _list_checks(prop: dict, schemas: SchemaSet, base: dict) -> list[Check]:
    checks = []
    if "minItems" in prop or "maxItems" in prop:
        low, high = prop.get("minItems", 0), prop.get("maxItems")

        def count_check(rendered: RenderedBatch, index: int) -> pa.Array:
            count = pc.list_value_length(rendered.batch.column(index))
            ok = pc.greater_equal(count, low)
            return ok if high is None else pc.and_(ok, pc.less_equal(count, high))

        checks.append(count_check)
    if "items" in prop:
        items = prop["items"]
        if not isinstance(items, dict):
            return [*checks, _nothing_is_sure]
        item_check = _compile(Column("item", STRING, True), schemas.resolve(items, base), schemas, base)

        def items_check(rendered: RenderedBatch, index: int) -> pa.Array:
            lists = rendered.batch.column(index)
            flat = list_items(lists)  # aligned with list_parent_indices, which also counts null lists' items
            item_column = Column("item", STRING, True)
            item_batch = RenderedBatch(pa.RecordBatch.from_arrays([flat], names=["item"]), [item_column])
            bad_items = pc.invert(pc.fill_null(item_check(item_batch, 0), False))
            bad_rows = pc.filter(pc.list_parent_indices(lists), bad_items)
            return pc.invert(pc.is_in(pa.array(range(len(lists)), pa.int64()), value_set=pc.cast(bad_rows, pa.int64())))

        checks.append(items_check)
    return checks


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_LIMIT else message[:_MESSAGE_LIMIT] + "…"
