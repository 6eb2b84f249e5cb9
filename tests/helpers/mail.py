"""Messages and events written by the tests themselves (the seeder's own may be there too), and campaign
statistics recounted in Python from an archive's messages and events, never by the mapping's SQL."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime

EVENT_KINDS = ("delivered", "opened", "clicked", "bounced", "complained", "unsubscribed", "failed")


def new_ids(db, table: str, count: int) -> list[int]:
    """`count` ids no row of `table` holds yet (the caller inserts them in the same transaction)."""
    top = db.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
    return list(range(top + 1000, top + 1000 + count))


def insert_message(db, id_: int, account: str, recipient: str, sent_at: datetime | None, *,
                   campaign_id: int | None = None, contact_id: int | None = None, status: str = "delivered",
                   message_id: str | None = None, subject: str = "Hello", html: str | None = "<p>Hello</p>") -> int:
    db.execute(
        "INSERT INTO messages (id, account_id, campaign_id, contact_id, recipient, from_address, subject, message_id, "
        "tags, status, size_bytes, sent_at, html, text_body) "
        "VALUES (%s, %s, %s, %s, %s, 'News <news@sender.example>', %s, %s, ARRAY['test'], %s, 2048, %s, %s, 'Hello')",
        (id_, account, campaign_id, contact_id, recipient, subject, message_id or f"<test.{id_}@mail.example.com>",
         status, sent_at, html))
    return id_


def insert_event(db, id_: int, account: str, message_id: int, kind: str, recipient: str, occurred_at: datetime, *,
                 url: str | None = None, ip: str | None = "192.0.2.7") -> int:
    db.execute(
        "INSERT INTO events (id, account_id, message_id, kind, recipient, url, user_agent, ip, reason, occurred_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, 'Mozilla/5.0', %s::inet, %s, %s)",
        (id_, account, message_id, kind, recipient, url, ip, "550 5.1.1 unknown" if kind == "bounced" else None,
         occurred_at))
    return id_


def recount_campaign_stats(campaigns: dict[int, str], messages: list[dict], events: list[dict]) -> dict[int, dict]:
    """campaign_stats as a Python recount of exported messages and events: per campaign of the account, the
    messages sent to it, the events of each kind and the different addresses (case-insensitively) that opened
    and clicked; zero where there are none."""
    sent = Counter(m["campaign_id"] for m in messages)
    kinds: dict[int, Counter] = defaultdict(Counter)
    people: dict[tuple[int, str], set] = defaultdict(set)
    for event in events:
        kinds[event["campaign_id"]][event["kind"]] += 1
        people[event["campaign_id"], event["kind"]].add(event["recipient"].lower())
    return {
        campaign_id: {
            "campaign_id": campaign_id, "campaign_name": name, "messages": sent[campaign_id],
            **{kind: kinds[campaign_id][kind] for kind in EVENT_KINDS},
            "unique_openers": len(people[campaign_id, "opened"]),
            "unique_clickers": len(people[campaign_id, "clicked"]),
        }
        for campaign_id, name in campaigns.items()
    }
