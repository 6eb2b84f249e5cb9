"""One data subject's export (SPEC §3): rows planted for an address straight into the source tables, what the
archive must hold for it by independent SQL (not the pipeline's mapping) compared in Python, and every form of
the address that must never reach an object key, a log line or XCom."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from tests.helpers.archive_checks import jsonl, record_key
from tests.helpers.tally import TALLY

# The categories the reference mapping narrows to one address, in the request schema's canonical order.
SUBJECT_CATEGORIES = ("list_members", "contacts", "suppressions", "messages", "events")

# Every row of an account in each category's source table, with the address that ties it to a data subject:
# read without the mapping, so that a wrong subject query cannot also be the reference.
ADDRESSED_ROWS = {
    "contacts": "SELECT id, email FROM contacts WHERE account_id = %s",
    "list_members": ("SELECT m.list_id, m.contact_id, c.email FROM list_members m "
                     "JOIN contacts c ON c.id = m.contact_id WHERE m.account_id = %s"),
    "suppressions": "SELECT id, address FROM suppressions WHERE account_id = %s",
    "messages": "SELECT id, recipient FROM messages WHERE account_id = %s",
    # An event belongs to the subject whose address its message was sent to.
    "events": "SELECT e.id, m.recipient FROM events e JOIN messages m ON m.id = e.message_id WHERE e.account_id = %s",
}


class Ids:
    """Fresh ids per table (above the largest already there), for rows planted by a test."""

    def __init__(self, conn):
        self.conn = conn

    def __call__(self, table: str, count: int = 1) -> list[int]:
        self.conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        (top,) = self.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
        return list(range(top + 1, top + 1 + count))


def plain_account(conn, account_id: str, region: str = "us") -> dict:
    """An account with one list and one campaign, for rows planted by a test (no seeding)."""
    ids = Ids(conn)
    conn.execute("INSERT INTO accounts (id, name, owner_email, region, plan, created_at) "
                 "VALUES (%s, 'Subject Test Ltd', 'owner@subject-test.example', %s, 'free', now())",
                 (account_id, region))
    (list_id,) = ids("lists")
    conn.execute("INSERT INTO lists (id, account_id, name, address, created_at) VALUES (%s, %s, %s, %s, now())",
                 (list_id, account_id, f"Newsletter of {account_id}", f"news-{account_id}@lists.example"))
    (campaign_id,) = ids("campaigns")
    conn.execute("INSERT INTO campaigns (id, account_id, name, subject, list_id, status, created_at) "
                 "VALUES (%s, %s, 'Spring sale', 'Spring!', %s, 'sent', now())", (campaign_id, account_id, list_id))
    return {"account_id": account_id, "lists": [list_id], "campaign": campaign_id}


def plant(conn, account_id: str, address: str, *, lists: list[int], campaign: int | None,
          contacts: int = 1, messages: int = 2, events_per_message: int = 2, suppressions: int = 1) -> None:
    """Rows of one address in an account: contact record(s), a membership of each contact in each list,
    suppressions, messages sent to it (one transactional, without campaign or contact) and their events."""
    ids = Ids(conn)
    contact_ids = ids("contacts", contacts)
    for n, contact_id in enumerate(contact_ids):
        conn.execute("INSERT INTO contacts (id, account_id, email, full_name, properties, created_at, updated_at) "
                     "VALUES (%s, %s, %s, %s, %s::jsonb, now(), now())",
                     (contact_id, account_id, address, f"Person {n}", json.dumps({"n": n, "plan": "gold"})))
        for list_id in lists:
            conn.execute("INSERT INTO list_members (list_id, contact_id, account_id, subscribed, subscribed_at, vars) "
                         "VALUES (%s, %s, %s, true, now(), %s::jsonb)",
                         (list_id, contact_id, account_id, json.dumps({"first_name": f"P{n}"})))
    for kind, suppression_id in zip(("bounce", "unsubscribe", "complaint"), ids("suppressions", suppressions),
                                    strict=False):
        conn.execute("INSERT INTO suppressions (id, account_id, kind, address, created_at) "
                     "VALUES (%s, %s, %s, %s, now())", (suppression_id, account_id, kind, address))
    message_ids = ids("messages", messages)
    for n, message_id in enumerate(message_ids):
        transactional = n == len(message_ids) - 1 and n > 0
        conn.execute(
            "INSERT INTO messages (id, account_id, campaign_id, contact_id, recipient, from_address, subject, "
            "message_id, status, size_bytes, sent_at, html, text_body) "
            "VALUES (%s, %s, %s, %s, %s, 'news@sender.example', %s, %s, 'delivered', 1234, now(), %s, %s)",
            (message_id, account_id, None if transactional else campaign,
             None if transactional or not contact_ids else contact_ids[0], address,
             "Your receipt" if transactional else "Spring!", f"<{message_id}.{n}@sender.example>",
             "<p>Hello</p>", "Hello"))
        for kind, event_id in zip(("delivered", "opened", "clicked", "complained"),
                                  ids("events", events_per_message), strict=False):
            conn.execute(
                "INSERT INTO events (id, account_id, message_id, kind, recipient, url, user_agent, ip, occurred_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, 'Mozilla/5.0', '192.0.2.7', now())",
                (event_id, account_id, message_id, kind, address,
                 "https://shop.example/spring" if kind == "clicked" else None))


def expected_keys(conn, account_id: str, matches: Callable[[str], bool]) -> dict[str, set[tuple]]:
    """Per subject category, the keys of the account's rows whose address `matches`."""
    expected = {}
    for category, query in ADDRESSED_ROWS.items():
        expected[category] = {tuple(row[:-1]) for row in conn.execute(query, (account_id,)) if matches(row[-1])}
    return expected


