"""Tests for the synthetic source seeder (portability_dev.seed).

They run against the session's embedded PostgreSQL and create and drop their own scratch
databases there.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from portability_dev import seed as seeder

pytestmark = pytest.mark.e2e  # the session's embedded PostgreSQL
OPTIONS = seeder.SeedOptions(contacts=120, large_html_bytes=200_000)
ACCOUNT_IDS = ["acct-00001", "acct-00002", "acct-00003"]
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

PRIMARY_KEYS = {
    "accounts": "id", "users": "id", "api_keys": "id", "domains": "id", "lists": "id",
    "contacts": "id", "list_members": "list_id, contact_id", "templates": "id",
    "template_versions": "id", "campaigns": "id", "suppressions": "id", "webhooks": "id",
    "messages": "id", "events": "id",
}


def _create_db(admin: psycopg.Connection, dsn: str, name: str) -> str:
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(dsn, dbname=name)


def _dump(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every row of every table as PostgreSQL's own text form, in primary-key order."""
    dump = {}
    for table, key in PRIMARY_KEYS.items():
        query = sql.SQL("SELECT t::text FROM {} AS t ORDER BY {}").format(
            sql.Identifier(table), sql.SQL(key)
        )
        dump[table] = [row[0] for row in conn.execute(query)]
    return dump


@pytest.fixture(scope="module")
def seeded_pair(source_dsn) -> Iterator[dict]:
    """Two fresh databases seeded with the same options; yields their DSNs and first dumps."""
    stem = f"seedtest_{uuid.uuid4().hex[:12]}"
    names = [f"{stem}_a", f"{stem}_b"]
    with psycopg.connect(source_dsn, autocommit=True) as admin:
        try:
            dsns = [_create_db(admin, source_dsn, name) for name in names]
            dumps, returned = [], []
            for dsn in dsns:
                with psycopg.connect(dsn) as conn:
                    returned.append(seeder.seed(conn, OPTIONS))
                    dumps.append(_dump(conn))
            yield {"dsn": dsns[0], "dsns": dsns, "dumps": dumps, "returned": returned}
        finally:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def conn(seeded_pair: dict) -> Iterator[psycopg.Connection]:
    with psycopg.connect(seeded_pair["dsn"]) as connection:
        yield connection


@pytest.fixture
def fresh_conn(source_dsn) -> Iterator[psycopg.Connection]:
    """A connection to a new, empty database of its own."""
    name = f"seedtest_{uuid.uuid4().hex[:12]}_fresh"
    with psycopg.connect(source_dsn, autocommit=True) as admin:
        try:
            with psycopg.connect(_create_db(admin, source_dsn, name)) as connection:
                yield connection
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_options_reject_bad_prefix_and_counts():
    with pytest.raises(ValueError, match="prefix"):
        seeder.SeedOptions(prefix="bad prefix!")
    with pytest.raises(ValueError, match="contacts"):
        seeder.SeedOptions(contacts=-1)
    with pytest.raises(ValueError, match="events_per_contact"):
        seeder.SeedOptions(events_per_contact=-1)
    with pytest.raises(ValueError, match="messages_per_contact"):
        seeder.SeedOptions(messages_per_contact=0, events_per_contact=1)


def test_same_options_give_identical_tables(seeded_pair):
    first, second = seeded_pair["dumps"]
    assert seeded_pair["returned"] == [ACCOUNT_IDS, ACCOUNT_IDS]
    assert all(first[table] for table in PRIMARY_KEYS)
    assert first == second


