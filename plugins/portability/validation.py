"""Checking every record against its JSON Schema, and the reasons a record is quarantined."""

from __future__ import annotations

from portability.records import Record
from portability.schemas import SchemaSet

_MESSAGE_LIMIT = 500


class InvalidRecords(RuntimeError):
    """A record failed its schema while the request said on_invalid=fail."""


class RecordValidator:
    def __init__(self, schemas: SchemaSet, category: str):
        self._validator = schemas.validator(schemas.record(category))

    def problems(self, record: Record) -> list[dict]:
        """Why the record breaks its schema, as {path, keyword, message}; empty when it is valid."""
        found = [
            {"path": f"/{name}", "keyword": "json", "message": "the source value is not valid JSON"}
            for name in record.bad_json
        ]
        for error in self._validator.iter_errors(record.document):
            if error.absolute_path and error.absolute_path[0] in record.bad_json:
                continue
            found.append({
                "path": "/" + "/".join(str(p) for p in error.absolute_path),
                "keyword": str(error.validator),
                "message": _clip(error.message),
            })
        return sorted(found, key=lambda p: (p["path"], p["keyword"], p["message"]))


def _clip(message: str) -> str:
    return message if len(message) <= _MESSAGE_LIMIT else message[:_MESSAGE_LIMIT] + "…"
