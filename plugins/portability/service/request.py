"""Export requests: validated against `schemas/export_request.schema.json` before any source read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from portability.records.schemas import SchemaSet
from portability.records.values import render_timestamp

MAX_REQUEST_BYTES = 16_384
MAX_REQUEST_DEPTH = 8  # the schema needs 2 (a list of names); anything deeper is hostile
# Fixed namespace: the export id of a DAG run is derived from its run id, so a retried or
# replayed run keeps its export id and can never publish a second archive.
EXPORT_ID_NAMESPACE = uuid.UUID("6f1f5d2e-3f7b-5c53-9d1e-7a0c4b8e2a41")


class RequestError(ValueError):
    """A malformed export request; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ExportRequest:
    account_id: str
    categories: tuple[str, ...]
    formats: tuple[str, ...]
    expires_in_hours: int
    on_invalid: str
    since: str | None = None  # canonical RFC 3339 in UTC
    until: str | None = None
    subject_email: str | None = field(default=None, repr=False)  # a person's address: never in a log line
    # Who asked and where to tell them: kept in the request ledger, never in the plan (nor in XCom).
    requested_by: str | None = None
    notify_email: str | None = None
    webhook_url: str | None = None

    def to_dict(self) -> dict:
        """The export's options: what the archive depends on."""
        data = {k: v for k, v in asdict(self).items() if k not in REQUESTER_FIELDS}
        data["categories"], data["formats"] = list(self.categories), list(self.formats)
        return data

    def requester(self) -> dict:
        return {name: getattr(self, name) for name in REQUESTER_FIELDS}


REQUESTER_FIELDS = ("requested_by", "notify_email", "webhook_url")


def parse_request(conf: Mapping, schemas: SchemaSet) -> ExportRequest:
    """Validate a request (DAG conf, REST body or command options) and fill in the defaults."""
    if not isinstance(conf, Mapping):
        raise RequestError(f"invalid export request: expected a JSON object, got {type(conf).__name__}")
    schema = schemas.request
    unknown = [name for name in conf if name not in schema["properties"]]
    if unknown:
        raise RequestError(_unknown_fields(unknown, schema))
    _check_shape(conf)

    errors = sorted(schemas.validator(schema).iter_errors(dict(conf)), key=_error_order)
    if errors:
        raise RequestError(_describe(errors[0], schema))

    properties = schema["properties"]
    # Omitted and null mean the same: the default (the trigger form sends null for a field left empty).
    merged = {name: prop.get("default") if conf.get(name) is None else conf[name] for name, prop in properties.items()}
    since, until = _instant(merged, "since"), _instant(merged, "until")
    # Compared as instants, not as the text of the request (where "00:00:00.5Z" sorts before "00:00:00Z").
    if since and until and _parsed(until) <= _parsed(since):
        raise RequestError(f"invalid export request: field 'until' ({until}) must be after 'since' ({since})")
    categories = merged["categories"]
    if merged["subject_email"] is not None:
        categories = _subject_categories(categories, conf.get("categories"), properties["categories"]["default"])
    return ExportRequest(
        account_id=merged["account_id"],
        # Canonical order, so equal requests give equal archives whatever order they were asked in.
        categories=tuple(c for c in properties["categories"]["items"]["enum"] if c in categories),
        formats=tuple(f for f in properties["formats"]["items"]["enum"] if f in merged["formats"]),
        expires_in_hours=merged["expires_in_hours"],
        on_invalid=merged["on_invalid"],
        since=since, until=until, subject_email=merged["subject_email"],
        **{name: merged[name] for name in REQUESTER_FIELDS},
    )


def _instant(merged: dict, name: str) -> str | None:
    """An RFC 3339 instant as the ledger, the queries and the manifest take it: UTC, microseconds, `Z`."""
    value = merged[name]
    if value is None:
        return None
    try:
        instant = _parsed(value)
        # An offset can carry an instant out of the years 1 to 9999 (9999-12-31T23:59:59-01:00): refused too.
        in_utc = instant.astimezone(UTC) if instant.tzinfo is not None else None
    except (ValueError, OverflowError):
        in_utc = None
    if in_utc is None or "T" not in value.upper():
        raise RequestError(f"invalid export request: field {name!r}: {_clip(repr(value))} is not an RFC 3339 "
                           "instant with its offset, e.g. 2025-01-01T00:00:00Z")
    return render_timestamp(in_utc)


def _parsed(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))