def test_accounts_alternate_regions(conn):
    rows = conn.execute(
        "SELECT id, region, country, vat_number, closed_at FROM accounts ORDER BY id"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == list(zip(ACCOUNT_IDS, ["us", "eu", "us"], strict=True))
    assert all(re.fullmatch(r"[A-Z]{2}", r[2]) and r[4] is None for r in rows)
    assert all((r[3] is not None) == (r[1] == "eu") for r in rows)


def test_every_account_has_all_suppression_kinds(conn):
    rows = conn.execute("SELECT account_id, array_agg(DISTINCT kind ORDER BY kind) FROM suppressions"
                        " GROUP BY account_id ORDER BY account_id").fetchall()
    assert rows == [(a, ["allowlist", "bounce", "complaint", "unsubscribe"]) for a in ACCOUNT_IDS]
    assert conn.execute("SELECT count(*) FROM suppressions WHERE domain IS NULL").fetchone()[0] > 0


def test_marker_only_in_secret_columns(conn):
    marker = seeder.PLANTED_SECRET_MARKER
    columns = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        " AND data_type IN ('text', 'jsonb', 'ARRAY') ORDER BY table_name, column_name"
    ).fetchall()
    for table, column in columns:
        query = sql.SQL(
            "SELECT count(*), count({c}), count(*) FILTER (WHERE {c}::text LIKE %s),"
            " count(DISTINCT {c}) FROM {t}"
        ).format(c=sql.Identifier(column), t=sql.Identifier(table))
        rows, non_null, marked, distinct = conn.execute(query, (f"%{marker}%",)).fetchone()
        if column in seeder.SECRET_COLUMNS.get(table, ()):
            assert rows > 0 and marked == non_null == distinct == rows, (table, column)
        else:
            assert marked == 0, (table, column)


def test_contact_emails_collide_across_accounts_but_not_within(conn):
    emails = {
        account: [r[0] for r in conn.execute("SELECT email FROM contacts WHERE account_id = %s", (account,))]
        for account in ACCOUNT_IDS
    }
    for account, values in emails.items():
        assert len(values) == OPTIONS.contacts == len(set(values)), account
    shared = set(emails["acct-00001"]) & set(emails["acct-00002"])
    assert len(shared) >= OPTIONS.contacts // 2
    list_names = conn.execute(
        "SELECT count(DISTINCT name), count(*) FROM lists WHERE account_id = ANY(%s)", (ACCOUNT_IDS,)
    ).fetchone()
    assert list_names == (OPTIONS.lists, OPTIONS.lists * OPTIONS.accounts)


def test_emails_are_well_formed(conn):
    for table, column in [("contacts", "email"), ("users", "email"), ("accounts", "owner_email"),
                          ("lists", "address"), ("suppressions", "address"), ("campaigns", "from_address"),
                          ("messages", "recipient"), ("messages", "from_address"), ("events", "recipient")]:
        query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), sql.Identifier(table))
        for (email,) in conn.execute(query):
            assert EMAIL_RE.match(email) and len(email) <= 254, (table, email)


def test_relationships_and_shapes(conn):
    one = conn.execute
    # Each contact is in 1-3 lists of its own account; unsubscribed_at is set iff unsubscribed.
    assert one("SELECT min(n), max(n) FROM (SELECT count(*) AS n FROM contacts c JOIN list_members m"
               " ON m.contact_id = c.id GROUP BY c.id) s").fetchone() == (1, 3)
    assert one("SELECT count(*) FROM list_members m JOIN lists l ON l.id = m.list_id"
               " JOIN contacts c ON c.id = m.contact_id"
               " WHERE l.account_id <> m.account_id OR c.account_id <> m.account_id"
               " OR (m.unsubscribed_at IS NULL) <> m.subscribed").fetchone() == (0,)
    mix = one("SELECT bool_or(subscribed), bool_or(NOT subscribed) FROM list_members").fetchone()
    assert mix == (True, True)
    # Exactly one active version per template; the first account template carries the big HTML.
    assert one("SELECT count(*) FROM templates t WHERE (SELECT count(*) FROM template_versions v"
               " WHERE v.template_id = t.id AND v.active) <> 1").fetchone() == (0,)
    sizes = one("SELECT DISTINCT ON (account_id) octet_length(html) FROM template_versions"
                " ORDER BY account_id, id").fetchall()
    assert len(sizes) == 3 and all(size >= OPTIONS.large_html_bytes for (size,) in sizes)
    # Campaigns point at their own account's lists and templates.
    assert one("SELECT count(*) FROM campaigns c LEFT JOIN lists l ON l.id = c.list_id"
               " LEFT JOIN templates t ON t.id = c.template_id"
               " WHERE l.account_id <> c.account_id OR t.account_id <> c.account_id").fetchone() == (0,)
    # Custom properties: some empty, some wide (50+ keys), some nested.
    empty, wide, nested = one(
        "SELECT count(*) FILTER (WHERE properties = '{}'), "
        " count(*) FILTER (WHERE (SELECT count(*) FROM jsonb_object_keys(properties)) >= 50),"
        " count(*) FILTER (WHERE jsonb_typeof(properties -> 'address' -> 'géo') = 'object') FROM contacts"
    ).fetchone()
    assert empty > 0 and wide > 0 and nested > 0


