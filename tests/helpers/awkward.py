"""A corpus of awkward but valid data, written straight into the source tables (not through the seed).

Every text column of every exported table gets values from `AWKWARD_TEXTS`; JSON columns get
deep, wide and number-edge documents; timestamp columns cycle through `EDGE_TIMESTAMPS`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from itertools import cycle

ACCOUNT = "awkward-00001"

# One code point from each of the 17 Unicode planes, including noncharacters and unassigned
# code points: PostgreSQL, UTF-8 and JSON accept every scalar value but the surrogates.
EVERY_PLANE = "".join((
    "A\u00e9\u4e2d\ufffd\uffff",        # 0: Latin, CJK, replacement character, noncharacter
    "\U0001F600\U0001D518\U0001F1EA",   # 1: emoji, mathematical letters, regional indicator
    "\U00020000\U0002A6D6",             # 2: CJK extension B
    "\U00030000",                       # 3: CJK extension G
    *(chr(plane << 16 | 0x1234) for plane in range(4, 14)),  # 4-13: unassigned
    "\U000E0001\U000E0100",             # 14: language tag, variation selector
    "\U000F0000",                       # 15: private use
    "\U0010FFFD\U0010FFFF",             # 16: private use, the last code point
))
# Every control character but NUL (which PostgreSQL text cannot hold), and the line separators
# that some JSON Lines readers split on.
CONTROLS = "".join(chr(c) for c in (*range(1, 32), 0x7F, *range(0x80, 0xA0))) + "\u2028\u2029"
RIGHT_TO_LEFT = "\u202eevil.exe\u202c עברית العربية \u200fmark\u200e ܐܪܡܝܐ ދިވެހި"
COMBINING = "e\u0301 Z\u0324\u0354a\u0308\u0301l\u0336\u0352g\u0337o\u0338\u0489 \u0915\u094d\u0937 \u1100\u1161\u11a8"
ZERO_WIDTH = "a\u200bb\u200cc\u200dd\u2060e\ufefff\u180eg"
CSV_HOSTILE = (
    '=HYPERLINK("http://x.example/?q=1","click")',
    "=cmd|' /C calc'!A0",
    "+1+2",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+2",
    "\r=1+2",
    "-3.5",                              # a plain number: kept as it is
    " =leading space",
    "'already quoted",
    'quotes "inside", commas, and\nnewlines\r\nof both kinds',
    '"',
    "\r",
    "\n",
    ",",
    "",
    "   ",
    "NULL",
    "\\N",
)
AWKWARD_TEXTS = (EVERY_PLANE, CONTROLS, RIGHT_TO_LEFT, COMBINING, ZERO_WIDTH, *CSV_HOSTILE)

EDGE_TIMESTAMPS = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1900, 2, 28, 23, 59, 59, tzinfo=UTC),
    datetime(2000, 2, 29, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC),
)

DEPTH = 500
WIDTH = 5_000
MEGABYTE_HTML_BYTES = 1_500_000


def deep(depth: int = DEPTH):
    """Objects and arrays nested `depth` levels, awkward text at the bottom."""
    value: object = {"bottom": list(AWKWARD_TEXTS)}
    for level in range(depth):
        value = {f"level {level}": value} if level % 2 else [value, level]
    return value


def wide(width: int = WIDTH) -> dict:
    """Thousands of keys, the awkward texts among them as keys and values."""
    properties = {f"field_{n:05d}": AWKWARD_TEXTS[n % len(AWKWARD_TEXTS)] for n in range(width)}
    properties.update({text or "(empty key)": text for text in AWKWARD_TEXTS})
    properties[""] = "the empty key"
    return properties


NUMBERS = {  # jsonb keeps numbers as exact decimals; the archive must too
    "big_integer": 18446744073709551617,
    "negative_zero": -0.0,
    "pi_to_31_digits": "DECIMAL:3.1415926535897932384626433832795",
    "tiny": "DECIMAL:1e-320",
    "huge": "DECIMAL:1.7976931348623157e308",
    "exponent": "DECIMAL:1E+400",
    "booleans_and_null": [True, False, None],
}


def json_text(value) -> str:
    """JSON text with the DECIMAL: strings spliced in as bare numbers (Python floats would round them).

    It goes into jsonb as text, so the numbers stay exact."""
    return re.sub(r'"DECIMAL:([^"]+)"', r"\1", json.dumps(value, ensure_ascii=False))


def html_page(min_bytes: int = MEGABYTE_HTML_BYTES) -> str:
    block = "<p>" + " | ".join(AWKWARD_TEXTS) + "</p>\n"
    return "<!doctype html><html><body>\n" + block * (min_bytes // len(block.encode()) + 1) + "</body></html>"


def named(text: str) -> str:
    """Names, tags and states must not be empty (schemas/records/common.schema.json#/$defs/name)."""
    return text or "(empty)"


class _Ids:
    def __init__(self, conn):
        self.conn = conn

    def __call__(self, table: str, count: int) -> list[int]:
        (top,) = self.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
        return list(range(top + 1, top + 1 + count))


def insert(conn) -> dict[str, int]:
    """Write the awkward account; returns how many rows each table got."""
    ids = _Ids(conn)
    texts = cycle(AWKWARD_TEXTS)
    times = cycle(EDGE_TIMESTAMPS)
    n = len(AWKWARD_TEXTS)
    conn.execute(
        "INSERT INTO accounts (id, name, company, owner_email, country, region, plan, address, vat_number, "
        "created_at, closed_at) VALUES (%s, %s, %s, %s, 'DE', 'eu', %s, %s::jsonb, %s, %s, %s)",
        (ACCOUNT, EVERY_PLANE, RIGHT_TO_LEFT, "ówner@exämple.test", CONTROLS,
         json_text({"street": COMBINING, "lines": list(AWKWARD_TEXTS), "deep": deep(50)}), CSV_HOSTILE[0],
         EDGE_TIMESTAMPS[0], EDGE_TIMESTAMPS[1]))
    domain_ids = ids("domains", n)
    for k, domain_id in enumerate(domain_ids):
        conn.execute(
            "INSERT INTO domains (id, account_id, name, state, dkim_selector, dkim_public_key, dkim_private_key, "
            "spf_record, dmarc_record, tracking_host, open_tracking, click_tracking, unsubscribe_tracking, "
            "created_at, verified_at) VALUES (%s, %s, %s, %s, %s, %s, 'PLANTEDSECRET-awkward-dkim', %s, %s, %s, "
            "%s, %s, %s, %s, %s)",
            (domain_id, ACCOUNT, f"d{k}.例え.テスト", named(next(texts)), next(texts), next(texts), next(texts),
             next(texts), next(texts), k % 2 == 0, k % 3 == 0, k % 5 == 0, next(times),
             None if k % 4 == 0 else next(times)))
    list_ids = ids("lists", n)
    for k, list_id in enumerate(list_ids):
        conn.execute(
            "INSERT INTO lists (id, account_id, name, address, description, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (list_id, ACCOUNT, named(AWKWARD_TEXTS[k]), f"list{k}+{EVERY_PLANE[:3]}@lists.example",
             next(texts), next(times)))
    contact_ids = ids("contacts", n * 2)
    for k, contact_id in enumerate(contact_ids):
        properties = [wide(), deep(), NUMBERS, {}, {"text": next(texts)}][k % 5]
        conn.execute(
            "INSERT INTO contacts (id, account_id, email, full_name, properties, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)",
            (contact_id, ACCOUNT, f"{k}.ñ{EVERY_PLANE[5:8]}@exämple.test", None if k == n else next(texts),
             json_text(properties), next(times), next(times)))
    for k, contact_id in enumerate(contact_ids):
        conn.execute(
            "INSERT INTO list_members (list_id, contact_id, account_id, subscribed, subscribed_at, "
            "unsubscribed_at, vars) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
            (list_ids[k % n], contact_id, ACCOUNT, k % 2 == 0, next(times), None if k % 2 == 0 else next(times),
             json_text({"var": next(texts), "deep": deep(40)})))
    template_ids = ids("templates", n)
    for k, template_id in enumerate(template_ids):
        conn.execute(
            "INSERT INTO templates (id, account_id, name, description, category, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (template_id, ACCOUNT, named(AWKWARD_TEXTS[k]), next(texts), next(texts), next(times),
             next(times)))
    version_ids = ids("template_versions", n)
    for k, version_id in enumerate(version_ids):
        conn.execute(
            "INSERT INTO template_versions (id, template_id, account_id, tag, engine, subject, html, text_body, "
            "active, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (version_id, template_ids[k], ACCOUNT, named(next(texts)), "handlebars", next(texts),
             html_page() if k == 0 else next(texts), None if k == 1 else next(texts), k % 2 == 0, next(times)))
    campaign_ids = ids("campaigns", n)
    for k, campaign_id in enumerate(campaign_ids):
        conn.execute(
            "INSERT INTO campaigns (id, account_id, name, subject, from_address, list_id, template_id, status, "
            "tags, scheduled_at, sent_at, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (campaign_id, ACCOUNT, named(AWKWARD_TEXTS[k]), next(texts), f"news{k}@exämple.test",
             list_ids[k], None if k % 3 == 0 else template_ids[k], named(next(texts)),
             list(AWKWARD_TEXTS[k:k + 4]) if k % 4 else [], next(times), None if k % 2 else next(times),
             next(times)))
    suppression_ids = ids("suppressions", n * 4)
    for k, suppression_id in enumerate(suppression_ids):
        conn.execute(
            "INSERT INTO suppressions (id, account_id, kind, address, domain, code, reason, tags, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (suppression_id, ACCOUNT, ("bounce", "unsubscribe", "complaint", "allowlist")[k % 4],
             f"gone{k}@exämple.test", None if k % 2 else f"d{k % n}.例え.テスト", next(texts), next(texts),
             [next(texts), next(texts)], next(times)))
    for k, user_id in enumerate(ids("users", n)):
        conn.execute(
            "INSERT INTO users (id, account_id, email, full_name, role, password_hash, mfa_secret, created_at, "
            "last_login_at) VALUES (%s, %s, %s, %s, %s, 'PLANTEDSECRET-awkward-password', %s, %s, %s)",
            (user_id, ACCOUNT, f"user{k}.ñ{EVERY_PLANE[5:8]}@exämple.test", None if k == 1 else next(texts),
             named(next(texts)), None if k % 2 else "PLANTEDSECRET-awkward-mfa", next(times),
             None if k % 3 == 0 else next(times)))
    for k, key_id in enumerate(ids("api_keys", n)):
        conn.execute(
            "INSERT INTO api_keys (id, account_id, name, key_prefix, key_hash, scopes, created_at, last_used_at, "
            "revoked_at) VALUES (%s, %s, %s, %s, 'PLANTEDSECRET-awkward-apikey', %s, %s, %s, %s)",
            (key_id, ACCOUNT, named(next(texts)), named(next(texts)), list(AWKWARD_TEXTS[k:k + 3]), next(times),
             None if k % 2 else next(times), None if k % 3 else next(times)))
    for k, webhook_id in enumerate(ids("webhooks", n)):
        conn.execute(
            "INSERT INTO webhooks (id, account_id, event, url, signing_key, created_at) "
            "VALUES (%s, %s, %s, %s, 'PLANTEDSECRET-awkward-webhook', %s)",
            (webhook_id, ACCOUNT, named(next(texts)), f"https://例子.example/{k}?q={named(next(texts))}",
             next(times)))
    message_ids = ids("messages", n)
    for k, message_id in enumerate(message_ids):
        conn.execute(
            "INSERT INTO messages (id, account_id, campaign_id, contact_id, recipient, from_address, subject, "
            "message_id, tags, status, size_bytes, sent_at, html, text_body) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (message_id, ACCOUNT, None if k % 3 == 0 else campaign_ids[k], None if k % 4 == 1 else contact_ids[k],
             f"To{k}.ñ{EVERY_PLANE[5:8]}@EXÄMPLE.test", next(texts), next(texts),
             f"<{k}.{named(next(texts))}@exämple.test>", list(AWKWARD_TEXTS[k:k + 2]),
             ("queued", "sent", "delivered", "bounced", "failed")[k % 5], (None, 0, 2**31 - 1, 1)[k % 4],
             None if k % 5 == 0 else next(times), None if k == 1 else next(texts), None if k == 2 else next(texts)))
    kinds = ("delivered", "opened", "clicked", "bounced", "complained", "unsubscribed", "failed")
    addresses = (None, "192.0.2.1", "2001:db8::ff00:42:8329", "::ffff:198.51.100.7", "0.0.0.0", "255.255.255.255")
    for k, event_id in enumerate(ids("events", n * 2)):
        conn.execute(
            "INSERT INTO events (id, account_id, message_id, kind, recipient, url, user_agent, ip, reason, "
            "occurred_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::inet, %s, %s)",
            (event_id, ACCOUNT, message_ids[k % n], kinds[k % len(kinds)],
             f"to{k % n}.ñ{EVERY_PLANE[5:8]}@exämple.TEST" if k % 2 else f"To{k % n}.ñ{EVERY_PLANE[5:8]}@EXÄMPLE.test",
             next(texts), None if k % 6 == 0 else next(texts), addresses[k % len(addresses)], next(texts),
             next(times)))
    conn.commit()
    return {"account": 1, "domains": n, "lists": n, "contacts": 2 * n, "list_members": 2 * n,
            "templates": n, "template_versions": n, "campaigns": n, "suppressions": 4 * n,
            "users": n, "api_keys": n, "webhooks": n, "messages": n, "events": 2 * n,
            "campaign_stats": n}  # one row per campaign

