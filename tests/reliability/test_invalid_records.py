"""Invalid records of every kind the source can hold are quarantined with their reason, in every
category, and every category reconciles: source = exported + quarantined."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers.archive_checks import check_counts_and_isolation, check_standard_tools, jsonl, record_key, unpack

pytestmark = pytest.mark.reliability

# Per category: how to spoil its first record (by key order), and the reason it must be given.
PLANTS = {
    "account": ("UPDATE accounts SET name = '' WHERE id = %(a)s", "/name", "minLength"),
    "domains": ("UPDATE domains SET state = repeat('x', 1001) WHERE id = %(first)s", "/state", "maxLength"),
    "lists": ("UPDATE lists SET address = 'no-at-sign' WHERE id = %(first)s", "/address", "pattern"),
    "list_members": ("UPDATE list_members SET vars = '[1, 2]' WHERE list_id = %(first)s AND contact_id = %(second)s",
                     "/vars", "type"),
    "contacts": ("UPDATE contacts SET properties = '\"a string, not an object\"' WHERE id = %(first)s",
                 "/properties", "type"),
    "templates": ("UPDATE templates SET name = repeat('n', 1001) WHERE id = %(first)s", "/name", "maxLength"),
    "template_versions": ("UPDATE template_versions SET created_at = 'infinity' WHERE id = %(first)s",
                          "/created_at", "pattern"),
    "campaigns": ("UPDATE campaigns SET tags = ARRAY['fine', NULL] WHERE id = %(first)s", "/tags/1", "type"),
    "suppressions": ("UPDATE suppressions SET id = -id WHERE id = %(first)s", "/id", "minimum"),
}
FIRST = {
    "account": "SELECT id FROM accounts WHERE id = %(a)s",
    "list_members": "SELECT list_id, contact_id FROM list_members WHERE account_id = %(a)s "
                    "ORDER BY list_id, contact_id LIMIT 1",
}


def test_every_kind_of_invalid_record_is_quarantined_with_its_reason_and_every_category_reconciles(
        seeded, db, store, tmp_path):
    from portability.pipeline import export
    from portability_dev.seed import SeedOptions, seed

    [account] = seed(db, SeedOptions(accounts=1, contacts=60, prefix="invalid", large_html_bytes=0))
    planted = {}
    for category, (update, _, _) in PLANTS.items():
        query = FIRST.get(category, f"SELECT id FROM {category} WHERE account_id = %(a)s ORDER BY id LIMIT 1")
        first = db.execute(query, {"a": account}).fetchone()
        db.execute(update, {"a": account, "first": first[0], "second": first[-1]})
        planted[category] = tuple(-v if category == "suppressions" else v for v in first)
    db.commit()

    summary = export.run_export({"account_id": account, "formats": ["csv", "jsonl", "parquet"]}, str(uuid.uuid4()))
    (tmp_path / "archive.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    root = unpack(tmp_path / "archive.zip", tmp_path)
    manifest = check_counts_and_isolation(root, account, db)  # exported and quarantined partition the source
    check_standard_tools(root)

    for category, (_, path, keyword) in PLANTS.items():
        entry = manifest["contents"][category]
        assert entry["quarantined"] >= 1, category
        errors = {record_key(category, e["record"]): e["errors"] for e in jsonl(root / entry["errors"]["path"])}
        assert all(reasons and all(r["path"] and r["keyword"] and r["message"] for r in reasons)
                   for reasons in errors.values()), category
        reasons = errors[planted[category]]
        assert (path, keyword) in {(r["path"], r["keyword"]) for r in reasons}, (category, reasons)
    # A list with a bad address spoils every membership that names it, each with its own reason.
    assert manifest["contents"]["list_members"]["quarantined"] > 1