def test_existing_account_is_refused_before_any_insert(conn):
    before = conn.execute("SELECT count(*) FROM contacts").fetchone()
    with pytest.raises(ValueError, match=r"acct-00001.*--prefix.*fresh database"):
        seeder.seed(conn, seeder.SeedOptions(accounts=2, contacts=5))
    assert conn.execute("SELECT count(*) FROM contacts").fetchone() == before


def test_another_prefix_and_seed_add_new_ids_and_data(conn):
    options = seeder.SeedOptions(accounts=1, contacts=30, prefix="other", seed=7)
    assert seeder.seed(conn, options) == ["other-00001"]
    new, old = (
        {r[0] for r in conn.execute("SELECT email FROM contacts WHERE account_id = %s", (account,))}
        for account in ("other-00001", "acct-00001")
    )
    assert len(new) == 30 and not new <= old
    min_new, max_old = conn.execute(
        "SELECT min(id) FILTER (WHERE account_id = 'other-00001'),"
        " max(id) FILTER (WHERE account_id <> 'other-00001') FROM contacts"
    ).fetchone()
    assert min_new == max_old + 1


def _message_event_counts(conn: psycopg.Connection, prefix: str) -> list[tuple]:
    return conn.execute(
        "SELECT a.id, (SELECT count(*) FROM messages m WHERE m.account_id = a.id),"
        " (SELECT count(*) FROM events e WHERE e.account_id = a.id) FROM accounts a"
        " WHERE a.id LIKE %s ORDER BY a.id", (f"{prefix}-%",)
    ).fetchall()


def _md5(conn: psycopg.Connection, table: str, prefix: str) -> str:
    query = sql.SQL("SELECT md5(string_agg(t::text, chr(10) ORDER BY t.id)) FROM {} AS t"
                    " WHERE account_id LIKE %s").format(sql.Identifier(table))
    return conn.execute(query, (f"{prefix}-%",)).fetchone()[0]


def test_message_and_event_counts_are_exact(conn):
    per_account = (OPTIONS.contacts * OPTIONS.messages_per_contact, OPTIONS.contacts * OPTIONS.events_per_contact)
    assert _message_event_counts(conn, "acct") == [(a, *per_account) for a in ACCOUNT_IDS]


@pytest.mark.parametrize(("contacts", "per_message", "per_event", "event_chunk"), [
    (7, 1, 3, 1_000_000),       # one slice
    (50, 2, 7, 40),             # many slices, uneven shares of events
    (30, 3, 1, 10),             # fewer events than delivery reports
    (5, 1, 0, 1_000_000),       # messages without events
])
def test_exact_totals_and_determinism_across_slices(fresh_conn, monkeypatch, contacts, per_message, per_event,
                                                     event_chunk):
    monkeypatch.setattr(seeder, "_EVENT_CHUNK", event_chunk)
    options = dict(accounts=2, contacts=contacts, messages_per_contact=per_message, events_per_contact=per_event,
                   large_html_bytes=0, seed=3)
    prefix = f"slices{contacts}"
    seeder.seed(fresh_conn, seeder.SeedOptions(prefix=prefix, **options))
    seeder.seed(fresh_conn, seeder.SeedOptions(prefix=f"{prefix}x", **options))
    expected = (contacts * per_message, contacts * per_event)
    assert _message_event_counts(fresh_conn, prefix) == [(f"{prefix}-{n:05d}", *expected) for n in (1, 2)]
    # Ids continue from the table's maximum, but the rows of the same options only differ by id
    # (and by the account id they carry).
    for table, columns in [("messages", "status, sent_at, subject, size_bytes, html, text_body"),
                           ("events", "kind, url, user_agent, ip, reason, occurred_at")]:
        rows = [fresh_conn.execute(sql.SQL("SELECT {} FROM {} WHERE account_id LIKE %s ORDER BY id").format(
            sql.SQL(columns), sql.Identifier(table)), (f"{p}-%",)).fetchall() for p in (prefix, f"{prefix}x")]
        assert rows[0] == rows[1], table
    assert fresh_conn.execute("SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id"
                        " WHERE e.account_id <> m.account_id").fetchone() == (0,)