def same_address(subject: str) -> Callable[[str], bool]:
    """Equal to the subject case-insensitively, as SPEC §3 matches addresses; a look-alike (another code point)
    is another address."""
    return lambda address: address is not None and address.lower() == subject.lower()


def archive_file(store, bucket: str, key: str, folder: Path) -> tuple[Path, Path]:
    """The archive downloaded to `folder`, and the folder it unpacks to."""
    from tests.helpers.archive_checks import unpack

    archive = folder / "archive.zip"
    archive.write_bytes(store.read_bytes(bucket, key))
    return archive, unpack(archive, folder)


def archived_records(root: Path, category: str) -> list[dict]:
    path = root / "data" / f"{category}.jsonl"
    return jsonl(path) if path.exists() else []


def check_subject_archive(root: Path, account_id: str, subject: str, expected: dict[str, set[tuple]]) -> dict:
    """The archive holds exactly the expected rows of each subject category, each once, nothing quarantined, and
    says whose data it is; returns the manifest."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["account_id"] == account_id
    assert manifest["data_subject"] == {"email": subject}, manifest.get("data_subject")
    assert set(manifest["contents"]) == set(expected), sorted(manifest["contents"])
    for category, keys in expected.items():
        entry = manifest["contents"][category]
        records = archived_records(root, category)
        got = [record_key(category, r) for r in records]
        assert len(got) == len(set(got)), (category, "a record twice")
        assert set(got) == keys, (category, sorted(set(got) ^ keys)[:10])
        assert entry["exported"] + entry["quarantined"] == entry["source_count"], category
        assert (entry["source_count"], entry["exported"], entry["quarantined"]) == (len(keys), len(keys), 0), (
            category, entry)
        for file in entry["files"]:
            if file["format"] == "csv":
                with open(root / file["path"], encoding="utf-8", newline="") as stream:
                    rows = max(0, sum(1 for _ in _csv_records(stream)) - 1)
                assert rows == len(keys), (category, "csv")
        TALLY["records checked"] += len(keys)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert subject in readme, "the README does not say whose data this is"
    return manifest


def _csv_records(stream):
    import csv
    import sys

    csv.field_size_limit(sys.maxsize)
    return csv.reader(stream)


def address_forms(address: str) -> list[str]:
    """What a leak of the address would look like, compared lower-cased (so every case variant is one form):
    the address, percent-encoded, JSON-escaped, and its local part when it is distinctive enough to search for."""
    forms = {address.lower(), quote(address, safe="").lower(), json.dumps(address)[1:-1].lower(),
             address.encode("unicode_escape").decode("ascii").lower()}
    local = address.partition("@")[0]
    if len(local) >= 8:
        forms.add(local.lower())
    return sorted(forms)


def find_address(text: str, address: str) -> str | None:
    """The first leaked form of the address in `text` (case-insensitively), with some context; None if none."""
    lowered = text.lower()
    for form in address_forms(address):
        at = lowered.find(form)
        if at >= 0:
            return f"{form!r} in ...{text[max(0, at - 120):at + len(form) + 120]!r}..."
    return None


def object_keys(store) -> list[str]:
    """Every object key in every bucket the configuration names, staging and multipart uploads included."""
    from portability.resources import config

    found = []
    for bucket in sorted(set(config.storage_settings().buckets.values())):
        found += [f"{bucket}/{key}" for key in store.keys(bucket, "")]
        uploads = store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        found += [f"{bucket}/{upload['Key']}" for upload in uploads]
    return found


def zip_names(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as zipped:
        return zipped.namelist()


NOTHING_HELD = re.compile(r"\b(nothing|no data|no records?|no rows)\b", re.IGNORECASE)
