"""Messages, events and campaign statistics: a window (since/until) holds exactly the messages sent and the events
that occurred in it, campaign statistics equal a recount of the exported messages and events, and one data
subject's export holds exactly what the account has about that address, found by index lookups."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.archive_checks import jsonl, record_key, unpack
from tests.helpers.mail import EVENT_KINDS, insert_event, insert_message, new_ids, recount_campaign_stats

pytestmark = pytest.mark.e2e

BASE = datetime(2026, 1, 1, tzinfo=UTC)
SUBJECT = "Subject.Person@Example.org"
ASKED_AS = "SUBJECT.person@example.ORG"  # the same address, spelt otherwise: matched case-insensitively
NEIGHBOUR = "subject.person2@example.org"  # another person, whose address starts the same
WALK_IN = "walk.in@example.net"  # a recipient who is no contact
BULK_MESSAGES, BULK_EVENTS = 6_000, 40_000  # enough rows that reading one address by scanning would cost


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def mail(store_env):
    """One seeded account, with messages and events of its campaigns, transactional mail and a campaign never
    sent, at known instants; the subject's two contact records, memberships, a suppression, messages and events."""
    import psycopg

    from portability.resources import config
    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(config.source_settings().conninfo) as db:
        [account] = seed(db, SeedOptions(accounts=1, contacts=3_000, prefix="mail", large_html_bytes=0))
        lists = [r[0] for r in db.execute("SELECT id FROM lists WHERE account_id = %s ORDER BY id", (account,))]
        c1, c2 = [r[0] for r in db.execute(
            "SELECT id FROM campaigns WHERE account_id = %s ORDER BY id LIMIT 2", (account,))]
        [never] = new_ids(db, "campaigns", 1)
        db.execute("INSERT INTO campaigns (id, account_id, name, status, created_at) "
                   "VALUES (%s, %s, 'Never sent', 'draft', %s)", (never, account, BASE))
        contact = ("INSERT INTO contacts (id, account_id, email, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)")
        subject_contact, subject_again, neighbour = new_ids(db, "contacts", 3)
        db.execute(contact, (subject_contact, account, SUBJECT, BASE, BASE))
        db.execute(contact, (subject_again, account, SUBJECT.lower().replace(".org", ".ORG"), BASE, BASE))
        db.execute(contact, (neighbour, account, NEIGHBOUR, BASE, BASE))
        member = "INSERT INTO list_members (list_id, contact_id, account_id, subscribed) VALUES (%s, %s, %s, true)"
        for list_id, contact_id in ((lists[0], subject_contact), (lists[-1], subject_again), (lists[0], neighbour)):
            db.execute(member, (list_id, contact_id, account))
        suppression = ("INSERT INTO suppressions (id, account_id, kind, address, created_at) "
                       "VALUES (%s, %s, %s, %s, %s)")
        s1, s2 = new_ids(db, "suppressions", 2)
        db.execute(suppression, (s1, account, "unsubscribe", SUBJECT.upper(), BASE))
        db.execute(suppression, (s2, account, "bounce", NEIGHBOUR, BASE))

        # Twelve days of mail, a message a day: to the subject (both spellings), the neighbour and a walk-in;
        # campaigns c1, c2 and transactional in turn. Events follow within a day, some exactly on a boundary.
        recipients = [(SUBJECT, subject_contact), (NEIGHBOUR, neighbour), (WALK_IN, None),
                      (SUBJECT.lower(), subject_again)]
        message_ids = new_ids(db, "messages", 13)
        event_ids = iter(new_ids(db, "events", 100))
        for k in range(12):
            recipient, contact_id = recipients[k % len(recipients)]
            sent = BASE + timedelta(days=k)
            message = insert_message(db, message_ids[k], account, recipient, sent, contact_id=contact_id,
                                     campaign_id=(c1, c2, None)[k % 3])
            insert_event(db, next(event_ids), account, message, "delivered", recipient, sent + timedelta(hours=1))
            insert_event(db, next(event_ids), account, message, "opened", recipient, sent + timedelta(hours=2))
            # The same person opens again, their address spelt otherwise: one opener, two opens.
            insert_event(db, next(event_ids), account, message, "opened", recipient.upper(), sent + timedelta(days=1))
            if k % 2 == 0:
                insert_event(db, next(event_ids), account, message, "clicked", recipient, sent + timedelta(hours=3),
                             url="https://shop.example.com/?a=1,2")
            extra = {5: "bounced", 7: "complained", 9: "unsubscribed", 11: "failed"}.get(k)
            if extra:
                insert_event(db, next(event_ids), account, message, extra, recipient, sent + timedelta(hours=4),
                             ip=None)
        # Queued, not sent yet: it counts as sent now (after any since, never before an until).
        queued = insert_message(db, message_ids[12], account, SUBJECT, None, campaign_id=c1, status="queued")

        # Bulk mail to others, over the year before, so that one address's rows are a needle in a haystack.
        m0, e0 = new_ids(db, "messages", 1)[0], new_ids(db, "events", 1)[0]
        db.execute(
            "INSERT INTO messages (id, account_id, campaign_id, recipient, from_address, message_id, status, sent_at) "
            "SELECT %(m0)s + j, %(a)s, (ARRAY[%(c1)s, %(c2)s, NULL]::bigint[])[1 + j %% 3], "
            "       'bulk' || (j %% 900) || '@Example.net', 'news@sender.example', '<bulk.' || j || '@mail.example>', "
            "       'delivered', %(t)s::timestamptz - interval '1 hour' * j "
            "FROM generate_series(0, %(n)s - 1) AS j",
            {"m0": m0, "a": account, "c1": c1, "c2": c2, "t": BASE, "n": BULK_MESSAGES})
        db.execute(
            "INSERT INTO events (id, account_id, message_id, kind, recipient, occurred_at) "
            "SELECT %(e0)s + i, %(a)s, %(m0)s + i %% %(nm)s, (%(kinds)s::text[])[1 + i %% 7], "
            "       CASE WHEN i %% 2 = 0 THEN 'bulk' ELSE 'BULK' END || ((i %% %(nm)s) %% 900) || '@example.net', "
            "       %(t)s::timestamptz - interval '1 hour' * (i %% %(nm)s) + interval '1 minute' * (i %% 50) "
            "FROM generate_series(0, %(n)s - 1) AS i",
            {"e0": e0, "a": account, "m0": m0, "nm": BULK_MESSAGES, "kinds": list(EVENT_KINDS), "t": BASE,
             "n": BULK_EVENTS})
        db.commit()
        db.execute("ANALYZE contacts, list_members, suppressions, messages, events")
    return {"account": account, "never": never, "campaigns": (c1, c2), "queued": queued,
            "subject": {"contacts": {(subject_contact,), (subject_again,)},
                        "list_members": {(lists[0], subject_contact), (lists[-1], subject_again)},
                        "suppressions": {(s1,)}}}