def test_messages_and_events_are_deterministic(seeded_pair):
    digests = []
    for dsn in seeded_pair["dsns"]:
        with psycopg.connect(dsn) as connection:
            digests.append([_md5(connection, table, "acct") for table in ("messages", "events")])
    assert digests[0] == digests[1] and all(digests[0])


def test_messages_shapes(conn):
    one = conn.execute
    now = seeder.SEED_NOW
    # Content only within its retention; some messages still carry it.
    recent, with_html, with_text, stale_content = one(
        "SELECT count(*) FILTER (WHERE sent_at >= %(cut)s), count(html), count(text_body),"
        " count(*) FILTER (WHERE (html IS NOT NULL OR text_body IS NOT NULL)"
        "                  AND (sent_at IS NULL OR sent_at < %(cut)s))"
        " FROM messages WHERE account_id LIKE 'acct-%%'",
        {"cut": now - timedelta(days=seeder.CONTENT_RETENTION_DAYS)},
    ).fetchone()
    assert recent > 0 and with_html == with_text == recent and stale_content == 0
    # Queued messages have not been sent; the others were, within the 13 months before "now".
    statuses = dict(one("SELECT status, count(*) FROM messages GROUP BY status").fetchall())
    assert set(statuses) == {"queued", "sent", "delivered", "bounced", "failed"}
    assert statuses["delivered"] > sum(statuses.values()) * 0.8
    assert statuses["bounced"] + statuses["failed"] < sum(statuses.values()) * 0.1
    assert one("SELECT count(*) FROM messages WHERE (status = 'queued') <> (sent_at IS NULL)"
               " OR sent_at > %s OR sent_at < %s",
               (now, now - timedelta(days=seeder.EVENT_RETENTION_DAYS))).fetchone() == (0,)
    # Campaign and transactional mail; campaigns are sent ones of the same account.
    transactional, from_campaigns, bad_campaign = one(
        "SELECT count(*) FILTER (WHERE m.campaign_id IS NULL), count(c.id),"
        " count(*) FILTER (WHERE c.account_id <> m.account_id OR c.status <> 'sent')"
        " FROM messages m LEFT JOIN campaigns c ON c.id = m.campaign_id"
    ).fetchone()
    assert 0 < transactional < from_campaigns and bad_campaign == 0
    assert one("SELECT count(*) FROM messages m JOIN campaigns c ON c.id = m.campaign_id"
               " WHERE m.sent_at < c.sent_at").fetchone() == (0,)
    # Recipients: a contact's address, in whatever case it was sent to, or no contact at all.
    to_others, other_case, mismatched = one(
        "SELECT count(*) FILTER (WHERE m.contact_id IS NULL), count(*) FILTER (WHERE m.recipient <> c.email),"
        " count(*) FILTER (WHERE lower(m.recipient) <> lower(c.email) OR c.account_id <> m.account_id)"
        " FROM messages m LEFT JOIN contacts c ON c.id = m.contact_id"
    ).fetchone()
    assert to_others > 0 and other_case > 0 and mismatched == 0
    ids, distinct = one("SELECT count(*), count(DISTINCT message_id) FROM messages").fetchone()
    assert ids == distinct
    for (message_id,) in one("SELECT message_id FROM messages"):
        assert re.fullmatch(r"<[0-9a-f]{16}\.[0-9]+@mail\.example\.com>", message_id)