def _subject_categories(categories: list, asked: object, default: list) -> list:
    """A data subject's export holds the categories the source mapping can narrow to one address.

    Left to its default (omitted, null, or the trigger form's full list), a request takes all of them;
    a category named on purpose that holds nothing about one person is refused by field name.
    """
    from portability.resources.mapping import MappingError, load_mapping

    try:
        mapping = load_mapping()
    except MappingError as exc:
        raise RequestError(str(exc)) from None
    about_one = [c for c in default if c in mapping and mapping[c].subject_query]
    if not about_one:
        raise RequestError("invalid export request: field 'subject_email': the source mapping has no category "
                           "narrowed to one data subject ([categories.<category>.subject])")
    if asked is None or sorted(categories) == sorted(default):
        return about_one
    other = [c for c in categories if c not in about_one]
    if other:
        raise RequestError(f"invalid export request: field 'categories': {', '.join(other)} cannot be narrowed to "
                           f"one data subject (with subject_email, allowed: {', '.join(about_one)})")
    return categories


def _check_shape(conf: Mapping) -> None:
    """Refuse, naming the field, what could exhaust the validator: deep nesting, huge values, non-JSON."""
    total = 0
    for name, value in conf.items():
        try:
            total += len(json.dumps({name: value}))
        except RecursionError:
            raise RequestError(f"invalid export request: field {name!r} is nested too deeply") from None
        except (TypeError, ValueError):
            raise RequestError(f"invalid export request: field {name!r} is not a JSON value") from None
        if _depth(value) > MAX_REQUEST_DEPTH:
            raise RequestError(f"invalid export request: field {name!r} is nested more than "
                               f"{MAX_REQUEST_DEPTH} levels deep")
        if total > MAX_REQUEST_BYTES:
            raise RequestError(f"invalid export request: field {name!r} takes the request over its "
                               f"{MAX_REQUEST_BYTES}-byte limit")


def _depth(value) -> int:
    """How deeply a JSON value nests, counted without recursion (hostile nesting cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_REQUEST_DEPTH:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, Mapping):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((child, level + 1) for child in item)
    return deepest


def _unknown_fields(unknown: list, schema: dict) -> str:
    names = ", ".join(_clip(repr(name)) for name in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return (f"invalid export request: unknown field {names}{more}; allowed fields are "
            f"{', '.join(sorted(schema['properties']))}")


def _error_order(error) -> tuple:
    return (list(error.absolute_path), error.validator)


def _describe(error, schema: dict) -> str:
    if error.validator == "required":
        return f"invalid export request: field 'account_id' is required ({_hint(schema, 'account_id')})"
    path = list(error.absolute_path)
    field = path[0] if path else "(request)"
    where = "".join(f"[{p}]" for p in path[1:])
    if field == "subject_email":  # a person's address is never echoed into an error, and so into a log
        return ("invalid export request: field 'subject_email': not an email address of at most 254 characters "
                "(one address, e.g. jane@example.com)")
    hint = _hint(schema, field) if field in schema["properties"] else ""
    return f"invalid export request: field '{field}{where}': {_clip(error.message)}" + (f" ({hint})" if hint else "")


def _hint(schema: dict, field: str) -> str:
    prop = schema["properties"][field]
    if "items" in prop and "enum" in prop["items"]:
        return "allowed: " + ", ".join(prop["items"]["enum"])
    if "enum" in prop:
        return "allowed: " + ", ".join(value for value in prop["enum"] if value is not None)
    return prop.get("description", "")


def _clip(text: str, limit: int = 200) -> str:
    """Echo at most `limit` characters of hostile or oversized input back."""
    return text if len(text) <= limit else text[:limit] + "…"


def export_id_for_run(dag_id: str, run_id: str) -> str:
    return str(uuid.uuid5(EXPORT_ID_NAMESPACE, f"{dag_id}\n{run_id}"))


def new_export_id() -> str:
    return str(uuid.uuid4())


def dag_params(schemas: SchemaSet) -> dict:
    """The account_export DAG's Params: the request schema's properties as they are, one contract for the form,
    the REST conf and `parse_request`. A property whose type allows null is optional in the trigger form."""
    from airflow.sdk import Param

    params = {}
    for name, prop in schemas.request["properties"].items():
        keywords = {k: v for k, v in prop.items() if k != "default"}
        if "array" in _types(prop) and "enum" in prop.get("items", {}):
            keywords["examples"] = prop["items"]["enum"]  # the trigger form renders a multi-select
        if "default" in prop:
            params[name] = Param(prop["default"], **keywords)
        elif name in schemas.request.get("required", []):
            params[name] = Param(**keywords)
        else:
            params[name] = Param(None, **keywords)
    return params


def _types(prop: dict) -> list[str]:
    kind = prop.get("type", [])
    return kind if isinstance(kind, list) else [kind]
