"""The source mapping: every category counts the rows the account owns, and declares the joins that must
resolve within the account; a record whose join found nothing there is invalid, with that reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from portability.records.rendering import RenderedBatch
from portability.records.schemas import SchemaSet, arrow_schema
from portability.records.validation import BatchValidator
from portability.resources.mapping import MappingError, Reference, check_references, load_mapping

SCHEMAS = SchemaSet()
REFERENCE = load_mapping()
NOT_OURS = "{what} {id} is not a {what} of this account (it belongs to another account or does not exist)"


def write_mapping(tmp_path, category_body: str):
    path = tmp_path / "mapping.toml"
    path.write_text(f"[categories.lists]\norder_by = \"id\"\n{category_body}\n", encoding="utf-8")
    return path


def test_every_category_of_the_reference_mapping_counts_the_accounts_rows_of_its_table():
    for category, entry in REFERENCE.items():
        assert "%(account_id)s" in entry.count and "count(*)" in entry.count, category
        check_references(entry, [c.name for c in SCHEMAS.columns(category)])


def test_every_join_of_the_reference_mapping_is_a_declared_left_join_within_the_account():
    declared = {category: {(r.column, r.what, r.joined) for r in entry.references} for category, entry in
                REFERENCE.items()}
    assert declared["list_members"] == {("list_id", "list", ("list_name", "list_address")),
                                        ("contact_id", "contact", ("email",))}
    assert declared["template_versions"] == {("template_id", "template", ("template_name",))}
    assert declared["campaigns"] == {("list_id", "list", ("list_name", "list_address")),
                                     ("template_id", "template", ("template_name",))}
    assert declared["messages"] == {("campaign_id", "campaign", ("campaign_name",)),
                                    ("contact_id", "contact", ("contact_email",))}
    assert declared["events"] == {("message_id", "message", ("internet_message_id",)),
                                  ("campaign_id", "campaign", ("campaign_name",))}
    for category, entry in REFERENCE.items():
        for query in filter(None, (entry.query, entry.subject_query)):
            query = " ".join(query.split()).upper()
            if category == "campaign_stats":
                # Its joins are to per-campaign totals of the account's own messages and events (one row at
                # most per campaign, zero without): they neither drop nor repeat a campaign, and name no row.
                assert query.count(" LEFT JOIN (") == 2 and not entry.references
                continue
            assert query.count(" JOIN ") == query.count(" LEFT JOIN ") == len(entry.references), category


# SPEC §3: one data subject's archive holds their contacts, memberships, suppressions, messages and events.
SUBJECT_CATEGORIES = {"contacts", "list_members", "suppressions", "messages", "events"}


def test_the_reference_mapping_narrows_exactly_the_subjects_categories_to_one_address():
    assert {category for category, entry in REFERENCE.items() if entry.subject_query} == SUBJECT_CATEGORIES
    for category in SUBJECT_CATEGORIES:
        entry = REFERENCE[category]
        for query in (entry.subject_query, entry.subject_count):
            # Matched case-insensitively, the way the expression indexes of source_schema.sql are built.
            assert "lower(%(subject_email)s)" in query and "%(account_id)s" in query, category
            assert query.count("%(subject_email)s") == query.count("lower(%(subject_email)s)"), category
        # The same record as the account-wide query: its columns and joins, narrowed by its WHERE clause.
        select = entry.query.split("WHERE")[0]
        assert entry.subject_query.split("WHERE")[0] == select, category
        assert "count(*)" in entry.subject_count, category


def test_messages_and_events_are_bounded_by_since_and_until_and_nothing_else_is():
    for category, entry in REFERENCE.items():
        bounded = {"%(since)s::timestamptz", "%(until)s::timestamptz"}
        for query in filter(None, (entry.query, entry.count, entry.subject_query, entry.subject_count)):
            uses = {name for name in bounded if name in query}
            windowed = category in ("messages", "events") or (category == "campaign_stats" and query != entry.count)
            assert uses == (bounded if windowed else set()), category  # campaign_stats: one row per campaign
            # An uncast parameter would reach PostgreSQL as text (or unknown, when NULL).
            assert query.count("%(since)s") == query.count("%(since)s::timestamptz"), category
            assert query.count("%(until)s") == query.count("%(until)s::timestamptz"), category


@pytest.mark.parametrize(("body", "named"), [
    ('query = "SELECT id FROM lists WHERE account_id = %(account_id)s"', "count"),
    ('query = "SELECT id FROM lists WHERE account_id = %(account_id)s"\ncount = "SELECT count(*) FROM lists"',
     "count of 'lists' must filter on %(account_id)s"),
    ('query = "SELECT id FROM lists WHERE account_id = %(account_id)s"\n'
     'count = "SELECT count(*) FROM lists WHERE account_id = %(account_id)s"\n'
     '[[categories.lists.references]]\ncolumn = "id"\nwhat = "list"', "`column`, `what` and `joined`"),
    ('query = "SELECT id FROM lists WHERE account_id = %(account_id)s"\n'
     'count = "SELECT count(*) FROM lists WHERE account_id = %(account_id)s"\n'
     '[[categories.lists.references]]\ncolumn = "id"\nwhat = "list"\njoined = []', "non-empty list"),
])
def test_a_mapping_without_a_count_or_with_a_bad_reference_is_refused(tmp_path, body, named):
    with pytest.raises(MappingError) as refused:
        load_mapping(write_mapping(tmp_path, body))
    assert named in str(refused.value) and "'lists'" in str(refused.value)


def test_a_reference_to_a_column_the_record_lacks_is_refused(tmp_path):
    path = write_mapping(tmp_path, 'query = "SELECT id FROM lists WHERE account_id = %(account_id)s"\n'
                                   'count = "SELECT count(*) FROM lists WHERE account_id = %(account_id)s"\n'
                                   '[[categories.lists.references]]\ncolumn = "owner_id"\nwhat = "user"\n'
                                   'joined = ["owner_email"]')
    entry = load_mapping(path)["lists"]
    with pytest.raises(MappingError, match=r"owner_email.*owner_id"):
        check_references(entry, [c.name for c in SCHEMAS.columns("lists")])


def memberships(rows: list[dict]) -> RenderedBatch:
    columns = SCHEMAS.columns("list_members")
    defaults = {"list_id": 1, "list_name": "News", "list_address": "news@lists.example.com", "contact_id": 7,
                "email": "ann@example.com", "subscribed": True, "subscribed_at": datetime(2024, 1, 1, tzinfo=UTC),
                "unsubscribed_at": None, "vars": "{}"}
    batch = pa.RecordBatch.from_pylist([{**defaults, **row} for row in rows], schema=arrow_schema(columns))
    return RenderedBatch(batch, columns)


def test_a_membership_whose_join_found_nothing_in_the_account_is_invalid_with_that_reason():
    validator = BatchValidator(SCHEMAS, "list_members", REFERENCE["list_members"].references)
    verdict = validator.check(memberships([
        {},                                                          # both joins found the account's rows
        {"contact_id": 123, "email": None},                          # another account's contact, or none
        {"list_id": 5, "list_name": None, "list_address": None},     # another account's list
        {"list_id": 6, "list_name": None, "list_address": None, "contact_id": 124, "email": None},
        {"email": None},  # the only joined column is null: taken for a missing contact (hence NOT NULL there)
    ]))
    assert verdict.valid.to_pylist() == [True, False, False, False, False]
    contact = {"path": "/contact_id", "keyword": "reference", "message": NOT_OURS.format(what="contact", id=123)}
    listed = {"path": "/list_id", "keyword": "reference", "message": NOT_OURS.format(what="list", id=5)}
    # The joined columns' nulls are the consequence, not a reason of their own.
    assert verdict.problems[1] == [contact]
    assert verdict.problems[2] == [listed]
    assert verdict.problems[3] == [
        {**contact, "message": NOT_OURS.format(what="contact", id=124)},
        {**listed, "message": NOT_OURS.format(what="list", id=6)},
    ]
    assert [p["keyword"] for p in verdict.problems[4]] == ["reference"]


def test_a_reference_left_empty_is_no_reference_and_other_reasons_stay():
    columns = SCHEMAS.columns("campaigns")
    row = {"id": 1, "name": "Spring", "subject": None, "from_address": None, "list_id": None, "list_name": None,
           "list_address": None, "template_id": 9, "template_name": None, "status": "", "tags": [],
           "scheduled_at": None, "sent_at": None, "created_at": datetime(2024, 1, 1, tzinfo=UTC)}
    batch = pa.RecordBatch.from_pylist([row, {**row, "template_id": None}], schema=arrow_schema(columns))
    verdict = BatchValidator(SCHEMAS, "campaigns", REFERENCE["campaigns"].references).check(
        RenderedBatch(batch, columns))
    assert sorted((p["path"], p["keyword"]) for p in verdict.problems[0]) == [("/status", "minLength"),
                                                                            ("/template_id", "reference")]
    assert [(p["path"], p["keyword"]) for p in verdict.problems[1]] == [("/status", "minLength")]


def test_without_references_the_validator_judges_the_schema_only():
    verdict = BatchValidator(SCHEMAS, "list_members").check(memberships([{"contact_id": 123, "email": None}]))
    assert [(p["path"], p["keyword"]) for p in verdict.problems[0]] == [("/email", "type")]
    assert Reference("contact_id", "contact", ("email",)).to_dict() == {"column": "contact_id", "what": "contact",
                                                                       "joined": ["email"]}
