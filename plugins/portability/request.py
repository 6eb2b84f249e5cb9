"""Export requests: validated against `schemas/export_request.schema.json` before any source read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from portability.schemas import SchemaSet

MAX_REQUEST_BYTES = 16_384
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
    try:
        size = len(json.dumps(conf, default=str))
    except (TypeError, ValueError):
        raise RequestError("invalid export request: it is not serialisable as JSON") from None
    if size > MAX_REQUEST_BYTES:
        raise RequestError(f"invalid export request: {size} bytes is over the {MAX_REQUEST_BYTES}-byte limit")

    schema = schemas.request
    errors = sorted(schemas.validator(schema).iter_errors(dict(conf)), key=_error_order)
    if errors:
        raise RequestError(_describe(errors[0], schema))

    properties = schema["properties"]
    merged = {name: conf.get(name, prop.get("default")) for name, prop in properties.items()}
    return ExportRequest(
        account_id=merged["account_id"],
        # Canonical order, so equal requests give equal archives whatever order they were asked in.
        categories=tuple(c for c in properties["categories"]["items"]["enum"] if c in merged["categories"]),
        formats=tuple(f for f in properties["formats"]["items"]["enum"] if f in merged["formats"]),
        expires_in_hours=merged["expires_in_hours"],
        on_invalid=merged["on_invalid"],
        **{name: merged[name] for name in REQUESTER_FIELDS},
    )


def _error_order(error) -> tuple:
    return (list(error.absolute_path), error.validator)


def _describe(error, schema: dict) -> str:
    allowed = sorted(schema["properties"])
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(schema["properties"]))
        names = ", ".join(_clip(repr(name)) for name in unknown)
        return f"invalid export request: unknown field {names}; allowed fields are {', '.join(allowed)}"
    if error.validator == "required":
        return f"invalid export request: field 'account_id' is required ({_hint(schema, 'account_id')})"
    path = list(error.absolute_path)
    field = path[0] if path else "(request)"
    where = "".join(f"[{p}]" for p in path[1:])
    hint = _hint(schema, field) if field in schema["properties"] else ""
    return f"invalid export request: field '{field}{where}': {_clip(error.message)}" + (f" ({hint})" if hint else "")


def _hint(schema: dict, field: str) -> str:
    prop = schema["properties"][field]
    if "items" in prop and "enum" in prop["items"]:
        return "allowed: " + ", ".join(prop["items"]["enum"])
    if "enum" in prop:
        return "allowed: " + ", ".join(prop["enum"])
    return prop.get("description", "")


def _clip(text: str, limit: int = 200) -> str:
    """Echo at most `limit` characters of hostile or oversized input back."""
    return text if len(text) <= limit else text[:limit] + "…"


def export_id_for_run(dag_id: str, run_id: str) -> str:
    return str(uuid.uuid5(EXPORT_ID_NAMESPACE, f"{dag_id}\n{run_id}"))


def new_export_id() -> str:
    return str(uuid.uuid4())


def dag_params(schemas: SchemaSet) -> dict:
    """The account_export DAG's Params, one per property of the request schema."""
    from airflow.sdk import Param

    params = {}
    for name, prop in schemas.request["properties"].items():
        keywords = {k: v for k, v in prop.items() if k != "default"}
        if prop.get("type") == "array" and "enum" in prop.get("items", {}):
            keywords["examples"] = prop["items"]["enum"]  # the trigger form renders a multi-select
        if "default" in prop:
            params[name] = Param(prop["default"], **keywords)
        elif name in schemas.request.get("required", []):
            params[name] = Param(**keywords)
        else:  # optional without a default (who to notify): the form may leave it empty
            params[name] = Param(None, **{**keywords, "type": ["null", keywords["type"]]})
    return params
