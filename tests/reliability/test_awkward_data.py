"""Awkward but valid data round-trips exactly in every format; values no format can hold are quarantined."""

from __future__ import annotations

import csv
import json
import re
import sys
import uuid
from datetime import datetime
from decimal import Decimal

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg.adapt import Loader

from tests.helpers import awkward
from tests.helpers.archive_checks import check_no_secrets, check_standard_tools, jsonl, unpack

pytestmark = pytest.mark.reliability
FORMATS = ["csv", "jsonl", "parquet"]
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)

# The source's values under the archive's field names, written independently of the pipeline's mapping.
REFERENCE = {
    "account": "SELECT id AS account_id, name, company, owner_email, country, region, plan, address, vat_number, "
               "created_at, closed_at FROM accounts WHERE id = %(a)s",
    "domains": "SELECT id, name, state, dkim_selector, dkim_public_key, spf_record, dmarc_record, tracking_host, "
               "open_tracking, click_tracking, unsubscribe_tracking, created_at, verified_at "
               "FROM domains WHERE account_id = %(a)s",
    "lists": "SELECT id, name, address, description, created_at FROM lists WHERE account_id = %(a)s",
    "list_members": "SELECT m.list_id, l.name AS list_name, l.address AS list_address, m.contact_id, c.email, "
                    "m.subscribed, m.subscribed_at, m.unsubscribed_at, m.vars FROM list_members m, lists l, "
                    "contacts c WHERE m.account_id = %(a)s AND l.id = m.list_id AND c.id = m.contact_id",
    "contacts": "SELECT id, email, full_name, properties, created_at, updated_at FROM contacts "
                "WHERE account_id = %(a)s",
    "templates": "SELECT id, name, description, category, created_at, updated_at FROM templates "
                 "WHERE account_id = %(a)s",
    "template_versions": "SELECT v.id, v.template_id, t.name AS template_name, v.tag, v.engine, v.subject, v.html, "
                         "v.text_body, v.active, v.created_at FROM template_versions v, templates t "
                         "WHERE v.account_id = %(a)s AND t.id = v.template_id",
    "campaigns": "SELECT g.id, g.name, g.subject, g.from_address, g.list_id, l.name AS list_name, "
                 "l.address AS list_address, g.template_id, t.name AS template_name, g.status, g.tags, "
                 "g.scheduled_at, g.sent_at, g.created_at FROM campaigns g "
                 "LEFT JOIN lists l ON l.id = g.list_id LEFT JOIN templates t ON t.id = g.template_id "
                 "WHERE g.account_id = %(a)s",
    "suppressions": "SELECT id, kind, address, domain, code, reason, tags, created_at FROM suppressions "
                    "WHERE account_id = %(a)s",
    "users": "SELECT id, email, full_name, role, created_at, last_login_at FROM users WHERE account_id = %(a)s",
    "api_keys": "SELECT id, name, key_prefix, scopes, created_at, last_used_at, revoked_at FROM api_keys "
                "WHERE account_id = %(a)s",
    "webhooks": "SELECT id, event, url, created_at FROM webhooks WHERE account_id = %(a)s",
    "messages": "SELECT m.id, m.campaign_id, g.name AS campaign_name, m.contact_id, c.email AS contact_email, "
                "m.recipient, m.from_address, m.subject, m.message_id, m.tags, m.status, m.size_bytes, m.sent_at, "
                "m.html, m.text_body FROM messages m LEFT JOIN campaigns g ON g.id = m.campaign_id "
                "LEFT JOIN contacts c ON c.id = m.contact_id WHERE m.account_id = %(a)s",
    "events": "SELECT e.id, e.message_id, m.message_id AS internet_message_id, m.campaign_id, "
              "g.name AS campaign_name, e.kind, e.recipient, e.url, e.user_agent, host(e.ip) AS ip, e.reason, "
              "e.occurred_at FROM events e, messages m LEFT JOIN campaigns g ON g.id = m.campaign_id "
              "WHERE e.account_id = %(a)s AND m.id = e.message_id",
    # Counted one figure at a time, not as the mapping does (totals per campaign, joined once).
    "campaign_stats": "SELECT g.id AS campaign_id, g.name AS campaign_name, (SELECT count(*) FROM messages m "
                      "WHERE m.account_id = %(a)s AND m.campaign_id = g.id) AS messages, " + ", ".join(
                          f"(SELECT count({what}) FROM events e, messages m WHERE e.account_id = %(a)s "
                          f"AND m.account_id = %(a)s AND m.id = e.message_id AND m.campaign_id = g.id "
                          f"AND e.kind = '{kind}') AS {name}"
                          for name, kind, what in (
                              *((kind, kind, "*") for kind in ("delivered", "opened", "clicked", "bounced",
                                                               "complained", "unsubscribed", "failed")),
                              ("unique_openers", "opened", "DISTINCT lower(e.recipient)"),
                              ("unique_clickers", "clicked", "DISTINCT lower(e.recipient)")))
                      + " FROM campaigns g WHERE g.account_id = %(a)s",
}