def test_events_shapes(conn):
    one = conn.execute
    # Events belong to messages of their own account, go to the message's recipient, after it was sent.
    assert one("SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id"
               " WHERE e.account_id <> m.account_id OR e.recipient <> m.recipient"
               " OR e.occurred_at <= m.sent_at OR e.occurred_at > %s", (seeder.SEED_NOW,)).fetchone() == (0,)
    kinds = dict(one("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    total = sum(kinds.values())
    assert set(kinds) == {"delivered", "opened", "clicked", "bounced", "complained", "unsubscribed", "failed"}
    assert kinds["bounced"] + kinds["complained"] < total * 0.02
    assert kinds["complained"] < kinds["unsubscribed"] < kinds["clicked"] < kinds["opened"]
    # One report per delivered, bounced or failed message, of its kind; none for queued or sent ones.
    assert one("SELECT count(*) FROM messages m WHERE (SELECT count(*) FROM events e WHERE e.message_id = m.id"
               " AND e.kind IN ('delivered', 'bounced', 'failed'))"
               " <> CASE WHEN m.status IN ('delivered', 'bounced', 'failed') THEN 1 ELSE 0 END"
               " OR EXISTS (SELECT FROM events e WHERE e.message_id = m.id"
               "            AND e.kind IN ('delivered', 'bounced', 'failed') AND e.kind <> m.status)"
               " OR (m.status IN ('queued', 'sent')"
               "     AND EXISTS (SELECT FROM events e WHERE e.message_id = m.id))").fetchone() == (0,)
    # Opens and clicks repeat on some messages; the counts per message vary.
    most_opens, most_clicks, fewest, most = one(
        "SELECT max(opens), max(clicks), min(n), max(n) FROM (SELECT count(*) FILTER (WHERE kind = 'opened') AS opens,"
        " count(*) FILTER (WHERE kind = 'clicked') AS clicks, count(*) AS n FROM events GROUP BY message_id) s"
    ).fetchone()
    assert most_opens >= 3 and most_clicks >= 3 and most >= 4 * fewest
    # Reports follow within minutes, engagement within days.
    report_delay, engagement_delay = one(
        "SELECT max(e.occurred_at - m.sent_at) FILTER (WHERE e.kind IN ('delivered', 'bounced', 'failed')),"
        " max(e.occurred_at - m.sent_at) FILTER (WHERE e.kind IN ('opened', 'clicked'))"
        " FROM events e JOIN messages m ON m.id = e.message_id").fetchone()
    assert timedelta(minutes=1) < report_delay <= timedelta(minutes=10) < timedelta(days=7) < engagement_delay
    # Column shapes by kind.
    assert one("SELECT count(*) FROM events WHERE (url IS NOT NULL) <> (kind = 'clicked')"
               " OR (reason IS NOT NULL) <> (kind IN ('bounced', 'failed'))"
               " OR (kind IN ('opened', 'clicked') AND (user_agent IS NULL OR ip IS NULL))").fetchone() == (0,)
    families = one("SELECT array_agg(DISTINCT family(ip) ORDER BY family(ip)) FROM events"
                   " WHERE ip IS NOT NULL").fetchone()[0]
    assert families == [4, 6]
    assert one("SELECT count(*) FROM events WHERE url ~ '[^\\x01-\\x7f]' AND url LIKE '%%?%%'").fetchone()[0] > 0


def test_without_campaigns_or_domains_all_mail_is_transactional(fresh_conn):
    options = seeder.SeedOptions(accounts=1, contacts=20, campaigns=0, domains=0, lists=0, large_html_bytes=0)
    [account] = seeder.seed(fresh_conn, options)
    assert fresh_conn.execute(
        "SELECT count(*), count(campaign_id), bool_and(from_address LIKE '%%@example.com'),"
        " (SELECT count(*) FROM events) FROM messages WHERE account_id = %s", (account,)
    ).fetchone() == (40, 0, True, 200)
