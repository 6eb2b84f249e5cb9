"""The declarative mapping from an ESP's tables to export categories (one query per category)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from portability import config


class MappingError(RuntimeError):
    """The mapping file does not fit the record schemas; the message says what to change."""


@dataclass(frozen=True)
class CategoryQuery:
    category: str
    title: str
    description: str
    query: str
    order_by: str

    def ordered(self) -> str:
        return f"SELECT * FROM (\n{self.query.strip()}\n) AS category_rows ORDER BY {self.order_by}"


def load_mapping(path: Path | None = None) -> dict[str, CategoryQuery]:
    path = path or config.mapping_path()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"cannot read the source mapping {path}: {exc}") from None
    mapping = {}
    for category, entry in document.get("categories", {}).items():
        missing = {"query", "order_by"} - set(entry)
        if missing:
            raise MappingError(f"{path}: category {category!r} lacks {sorted(missing)}")
        if "%(account_id)s" not in entry["query"]:
            raise MappingError(f"{path}: the query of {category!r} must filter on %(account_id)s")
        mapping[category] = CategoryQuery(
            category=category,
            title=entry.get("title", category),
            description=entry.get("description", ""),
            query=entry["query"],
            order_by=entry["order_by"],
        )
    return mapping
