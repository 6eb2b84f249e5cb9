"""The declarative mapping from an ESP's tables to export categories (one query per category)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from portability.resources import config


class MappingError(RuntimeError):
    """The mapping file does not fit the record schemas; the message says what to change."""


@dataclass(frozen=True)
class Reference:
    """A record column naming a row of another table, which the query joins within the account.

    `joined` are the record's columns the join takes from that row: when `column` is set but
    every one of them is null, the join found no row of this account (the row belongs to another
    account or does not exist), and the record is quarantined with that reason.
    """

    column: str
    what: str
    joined: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"column": self.column, "what": self.what, "joined": list(self.joined)}


@dataclass(frozen=True)
class CategoryQuery:
    category: str
    title: str
    description: str
    query: str
    order_by: str
    count: str = ""  # the rows the account owns in the category's source table, counted apart from the query
    references: tuple[Reference, ...] = ()
    # One data subject's rows of the category (`%(subject_email)s`); empty when it holds nothing about a subject.
    subject_query: str = ""
    subject_count: str = ""

    def ordered(self) -> str:
        return f"SELECT * FROM (\n{self.query.strip()}\n) AS category_rows ORDER BY {self.order_by}"

    def for_subject(self) -> CategoryQuery:
        """The same category narrowed to one data subject's rows: its subject query and count in their place."""
        if not self.subject_query:
            raise MappingError(f"the source mapping has no subject query for {self.category!r}")
        return replace(self, query=self.subject_query, count=self.subject_count, subject_query="", subject_count="")


# The parameters every query may use; the subject's address only in subject queries. %(since)s and %(until)s
# bound messages and events in time (timestamptz, or NULL for no bound): cast them, %(since)s::timestamptz.
PARAMETERS = ("account_id", "since", "until", "subject_email")


def load_mapping(path: Path | None = None) -> dict[str, CategoryQuery]:
    path = path or config.mapping_path()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"cannot read the source mapping {path}: {exc}") from None
    mapping = {}
    for category, entry in document.get("categories", {}).items():
        missing = {"query", "order_by", "count"} - set(entry)
        if missing:
            hint = "" if "count" not in missing else (
                " (`count`: a query counting every row the account owns in the category's source table, "
                "e.g. SELECT count(*) FROM <table> WHERE account_id = %(account_id)s)")
            raise MappingError(f"{path}: category {category!r} lacks {sorted(missing)}{hint}")
        for key in ("query", "count"):
            if "%(account_id)s" not in entry[key]:
                raise MappingError(f"{path}: the {key} of {category!r} must filter on %(account_id)s")
            if "%(subject_email)s" in entry[key]:
                raise MappingError(f"{path}: the {key} of {category!r} is account-wide: the subject's address "
                                   f"belongs in [categories.{category}.subject]")
        subject = _subject(path, category, entry.get("subject"))
        mapping[category] = CategoryQuery(
            category=category,
            title=entry.get("title", category),
            description=entry.get("description", ""),
            query=entry["query"],
            order_by=entry["order_by"],
            count=entry["count"],
            references=_references(path, category, entry.get("references", [])),
            subject_query=subject.get("query", ""),
            subject_count=subject.get("count", ""),
        )
    return mapping


def _subject(path: Path, category: str, entry) -> dict:
    """The optional `[categories.<category>.subject]`: `query` and `count` of one data subject's rows."""
    if entry is None:
        return {}
    if not isinstance(entry, dict) or set(entry) != {"query", "count"}:
        raise MappingError(f"{path}: [categories.{category}.subject] has exactly `query` and `count`")
    for key in ("query", "count"):
        if not isinstance(entry[key], str) or not all(
                f"%({name})s" in entry[key] for name in ("account_id", "subject_email")):
            raise MappingError(f"{path}: the subject {key} of {category!r} must filter on %(account_id)s and "
                               "%(subject_email)s (case-insensitively: lower(email) = lower(%(subject_email)s))")
    return entry


def _references(path: Path, category: str, entries) -> tuple[Reference, ...]:
    if not isinstance(entries, list):
        raise MappingError(f"{path}: the references of {category!r} must be a list "
                           f"([[categories.{category}.references]])")
    references = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"column", "what", "joined"}:
            raise MappingError(f"{path}: each reference of {category!r} has exactly `column`, `what` and `joined`")
        joined = entry["joined"]
        if not (isinstance(entry["column"], str) and isinstance(entry["what"], str) and isinstance(joined, list)
                and joined and all(isinstance(name, str) for name in joined)):
            raise MappingError(f"{path}: a reference of {category!r} needs `column` and `what` as text and "
                               "`joined` as a non-empty list of column names")
        references.append(Reference(entry["column"], entry["what"], tuple(joined)))
    return tuple(references)


def check_references(mapping: CategoryQuery, columns: list[str]) -> None:
    """Every column a reference names must be one of the record's, and never one it joins itself."""
    for reference in mapping.references:
        unknown = sorted({reference.column, *reference.joined} - set(columns))
        if unknown or reference.column in reference.joined:
            raise MappingError(
                f"the reference to a {reference.what} in the mapping of {mapping.category!r} names "
                f"{f'columns not in its record schema: {unknown}' if unknown else 'its own column among joined'}: "
                "fix `column` and `joined`")