def _export(store, tmp_path, conf: dict):
    from portability.pipeline import export

    summary = export.run_export({"formats": ["jsonl"], **conf}, str(uuid.uuid4()))
    (tmp_path / "archive.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    root = unpack(tmp_path / "archive.zip", tmp_path)
    return root, json.loads((root / "manifest.json").read_text())


def _records(root, manifest, category: str) -> list[dict]:
    """Every record of a category: exported, and quarantined (with the reason) if any."""
    entry = manifest["contents"][category]
    quarantined = [e["record"] for e in jsonl(root / entry["errors"]["path"])] if entry["errors"] else []
    return jsonl(root / f"data/{category}.jsonl") + quarantined


def _in_window(instant: datetime | None, since: datetime | None, until: datetime | None) -> bool:
    """SPEC: messages sent and events that occurred at or after since and before until; a message not sent yet
    counts as sent now."""
    if instant is None:
        return until is None
    return (since is None or instant >= since) and (until is None or instant < until)


def test_campaign_statistics_equal_a_recount_of_the_exported_messages_and_events(mail, store, tmp_path):
    root, manifest = _export(store, tmp_path, {
        "account_id": mail["account"], "categories": ["campaigns", "messages", "events", "campaign_stats"]})
    campaigns = {r["id"]: r["name"] for r in _records(root, manifest, "campaigns")}
    stats = {r["campaign_id"]: r for r in jsonl(root / "data/campaign_stats.jsonl")}
    entry = manifest["contents"]["campaign_stats"]
    assert entry["source_count"] == entry["exported"] == len(campaigns) and not entry["quarantined"]
    assert stats == recount_campaign_stats(campaigns, jsonl(root / "data/messages.jsonl"),
                                           jsonl(root / "data/events.jsonl"))
    # A campaign without messages has zeros, not nulls; an opener who opens twice (any spelling) is one opener.
    assert all(stats[mail["never"]][column] == 0 for column in stats[mail["never"]] if column not in (
        "campaign_id", "campaign_name"))
    c1 = stats[mail["campaigns"][0]]
    assert 0 < c1["unique_openers"] < c1["opened"] and 0 < c1["unique_clickers"] <= c1["clicked"]
    assert c1["messages"] > 0 and all(c1[kind] > 0 for kind in EVENT_KINDS)


@pytest.mark.parametrize(("since", "until"), [
    (BASE + timedelta(days=3), BASE + timedelta(days=8)),
    (BASE + timedelta(days=3), None),
    (None, BASE + timedelta(days=8)),
], ids=["since-until", "since", "until"])
def test_a_window_holds_exactly_the_messages_sent_and_the_events_that_occurred_in_it(mail, db, store, tmp_path,
                                                                                     since, until):
    conf = {"account_id": mail["account"], "categories": ["campaigns", "messages", "events", "campaign_stats"]}
    conf |= {name: _iso(value) for name, value in (("since", since), ("until", until)) if value}
    root, manifest = _export(store, tmp_path, conf)
    expected = {
        "messages": {(id_,) for id_, sent_at in db.execute(
            "SELECT id, sent_at FROM messages WHERE account_id = %s", (mail["account"],)) if
            _in_window(sent_at, since, until)},
        "events": {(id_,) for id_, occurred_at in db.execute(
            "SELECT id, occurred_at FROM events WHERE account_id = %s", (mail["account"],)) if
            _in_window(occurred_at, since, until)},
    }
    for category, keys in expected.items():
        entry = manifest["contents"][category]
        assert {record_key(category, r) for r in _records(root, manifest, category)} == keys, category
        assert entry["source_count"] == len(keys) == entry["exported"] + entry["quarantined"], category
        assert 0 < len(keys) < db.execute(f"SELECT count(*) FROM {category} WHERE account_id = %s",
                                          (mail["account"],)).fetchone()[0], category
    # The seeder's mail may hold queued messages too: ours is in the window exactly when it has no end.
    assert ((mail["queued"],) in expected["messages"]) == (until is None)
    # The statistics count the same window.
    campaigns = {r["id"]: r["name"] for r in _records(root, manifest, "campaigns")}
    stats = {r["campaign_id"]: r for r in jsonl(root / "data/campaign_stats.jsonl")}
    assert stats == recount_campaign_stats(campaigns, jsonl(root / "data/messages.jsonl"),
                                           jsonl(root / "data/events.jsonl"))


def test_a_subjects_export_holds_exactly_what_the_account_has_about_that_address(mail, db, store, tmp_path):
    root, manifest = _export(store, tmp_path, {"account_id": mail["account"], "subject_email": ASKED_AS,
                                               "formats": ["jsonl", "csv"]})
    assert set(manifest["contents"]) == {"contacts", "list_members", "suppressions", "messages", "events"}
    messages = {id_ for id_, recipient in db.execute(
        "SELECT id, recipient FROM messages WHERE account_id = %s", (mail["account"],))
        if recipient.lower() == SUBJECT.lower()}
    events = {id_ for id_, message_id in db.execute(
        "SELECT id, message_id FROM events WHERE account_id = %s", (mail["account"],)) if message_id in messages}
    expected = dict(mail["subject"], messages={(m,) for m in messages}, events={(e,) for e in events})
    for category, keys in expected.items():
        entry = manifest["contents"][category]
        assert keys and {record_key(category, r) for r in _records(root, manifest, category)} == keys, category
        assert entry["source_count"] == len(keys) == entry["exported"] and not entry["quarantined"], category
    # Stored spellings are kept; nothing of the neighbour, whose address only starts the same, nor of a walk-in.
    records = jsonl(root / "data/contacts.jsonl")
    assert {r["email"] for r in records} == {SUBJECT, SUBJECT.lower().replace(".org", ".ORG")}
    for path in (root / "data").rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").lower()
            assert NEIGHBOUR not in text and WALK_IN not in text and "bulk" not in text, path.name


def test_a_subjects_rows_are_found_by_index_lookups_never_by_scanning(mail, source_dsn):
    from portability.resources import source
    from portability.resources.mapping import load_mapping

    mapping = load_mapping()
    parameters = {"account_id": mail["account"], "since": None, "until": None, "subject_email": ASKED_AS}
    with source.snapshot(source_dsn, parameters) as snapshot:
        for category in ("contacts", "list_members", "suppressions", "messages", "events"):
            narrowed = mapping[category].for_subject()
            plan = snapshot.explain(narrowed)
            scanned = re.findall(r"Seq Scan on (contacts|list_members|messages|events)\b", plan)
            assert not scanned, f"{category}:\n{plan}"
            assert snapshot.owned_rows(narrowed) >= 1, category
