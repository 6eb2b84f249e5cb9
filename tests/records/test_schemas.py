"""Every schema is a valid draft 2020-12 schema; good records pass and bad ones fail."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from portability.records.schemas import SchemaSet
from tests.helpers.archive_checks import SECRET_COLUMNS

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted((REPO / "schemas").rglob("*.schema.json"))
TS = "2024-03-01T12:00:00.000000Z"

GOOD = {
    "account": {"account_id": "acme_1", "name": "Acme", "company": None, "owner_email": "owner@acme.example",
                "country": "DE", "region": "eu", "plan": "pro", "address": {"city": "Köln"}, "vat_number": None,
                "created_at": TS, "closed_at": None},
    "domains": {"id": 1, "name": "bücher.example", "state": "verified", "dkim_selector": "s1",
                "dkim_public_key": "MIIB", "spf_record": "v=spf1 -all", "dmarc_record": None, "tracking_host": None,
                "open_tracking": True, "click_tracking": False, "unsubscribe_tracking": True, "created_at": TS,
                "verified_at": None},
    "lists": {"id": 1, "name": "News", "address": "news@lists.example", "description": "a\nb", "created_at": TS},
    "list_members": {"list_id": 1, "list_name": "News", "list_address": "news@lists.example", "contact_id": 2,
                     "email": "jane+news@example.com", "subscribed": True, "subscribed_at": TS,
                     "unsubscribed_at": None, "vars": {}},
    "contacts": {"id": 2, "email": "müller@bücher.example", "full_name": "=cmd|' /C calc'!A0",
                 "properties": {"a": {"b": [1, 2.5, None]}}, "created_at": TS, "updated_at": TS},
    "templates": {"id": 3, "name": "Welcome 👋", "description": None, "category": None, "created_at": TS,
                  "updated_at": TS},
    "template_versions": {"id": 4, "template_id": 3, "template_name": "Welcome 👋", "tag": "v1",
                          "engine": "handlebars", "subject": "Hi", "html": "<p>hi</p>", "text_body": "hi",
                          "active": True, "created_at": TS},
    "campaigns": {"id": 5, "name": "Launch", "subject": None, "from_address": "Acme <a@acme.example>",
                  "list_id": None, "list_name": None, "list_address": None, "template_id": 3,
                  "template_name": "Welcome 👋", "status": "sent", "tags": ["a,b", ""], "scheduled_at": None,
                  "sent_at": TS, "created_at": TS},
    "suppressions": {"id": 6, "kind": "complaint", "address": "x@y.example", "domain": None, "code": "550 5.1.1",
                     "reason": None, "tags": [], "created_at": TS},
    "users": {"id": 7, "email": "ops@acme.example", "full_name": None, "role": "owner", "created_at": TS,
              "last_login_at": None},
    "api_keys": {"id": 8, "name": "CI — déploiement", "key_prefix": "ak_live_1a2b", "scopes": ["send", "read"],
                 "created_at": TS, "last_used_at": TS, "revoked_at": None},
    "webhooks": {"id": 9, "event": "bounced", "url": "https://例子.example/回调", "created_at": TS},
    "messages": {"id": 10, "campaign_id": 5, "campaign_name": "Launch", "contact_id": None, "contact_email": None,
                 "recipient": "Jane@Example.COM", "from_address": "Acme <a@acme.example>", "subject": "Hi",
                 "message_id": "<0f3a.10@mail.example.com>", "tags": [], "status": "delivered", "size_bytes": 5120,
                 "sent_at": TS, "html": None, "text_body": None},
    "events": {"id": 11, "message_id": 10, "internet_message_id": "<0f3a.10@mail.example.com>", "campaign_id": None,
               "campaign_name": None, "kind": "clicked", "recipient": "Jane@Example.COM",
               "url": "https://example.com/a,b?q=%22x%22", "user_agent": "", "ip": "2001:db8::1", "reason": None,
               "occurred_at": TS},
    "campaign_stats": {"campaign_id": 5, "campaign_name": "Launch", "messages": 3, "delivered": 2, "opened": 5,
                       "clicked": 1, "bounced": 1, "complained": 0, "unsubscribed": 0, "failed": 0,
                       "unique_openers": 2, "unique_clickers": 1},
}
# (category, field, bad value): each must be refused.
BAD = [
    ("account", "account_id", "acme'; DROP TABLE accounts"),
    ("account", "region", "apac"),
    ("account", "country", "de"),
    ("domains", "open_tracking", "yes"),
    ("lists", "address", "not-an-email"),
    ("list_members", "vars", []),
    ("contacts", "email", "no-at-sign.example"),
    ("contacts", "email", "a@b.example" + "x" * 300),
    ("contacts", "properties", "{}"),
    ("contacts", "created_at", "2024-03-01 12:00:00"),
    ("contacts", "created_at", "2024-03-01T12:00:00+02:00"),
    ("contacts", "id", 0),
    ("templates", "name", ""),
    ("template_versions", "active", None),
    ("campaigns", "tags", [1]),
    ("suppressions", "kind", "spam"),
    ("users", "role", ""),
    ("api_keys", "scopes", None),
    ("webhooks", "url", ""),
    ("messages", "status", "opened"),
    ("messages", "message_id", None),
    ("messages", "size_bytes", -1),
    ("events", "kind", "sent"),
    ("events", "internet_message_id", None),
    ("campaign_stats", "opened", None),
    ("campaign_stats", "unique_openers", -1),
]


@pytest.fixture(scope="module")
def schemas():
    return SchemaSet(REPO / "schemas")


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_schema_is_valid_draft_2020_12(path):
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(path.relative_to(REPO / "schemas").as_posix())
    Draft202012Validator.check_schema(schema)


def test_every_category_has_a_good_example(schemas):
    assert set(GOOD) == set(schemas.categories)


@pytest.mark.parametrize("category", sorted(GOOD))
def test_good_records_pass(schemas, category):
    assert list(schemas.validator(schemas.record(category)).iter_errors(GOOD[category])) == []


@pytest.mark.parametrize(("category", "field", "value"), BAD, ids=[f"{c}.{f}" for c, f, _ in BAD])
def test_bad_records_fail(schemas, category, field, value):
    record = dict(copy.deepcopy(GOOD[category]), **{field: value})
    errors = list(schemas.validator(schemas.record(category)).iter_errors(record))
    assert errors and errors[0].absolute_path[0] == field


@pytest.mark.parametrize("category", sorted(GOOD))
def test_unknown_and_missing_fields_fail(schemas, category):
    validator = schemas.validator(schemas.record(category))
    assert not validator.is_valid({**GOOD[category], "password_hash": "x"})
    first = next(iter(GOOD[category]))
    assert not validator.is_valid({k: v for k, v in GOOD[category].items() if k != first})


@pytest.mark.parametrize("category", sorted(GOOD))
def test_bundled_schema_in_the_archive_stands_alone(schemas, category):
    """data/schemas/<category>.schema.json validates with any 2020-12 validator, no registry needed."""
    bundled = schemas.bundled_record(category)
    Draft202012Validator.check_schema(bundled)
    validator = Draft202012Validator(bundled)
    assert validator.is_valid(GOOD[category])
    assert not validator.is_valid({**GOOD[category], "unexpected": 1})


def test_no_record_has_a_secret_column(schemas):
    """SPEC §2: the bold columns are never exported; a record schema without them keeps them out of every file."""
    secrets = {column for columns in SECRET_COLUMNS.values() for column in columns}
    for category in schemas.categories:
        assert not secrets & set(schemas.record(category)["properties"]), category


def test_columns_follow_the_schema(schemas):
    columns = {c.name: c for c in schemas.columns("campaigns")}
    assert list(columns)[:3] == ["id", "name", "subject"]
    assert (columns["tags"].kind, columns["tags"].nullable) == ("string_list", False)
    assert (columns["sent_at"].kind, columns["sent_at"].nullable) == ("timestamp", True)
    assert schemas.columns("contacts")[3].kind == "json"


def test_manifest_schema_accepts_a_manifest(schemas):
    from portability.archive.packaging import build_manifest
    from portability.pipeline.model import Plan, Snapshot

    plan = Plan(export_id="6f1f5d2e-3f7b-5c53-9d1e-7a0c4b8e2a41", account_id="acme", categories=("contacts",),
                formats=("csv",), expires_in_hours=72, on_invalid="quarantine", piece_rows=10, shard_rows=10)
    snapshot = Snapshot(bucket="exports-us", snapshot_at=TS, region="us")
    file = {"path": "data/contacts.csv", "format": "csv", "bytes": 10, "sha256": "0" * 64}
    results = [{"category": "contacts", "source_count": 2, "exported": 1, "quarantined": 1, "files": [file],
                "errors": {**file, "path": "data/errors/contacts.jsonl", "format": "jsonl"}}]
    manifest = build_manifest(plan, snapshot, results)
    validator = schemas.validator(schemas.document("manifest.schema.json"))
    assert list(validator.iter_errors(manifest)) == []
    manifest["contents"]["passwords"] = manifest["contents"]["contacts"]
    assert not validator.is_valid(manifest)
