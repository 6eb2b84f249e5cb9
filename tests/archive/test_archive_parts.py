"""The command sends each big file's parts straight into the archive's upload; the archive is the staged route's."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid

import psycopg
import pytest

from tests.helpers.accounts import BAD_ACCOUNT
from tests.helpers.archive_checks import check_counts_and_isolation, check_standard_tools, csv_rows, jsonl, unpack
from tests.helpers.exports import data_entries, staged_route_archive

pytestmark = pytest.mark.e2e
ACCOUNT = "bigfiles-00001"
CONTACTS = 40
NOISE_BYTES = 768 * 1024  # random bytes per contact, as base64: it barely deflates, so each file is ~30 MiB


@pytest.fixture(scope="module")
def big_files_account(seeded, source_dsn) -> str:
    """An account whose contacts files each deflate to several upload parts: a head, sent parts and a tail."""
    noise = random.Random(7)
    with psycopg.connect(source_dsn) as conn:
        conn.execute(
            "INSERT INTO accounts (id, name, owner_email, country, region, plan, created_at) "
            "VALUES (%s, 'Big files', 'owner@big.test', 'US', 'us', 'pro', now()) ON CONFLICT (id) DO NOTHING",
            (ACCOUNT,))
        if not conn.execute("SELECT count(*) FROM contacts WHERE account_id = %s", (ACCOUNT,)).fetchone()[0]:
            (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM contacts").fetchone()
            for k in range(CONTACTS):
                text = base64.b64encode(noise.randbytes(NOISE_BYTES)).decode()
                conn.execute(
                    "INSERT INTO contacts (id, account_id, email, full_name, properties, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s::jsonb, now(), now())",
                    (top + 1 + k, ACCOUNT, f"c{k}@big.test", f"Contact {k}", json.dumps({"noise": text})))
    return ACCOUNT


def _part_count(store, bucket: str, key: str) -> int:
    """How many parts the stored object was made of: a multipart ETag ends with '-<parts>'."""
    etag = store.client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1


def _open_uploads(store, bucket: str, export_id: str) -> list[str]:
    answer = store.client.list_multipart_uploads(Bucket=bucket, Prefix=f"exports/{export_id}/")
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def test_big_files_go_straight_into_the_archive_and_equal_the_staged_route(big_files_account, store, db,
                                                                           monkeypatch, tmp_path):
    from portability.archive.parts import EDGE_BYTES, SENT_PART_BYTES
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "15")  # several pieces, so the parts sent early span pieces
    conf = {"account_id": big_files_account, "categories": ["contacts"], "formats": ["csv", "jsonl"]}
    summary = export.run_export(conf, str(uuid.uuid4()))
    archive = store.read_bytes(summary.bucket, summary.key)
    assert summary.bytes == len(archive) and summary.sha256 == hashlib.sha256(archive).hexdigest()
    assert summary.bytes > 2 * (2 * EDGE_BYTES + 2 * SENT_PART_BYTES)  # both files have sent parts
    # At least two sent parts per file, and the parts around them: the CSV's header and head, the CSV's
    # tail with the JSON Lines' header and head, and the JSON Lines' tail with the rest of the archive.
    assert _part_count(store, summary.bucket, summary.key) >= 2 * 2 + 3
    assert not _open_uploads(store, summary.bucket, summary.export_id)
    assert not list(store.keys(summary.bucket, f"staging/{summary.export_id}/"))
    assert data_entries(archive) == data_entries(staged_route_archive(store, conf))

    (tmp_path / "a.zip").write_bytes(archive)
    root = unpack(tmp_path / "a.zip", tmp_path)
    check_counts_and_isolation(root, big_files_account, db)
    source = dict(db.execute("SELECT id, properties FROM contacts WHERE account_id = %s ORDER BY id",
                             (big_files_account,)).fetchall())
    assert {record["id"]: record["properties"] for record in jsonl(root / "data" / "contacts.jsonl")} == source
    assert {int(row["id"]): json.loads(row["properties"]) for row in csv_rows(root / "data" / "contacts.csv")} == source
    check_standard_tools(root)


def test_a_failed_command_export_leaves_no_parts_behind(seeded, store):
    """Parts already sent hold personal data: a failure aborts the upload as well as removing staging."""
    from portability.pipeline import export
    from portability.records.validation import InvalidRecords

    export_id = str(uuid.uuid4())
    with pytest.raises(InvalidRecords):
        export.run_export({"account_id": BAD_ACCOUNT, "on_invalid": "fail"}, export_id)
    for bucket in ("exports-us", "exports-eu"):
        assert not _open_uploads(store, bucket, export_id)
        assert not list(store.keys(bucket, f"exports/{export_id}/"))
        assert not list(store.keys(bucket, f"staging/{export_id}/"))
