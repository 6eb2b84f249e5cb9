"""What every published archive must satisfy, checked against the source with independent SQL
(not the pipeline's mapping) and with the standard tools (bagit, frictionless)."""

from __future__ import annotations

import csv
import json
import sys
import zipfile
from decimal import Decimal
from pathlib import Path

from portability.records.values import neutralise_formula, render_timestamp
from tests.helpers.tally import TALLY

SECRET_COLUMNS = {
    "users": ("password_hash", "mfa_secret"),
    "api_keys": ("key_hash",),
    "domains": ("dkim_private_key",),
    "webhooks": ("signing_key",),
}
# Each category's record keys, read straight from the reference tables.
SOURCE_KEYS = {
    "account": "SELECT id FROM accounts WHERE id = %s",
    "domains": "SELECT id FROM domains WHERE account_id = %s",
    "lists": "SELECT id FROM lists WHERE account_id = %s",
    "list_members": "SELECT list_id, contact_id FROM list_members WHERE account_id = %s",
    "contacts": "SELECT id FROM contacts WHERE account_id = %s",
    "templates": "SELECT id FROM templates WHERE account_id = %s",
    "template_versions": "SELECT id FROM template_versions WHERE account_id = %s",
    "campaigns": "SELECT id FROM campaigns WHERE account_id = %s",
    "suppressions": "SELECT id FROM suppressions WHERE account_id = %s",
    "users": "SELECT id FROM users WHERE account_id = %s",
    "api_keys": "SELECT id FROM api_keys WHERE account_id = %s",
    "webhooks": "SELECT id FROM webhooks WHERE account_id = %s",
    # The whole account: checks that bound messages and events with since/until count by their own SQL.
    "messages": "SELECT id FROM messages WHERE account_id = %s",
    "events": "SELECT id FROM events WHERE account_id = %s",
    "campaign_stats": "SELECT id FROM campaigns WHERE account_id = %s",
}
# The column that identifies a record, where it is not `id`.
KEY_COLUMNS = {"account": ("account_id",), "list_members": ("list_id", "contact_id"),
               "campaign_stats": ("campaign_id",)}


def record_key(category: str, record: dict):
    return tuple(record[column] for column in KEY_COLUMNS.get(category, ("id",)))


def unpack(archive: Path, into: Path) -> Path:
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(into)
        (root,) = {name.split("/", 1)[0] for name in zipped.namelist()}
    return into / root


def jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line, parse_float=Decimal) for line in lines]


def csv_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def check_standard_tools(root: Path) -> None:
    import bagit
    from frictionless import validate

    bagit.Bag(str(root)).validate()
    report = validate(str(root / "data" / "datapackage.json"))
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])[:10]


def check_counts_and_isolation(root: Path, account_id: str, conn) -> dict:
    """Per category: the archive holds exactly this account's records, each once."""
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["account_id"] == account_id
    for category, entry in manifest["contents"].items():
        source_keys = {tuple(row) for row in conn.execute(SOURCE_KEYS[category], (account_id,))}
        assert entry["source_count"] == len(source_keys), category
        assert entry["exported"] + entry["quarantined"] == entry["source_count"], category
        exported = set()
        for file in entry["files"]:
            path = root / file["path"]
            if file["format"] == "jsonl":
                keys = [record_key(category, r) for r in jsonl(path)]
            elif file["format"] == "csv":
                keys = [tuple(_csv_key(category, r)) for r in csv_rows(path)]
            else:
                import pyarrow.parquet as pq

                keys = [record_key(category, r) for r in pq.read_table(path).to_pylist()]
            assert len(keys) == len(set(keys)) == entry["exported"], (category, file["format"])
            exported |= set(keys)
        quarantined = set()
        if entry["errors"]:
            quarantined = {record_key(category, e["record"]) for e in jsonl(root / entry["errors"]["path"])}
        # Nothing from another account, nothing lost: exported and quarantined partition the source.
        assert exported | quarantined == source_keys, category
        assert not exported & quarantined, category
        TALLY["records checked"] += len(source_keys)
    return manifest


def _csv_key(category: str, row: dict):
    if category == "account":
        return (row["account_id"],)
    return tuple(int(row[column]) for column in KEY_COLUMNS.get(category, ("id",)))


def check_round_trip(root: Path, account_id: str, conn, formats: list[str]) -> None:
    """Text, JSON and timestamps equal the source exactly (CSV: up to the documented formula guard)."""
    source = {
        row[0]: row for row in conn.execute(
            "SELECT id, email, full_name, properties::text, created_at FROM contacts WHERE account_id = %s",
            (account_id,))
    }
    versions = {
        row[0]: row for row in conn.execute(
            "SELECT id, subject, html, text_body FROM template_versions WHERE account_id = %s", (account_id,))
    }
    assert max(len((v[2] or "").encode()) for v in versions.values()) >= 1_000_000, "seed lost its megabyte HTML"

    if "jsonl" in formats:
        for record in jsonl(root / "data/contacts.jsonl"):
            _, email, full_name, properties, created_at = source[record["id"]]
            assert record["email"] == email and record["full_name"] == full_name
            assert record["properties"] == json.loads(properties, parse_float=Decimal)
            assert record["created_at"] == render_timestamp(created_at)
        for record in jsonl(root / "data/template_versions.jsonl"):
            _, subject, html, text_body = versions[record["id"]]
            assert (record["subject"], record["html"], record["text_body"]) == (subject, html, text_body)
        # JSON values keep their exact source text inside the JSON Lines file.
        raw = (root / "data/contacts.jsonl").read_text(encoding="utf-8")
        assert all(props in raw for _, _, _, props, _ in source.values())
    if "csv" in formats:
        for row in csv_rows(root / "data/contacts.csv"):
            _, email, full_name, properties, created_at = source[int(row["id"])]
            assert row["email"] == neutralise_formula(email)
            assert row["full_name"] == ("" if full_name is None else neutralise_formula(full_name))
            assert row["properties"] == properties
            assert row["created_at"] == render_timestamp(created_at)
        for row in csv_rows(root / "data/template_versions.csv"):
            _, subject, html, text_body = versions[int(row["id"])]
            assert row["html"] == neutralise_formula(html or "")
            assert row["text_body"] == neutralise_formula(text_body or "")
    if "parquet" in formats:
        import pyarrow.parquet as pq

        for record in pq.read_table(root / "data/template_versions.parquet").to_pylist():
            _, subject, html, text_body = versions[record["id"]]
            assert (record["subject"], record["html"], record["text_body"]) == (subject, html, text_body)
        for record in pq.read_table(root / "data/contacts.parquet").to_pylist():
            _, email, full_name, properties, created_at = source[record["id"]]
            assert (record["email"], record["full_name"], record["properties"]) == (email, full_name, properties)
            assert record["created_at"] == created_at


def check_no_secrets(root: Path, conn) -> int:
    """No planted secret of any account appears in any file, in any form we can think of."""
    secrets = set()
    for table, columns in SECRET_COLUMNS.items():
        for column in columns:
            secrets |= {v for (v,) in conn.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")}
    assert secrets, "the seed planted no secrets"
    needles = {s.encode() for s in secrets} | {json.dumps(s)[1:-1].encode() for s in secrets} | {b"PLANTEDSECRET"}
    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            if path.suffix == ".parquet":  # compressed columns: look at the values instead
                import pyarrow.parquet as pq

                content = json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False).encode()
            leaked = [n[:40] for n in needles if n in content]
            assert not leaked, f"{path.name} contains secrets {leaked[:3]}"
    return len(secrets)
