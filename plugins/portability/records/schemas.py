"""The JSON Schemas in `schemas/`: loading, validators, and what they imply for each format.

The record schemas are the single source of truth for a category's columns: their names,
order, types and nullability give the Arrow schema of the staged snapshot, the CSV header,
the Frictionless table schema and the checks every record must pass.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from portability.resources import config

# Column kinds, from the JSON types of a record property.
STRING, INTEGER, NUMBER, BOOLEAN, TIMESTAMP, JSON, STRING_LIST = (
    "string", "integer", "number", "boolean", "timestamp", "json", "string_list",
)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    nullable: bool
    description: str = ""


class SchemaSet:
    """Every schema under one folder, in one `referencing.Registry` keyed by `$id`."""

    def __init__(self, root: Path | None = None):
        self.root = root or config.schemas_dir()
        self._by_path = {
            path.relative_to(self.root).as_posix(): json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(self.root.rglob("*.schema.json"))
        }

    @cached_property
    def registry(self):
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        return Registry().with_resources(
            (schema["$id"], DRAFT202012.create_resource(schema)) for schema in self._by_path.values()
        )

    def document(self, relative_path: str) -> dict:
        return self._by_path[relative_path]

    @property
    def request(self) -> dict:
        return self.document("export_request.schema.json")

    @property
    def categories(self) -> list[str]:
        """Every exportable category, in the canonical order of the request schema."""
        return list(self.request["properties"]["categories"]["items"]["enum"])

    def record(self, category: str) -> dict:
        return self.document(f"records/{category}.schema.json")

    def validator(self, schema: dict):
        from jsonschema import Draft202012Validator

        return Draft202012Validator(
            schema, registry=self.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def resolve(self, subschema: dict, base: dict) -> dict:
        """`subschema` with a top-level `$ref` followed (sibling keywords win, as in 2020-12 annotations)."""
        if "$ref" not in subschema:
            return subschema
        resolved = self.registry.resolver(base_uri=base["$id"]).lookup(subschema["$ref"]).contents
        merged = dict(resolved)
        merged.update({k: v for k, v in subschema.items() if k != "$ref"})
        return merged

    def columns(self, category: str) -> list[Column]:
        schema = self.record(category)
        return [
            _column(name, self.resolve(prop, schema))
            for name, prop in schema["properties"].items()
        ]

    def bundled_record(self, category: str) -> dict:
        """The record schema with the schemas it references embedded under `$defs`.

        This is JSON Schema 2020-12 compound-document bundling: each embedded resource keeps its
        `$id`, so the file validates records on its own with any 2020-12 validator.
        """
        schema = copy.deepcopy(self.record(category))
        base = schema["$id"].rsplit("/", 1)[0] + "/"
        embedded = {}
        for target in sorted(_ref_documents(schema)):
            document = self.document("records/" + target)
            embedded[target.removesuffix(".schema.json")] = copy.deepcopy(document)
            assert document["$id"] == base + target, f"{target}: $id must match its path"
        if embedded:
            schema.setdefault("$defs", {}).update(embedded)
        return schema


def _ref_documents(node) -> set[str]:
    """File names that the `$ref`s inside a schema point to (same-folder references only)."""
    found = set()
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if isinstance(ref, str) and ref and not ref.startswith("#"):
            found.add(ref.split("#", 1)[0])
        for value in node.values():
            found |= _ref_documents(value)
    elif isinstance(node, list):
        for value in node:
            found |= _ref_documents(value)
    return found


def _column(name: str, prop: dict) -> Column:
    types = prop.get("type")
    if types is None and "enum" in prop:
        types = sorted({_json_type(v) for v in prop["enum"]})
    types = [types] if isinstance(types, str) else list(types or [])
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    if len(types) != 1:
        raise ValueError(f"record property {name!r} must have exactly one non-null type, not {types}")
    json_type = types[0]
    if json_type == "string":
        kind = TIMESTAMP if prop.get("format") == "date-time" else STRING
    elif json_type == "array":
        if prop.get("items", {}).get("type") != "string":
            raise ValueError(f"record property {name!r}: only arrays of strings are supported")
        kind = STRING_LIST
    elif json_type == "object":
        kind = JSON
    else:
        kind = json_type
    return Column(name, kind, nullable, prop.get("description", ""))


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return "string"


def arrow_schema(columns: list[Column], source_json: frozenset[str] = frozenset(), staged: bool = True):
    """The Arrow schema of a category's staged snapshot, or (staged=False) of its valid records.

    Staged columns are all nullable: the source may break the schema, and the validator judges.
    JSON values stay as their source text. Those of `source_json` columns were checked to be JSON
    by the source database (PostgreSQL json/jsonb) and are typed `arrow.json`, which the
    validator trusts; other JSON columns are plain strings that the validator parses.
    """
    import pyarrow as pa

    types = {
        STRING: pa.string(), INTEGER: pa.int64(), NUMBER: pa.float64(), BOOLEAN: pa.bool_(),
        TIMESTAMP: pa.timestamp("us", tz="UTC"), JSON: pa.string(), STRING_LIST: pa.list_(pa.string()),
    }
    return pa.schema([
        pa.field(c.name, pa.json_(pa.string()) if c.name in source_json else types[c.kind],
                 nullable=staged or c.nullable)
        for c in columns
    ])


def table_schema(columns: list[Column], file_format: str) -> dict:
    """A Frictionless Table Schema for one file of a category."""
    frictionless_types = {
        STRING: "string", INTEGER: "integer", NUMBER: "number", BOOLEAN: "boolean",
        TIMESTAMP: "datetime", JSON: "object", STRING_LIST: "array",
    }
    fields = []
    for column in columns:
        field = {"name": column.name, "type": frictionless_types[column.kind]}
        if column.kind == STRING_LIST and file_format == "parquet":
            field["type"] = "any"  # native Parquet lists; Frictionless only reads JSON-text arrays
        if column.description:
            field["description"] = column.description
        # In CSV an empty string and a missing value look alike, so only non-text columns can be required.
        if not column.nullable and column.kind not in (STRING, JSON):
            field["constraints"] = {"required": True}
        fields.append(field)
    if file_format == "parquet":
        # Frictionless reads Parquet through pandas, which turns a null integer into NaN; the
        # workaround Camtrap DP uses too. No required column can hold it.
        return {"fields": fields, "missingValues": ["", "nan"]}
    return {"fields": fields}