class JsonText(str):
    """A jsonb value as PostgreSQL prints it, so that its numbers stay exact."""


class JsonTextLoader(Loader):
    def load(self, data) -> JsonText:
        return JsonText(bytes(data).decode())


def source_records(conn, category: str, account_id: str) -> dict:
    with conn.cursor() as cursor:
        cursor.adapters.register_loader("jsonb", JsonTextLoader)
        cursor.execute(REFERENCE[category], {"a": account_id})
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
    return {_key(category, row): row for row in rows}


def _key(category: str, record: dict):
    if category == "account":
        return record["account_id"]
    if category == "list_members":
        return (int(record["list_id"]), int(record["contact_id"]))
    if category == "campaign_stats":
        return int(record["campaign_id"])
    return int(record["id"])


def rfc3339(value: datetime) -> str:
    return f"{value.year:04d}-{value:%m-%dT%H:%M:%S.%f}Z"  # %Y does not pad years below 1000


def as_json(value):
    if isinstance(value, JsonText):
        return json.loads(value, parse_float=Decimal)
    if isinstance(value, datetime):
        return rfc3339(value)
    return value


def as_csv(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def is_formula(text: str) -> bool:
    """SPEC §3: starts with one of OWASP's formula characters and is not a plain number."""
    return text[:1] in ("=", "+", "-", "@", "\t", "\r") and not PLAIN_NUMBER.fullmatch(text)


@pytest.fixture(scope="module")
def awkward_export(seeded, tmp_path_factory, source_dsn):
    from portability.pipeline import export
    from portability.resources import config
    from portability.resources.storage import ObjectStore

    with psycopg.connect(source_dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rows = awkward.insert(conn)
    summary = export.run_export({"account_id": awkward.ACCOUNT, "formats": FORMATS}, str(uuid.uuid4()))
    folder = tmp_path_factory.mktemp("awkward")
    store = ObjectStore(config.storage_settings())
    (folder / "archive.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    return {"summary": summary, "rows": rows, "root": unpack(folder / "archive.zip", folder)}


def test_every_awkward_record_is_exported_and_none_quarantined(awkward_export):
    for category, rows in awkward_export["rows"].items():
        assert awkward_export["summary"].counts[category] == {
            "source_count": rows, "exported": rows, "quarantined": 0}, category


@pytest.mark.parametrize("category", list(REFERENCE))
def test_every_value_round_trips_exactly_in_every_format(awkward_export, db, category, tally):
    root = awkward_export["root"] / "data"
    db.execute("SET TimeZone = 'UTC'")
    source = source_records(db, category, awkward.ACCOUNT)
    assert len(source) == awkward_export["rows"][category]

    # JSON Lines: exact values; each JSON document keeps the text PostgreSQL holds, byte for byte.
    with open(root / f"{category}.jsonl", encoding="utf-8", newline="") as lines:
        jsonl = [line for line in lines.read().split("\n") if line]  # only \n ends a record
    assert len(jsonl) == len(source)
    for line in jsonl:
        record = json.loads(line, parse_float=Decimal)
        row = source[_key(category, record)]
        assert list(record) == list(row), category
        for name, value in row.items():
            assert record[name] == as_json(value), (category, name)
            if isinstance(value, JsonText):
                assert f'"{name}":{value}' in line, (category, name)

    # Parquet: exact values, timestamps as instants, JSON as its text.
    for record in pq.read_table(root / f"{category}.parquet").to_pylist():
        row = source[_key(category, record)]
        assert record == row, category

    # CSV: exact values except the documented formula guard, which adds one apostrophe.
    csv.field_size_limit(sys.maxsize)
    with open(root / f"{category}.csv", encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(source)
    for cells in rows:
        row = source[_key(category, cells)]
        assert list(cells) == list(row), category
        for name, value in row.items():
            if isinstance(value, list):  # a JSON array, as in JSON Lines
                assert json.loads(cells[name]) == value, (category, name)
                continue
            expected = as_csv(value)
            if isinstance(value, str) and not isinstance(value, JsonText) and is_formula(value):
                expected = "'" + value
            assert cells[name] == expected, (category, name, value[:40] if isinstance(value, str) else value)
    tally["records checked"] += 3 * len(source)


def test_the_corpus_reaches_every_plane_and_the_formula_guard(awkward_export):
    contacts = (awkward_export["root"] / "data/contacts.jsonl").read_text(encoding="utf-8")
    planes = {ord(c) >> 16 for c in contacts}
    assert planes == set(range(17))
    assert all(chr(c) in contacts or json.dumps(chr(c))[1:-1] in contacts for c in range(1, 32))
    versions = (awkward_export["root"] / "data/template_versions.jsonl").read_text(encoding="utf-8")
    html = max(len(json.loads(line)["html"].encode()) for line in versions.split("\n") if line)
    assert html >= awkward.MEGABYTE_HTML_BYTES
    campaigns = (awkward_export["root"] / "data/campaigns.csv").read_text(encoding="utf-8")
    assert '"\'=HYPERLINK(""http://x.example/?q=1"",""click"")"' in campaigns
    assert ',"-3.5",' in campaigns or '"-3.5"' in campaigns


def test_awkward_archive_passes_bagit_frictionless_and_verify(awkward_export, db):
    from portability.archive import verify

    check_standard_tools(awkward_export["root"])
    assert check_no_secrets(awkward_export["root"], db)
    report = verify.verify(str(awkward_export["root"].parent / "archive.zip"))
    assert report["records_checked"] == len(FORMATS) * sum(awkward_export["rows"].values())


UNREPRESENTABLE = {  # what PostgreSQL stores but RFC 3339, or the tools that read it, cannot hold
    "infinity": "infinity",
    "-infinity": "-infinity",
    "10000-01-01 00:00:00+00": "10000-01-01T00:00:00.000000Z",
    "0001-01-01 00:00:00+00 BC": "0000-01-01T00:00:00.000000Z",  # year 0: Python and pandas have none
}


def test_timestamps_no_format_can_hold_are_quarantined_showing_the_source_value(seeded, db, store, tmp_path,
                                                                                     tally):
    from portability.pipeline import export

    account = "timeedge-00001"
    db.execute("INSERT INTO accounts (id, name, owner_email, region, plan, created_at) "
               "VALUES (%s, 'Edges', 'owner@edges.example', 'us', 'free', now())", (account,))
    (top,) = db.execute("SELECT max(id) FROM contacts").fetchone()
    values = [*UNREPRESENTABLE, "0001-01-01 00:00:00+00", "2024-01-01 00:00:00+00"]
    for n, value in enumerate(values, start=1):
        db.execute("INSERT INTO contacts (id, account_id, email, created_at, updated_at) "
                   "VALUES (%s, %s, %s, %s, now())", (top + n, account, f"c{n}@edges.example", value))
    db.commit()
    summary = export.run_export({"account_id": account, "formats": FORMATS}, str(uuid.uuid4()))
    assert summary.counts["contacts"] == {"source_count": 6, "exported": 2, "quarantined": 4}
    (tmp_path / "archive.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    root = unpack(tmp_path / "archive.zip", tmp_path)
    check_standard_tools(root)  # with every other category empty
    errors, exported = jsonl(root / "data/errors/contacts.jsonl"), jsonl(root / "data/contacts.jsonl")
    shown = {e["record"]["created_at"] for e in errors}
    assert shown == set(UNREPRESENTABLE.values())
    for error in errors:
        assert error["errors"][0]["path"] == "/created_at"
        assert repr(error["record"]["created_at"]) in error["errors"][0]["message"]
    assert sorted(r["created_at"] for r in exported) == ["0001-01-01T00:00:00.000000Z", "2024-01-01T00:00:00.000000Z"]
    tally["hostile inputs tried"] += len(values)
