"""Nothing dropped without a count (SPEC §6): a row of account A that points at account B's row (or at
none) is quarantined with the reason and counted, never exported, never dropped; nothing of B reaches the
archive; every category's source count is the rows A owns in its table, by independent SQL."""

from __future__ import annotations

import json
import uuid
import zipfile
from datetime import UTC, datetime

import pytest

from tests.helpers.archive_checks import check_counts_and_isolation, check_standard_tools, jsonl, record_key, unpack
from tests.helpers.mail import insert_event, insert_message, new_ids, recount_campaign_stats

pytestmark = pytest.mark.reliability

A, B = "xref-00001", "xref-00002"
# B's values that a cross-account join would pull into A's archive; renamed so that any trace is found.
MARKERS = {"contact": "xref-b-only-contact@b-marker.example", "list_name": "XREF B-ONLY LIST",
           "list_address": "xref-b-only-list@b-marker.example", "template": "XREF B-ONLY TEMPLATE",
           "campaign": "XREF B-ONLY CAMPAIGN", "message_id": "<xref-b-only-message@b-marker.example>",
           "recipient": "xref-b-only-recipient@b-marker.example"}
NOWHERE = 9_100_000_000_001  # an id no table holds
NOT_OURS = "{what} {id} is not a {what} of this account (it belongs to another account or does not exist)"
TABLES = {"list_members": "list_members", "template_versions": "template_versions", "campaigns": "campaigns",
          "lists": "lists", "contacts": "contacts", "templates": "templates", "messages": "messages",
          "events": "events", "campaign_stats": "campaigns"}
CATEGORIES = ["account", "lists", "contacts", "list_members", "templates", "template_versions", "campaigns",
              "messages", "events", "campaign_stats"]
# The categories with rows planted to point outside the account, and each reference's joined columns.
JOINED = {
    "list_members": {"contact_id": ["email"], "list_id": ["list_name", "list_address"]},
    "template_versions": {"template_id": ["template_name"]},
    "campaigns": {"list_id": ["list_name", "list_address"], "template_id": ["template_name"]},
    "messages": {"campaign_id": ["campaign_name"], "contact_id": ["contact_email"]},
    "events": {"message_id": ["internet_message_id"], "campaign_id": ["campaign_name"]},
}
SENT = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _first(db, table: str, account: str) -> int:
    return db.execute(f"SELECT min(id) FROM {table} WHERE account_id = %s", (account,)).fetchone()[0]


@pytest.fixture(scope="module")
def planted(store_env):
    """Two accounts; A's rows pointing at B's contact, list and template, and at rows that do not exist.

    Returns, per category, each planted record's key -> the reasons it must be quarantined with.
    """
    import psycopg

    from portability.resources import config
    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(config.source_settings().conninfo) as db:
        seed(db, SeedOptions(accounts=2, contacts=30, prefix="xref", large_html_bytes=0))
        a_list, b_list = _first(db, "lists", A), _first(db, "lists", B)
        a_contact, b_contact = _first(db, "contacts", A), _first(db, "contacts", B)
        a_template, b_template = _first(db, "templates", A), _first(db, "templates", B)
        db.execute("UPDATE contacts SET email = %s WHERE id = %s", (MARKERS["contact"], b_contact))
        db.execute("UPDATE lists SET name = %s, address = %s WHERE id = %s",
                   (MARKERS["list_name"], MARKERS["list_address"], b_list))
        db.execute("UPDATE templates SET name = %s WHERE id = %s", (MARKERS["template"], b_template))
        a_campaign, b_campaign = _first(db, "campaigns", A), _first(db, "campaigns", B)
        db.execute("UPDATE campaigns SET name = %s WHERE id = %s", (MARKERS["campaign"], b_campaign))
        a_email = db.execute("SELECT email FROM contacts WHERE id = %s", (a_contact,)).fetchone()[0]
        # Messages and events: B's own message, and A's rows pointing at it, at B's campaign and contact.
        m = new_ids(db, "messages", 6)
        b_message = insert_message(db, m[0], B, MARKERS["recipient"], SENT, campaign_id=b_campaign,
                                   message_id=MARKERS["message_id"], subject=MARKERS["campaign"])
        ok_message = insert_message(db, m[1], A, a_email, SENT, campaign_id=a_campaign, contact_id=a_contact)
        to_b_campaign = insert_message(db, m[2], A, a_email, SENT, campaign_id=b_campaign, contact_id=a_contact)
        to_b_contact = insert_message(db, m[3], A, "someone@a.example", SENT, contact_id=b_contact)
        e = new_ids(db, "events", 6)
        insert_event(db, e[0], B, b_message, "opened", MARKERS["recipient"], SENT)
        ok_event = insert_event(db, e[1], A, ok_message, "opened", a_email, SENT)
        of_b_message = insert_event(db, e[2], A, b_message, "clicked", a_email, SENT, url="https://a.example/")
        of_b_campaign = insert_event(db, e[3], A, to_b_campaign, "delivered", a_email, SENT)
        new_id = db.execute("SELECT max(id) + 1000 FROM (SELECT max(id) AS id FROM template_versions UNION ALL "
                            "SELECT max(id) FROM campaigns) ids").fetchone()[0]
        member = "INSERT INTO list_members (list_id, contact_id, account_id, subscribed) VALUES (%s, %s, %s, true)"
        db.execute(member, (a_list, b_contact, A))
        db.execute(member, (b_list, a_contact, A))
        version = ("INSERT INTO template_versions (id, template_id, account_id, tag, engine, subject, created_at) "
                   "VALUES (%s, %s, %s, 'v9', 'handlebars', 'Cross', now())")
        db.execute(version, (new_id, b_template, A))
        campaign = ("INSERT INTO campaigns (id, account_id, name, list_id, template_id, status, created_at) "
                    "VALUES (%s, %s, 'Cross', %s, %s, 'sent', now())")
        db.execute(campaign, (new_id + 1, A, b_list, a_template))
        db.execute(campaign, (new_id + 2, A, a_list, b_template))
        db.execute(campaign, (new_id + 3, A, b_list, b_template))
        db.execute(campaign, (new_id + 4, A, None, None))  # no list, no template: a valid draft
        # A real ESP's database may lack the foreign keys: rows pointing at nothing at all.
        db.execute("SET session_replication_role = replica")  # the foreign keys' triggers do not fire
        db.execute(member, (a_list, NOWHERE, A))
        db.execute(version, (new_id + 5, NOWHERE, A))
        db.execute(campaign, (new_id + 6, A, NOWHERE, a_template))
        to_nowhere = insert_message(db, m[4], A, "someone@a.example", SENT, campaign_id=NOWHERE)
        of_no_message = insert_event(db, e[4], A, NOWHERE, "opened", a_email, SENT)
        db.execute("SET session_replication_role = DEFAULT")
        db.commit()

    def reason(column: str, what: str, id_: int) -> dict:
        return {"path": f"/{column}", "keyword": "reference", "message": NOT_OURS.format(what=what, id=id_)}

    return {
        "list_members": {
            (a_list, b_contact): [reason("contact_id", "contact", b_contact)],
            (b_list, a_contact): [reason("list_id", "list", b_list)],
            (a_list, NOWHERE): [reason("contact_id", "contact", NOWHERE)],
        },
        "template_versions": {
            (new_id,): [reason("template_id", "template", b_template)],
            (new_id + 5,): [reason("template_id", "template", NOWHERE)],
        },
        "campaigns": {
            (new_id + 1,): [reason("list_id", "list", b_list)],
            (new_id + 2,): [reason("template_id", "template", b_template)],
            (new_id + 3,): [reason("list_id", "list", b_list), reason("template_id", "template", b_template)],
            (new_id + 6,): [reason("list_id", "list", NOWHERE)],
        },
        "messages": {
            (to_b_campaign,): [reason("campaign_id", "campaign", b_campaign)],
            (to_b_contact,): [reason("contact_id", "contact", b_contact)],
            (to_nowhere,): [reason("campaign_id", "campaign", NOWHERE)],
        },
        "events": {
            # Nothing of B's message (its Message-ID, its campaign): the join within the account found none.
            (of_b_message,): [reason("message_id", "message", b_message)],
            (of_no_message,): [reason("message_id", "message", NOWHERE)],
            # A's own message, which names B's campaign.
            (of_b_campaign,): [reason("campaign_id", "campaign", b_campaign)],
        },
        "valid": {"campaigns": (new_id + 4,), "messages": (ok_message,), "events": (ok_event,)},
    }


def _archive(store, summary, folder):
    (folder / "a.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
    return unpack(folder / "a.zip", folder), folder / "a.zip"


def _check(root, archive, planted: dict, db) -> None:
    manifest = check_counts_and_isolation(root, A, db)  # source = the account's rows (independent SQL), partitioned
    for category, table in TABLES.items():
        owned = db.execute(f"SELECT count(*) FROM {table} WHERE account_id = %s", (A,)).fetchone()[0]
        assert manifest["contents"][category]["source_count"] == owned, category
    for category in JOINED:
        entry = manifest["contents"][category]
        errors = {record_key(category, e["record"]): e for e in jsonl(root / entry["errors"]["path"])}
        assert entry["quarantined"] == len(errors) == len(planted[category]), category
        for key, reasons in planted[category].items():
            assert errors[key]["errors"] == reasons, (category, key)
            record = errors[key]["record"]
            # Nothing of the other row: the join within the account gave nulls.
            for reason in reasons:
                joined = JOINED[category][reason["path"][1:]]
                assert all(record[column] is None for column in joined), (category, key, record)
        exported = {record_key(category, r) for r in jsonl(root / "data" / f"{category}.jsonl")}
        assert not exported & set(planted[category])
    for category, key in planted["valid"].items():
        assert key in {record_key(category, r) for r in jsonl(root / f"data/{category}.jsonl")}, category
    # Campaign statistics count A's own messages and events only: neither the event of B's message nor the
    # messages naming B's campaign, which the recount of A's exported records leaves out too.
    campaigns = {r["id"]: r["name"] for r in jsonl(root / "data/campaigns.jsonl")}
    campaigns |= {e["record"]["id"]: e["record"]["name"]
                  for e in jsonl(root / manifest["contents"]["campaigns"]["errors"]["path"])}
    stats = {r["campaign_id"]: r for r in jsonl(root / "data/campaign_stats.jsonl")}
    assert stats == recount_campaign_stats(campaigns, jsonl(root / "data/messages.jsonl"),
                                           jsonl(root / "data/events.jsonl"))
    # No value of account B anywhere: not in a data file, an errors file, the manifest or the README.
    with zipfile.ZipFile(archive) as zipped:
        for name in zipped.namelist():
            content = zipped.read(name)
            if name.endswith(".parquet"):
                import io

                import pyarrow.parquet as pq

                content = json.dumps(pq.read_table(io.BytesIO(content)).to_pylist(), default=str).encode()
            leaked = [marker for marker in MARKERS.values() if marker.encode() in content]
            assert not leaked, (name, leaked)
    readme = " ".join((root / "README.md").read_text().split())
    assert "every row the account holds in the source table of that category" in readme


@pytest.mark.parametrize("formats", [["csv", "jsonl"], ["jsonl", "parquet"]], ids=["one-pass", "staged"])
def test_rows_pointing_at_another_accounts_rows_are_quarantined_with_the_reason_and_counted(
        planted, db, store, tmp_path, formats):
    from portability.pipeline import export

    summary = export.run_export({"account_id": A, "categories": CATEGORIES, "formats": formats}, str(uuid.uuid4()))
    root, archive = _archive(store, summary, tmp_path)
    _check(root, archive, planted, db)
    check_standard_tools(root)
    for category in JOINED:
        assert summary.counts[category]["quarantined"] == len(planted[category])


def test_the_dag_quarantines_them_too(planted, run_dag, db, store, tmp_path):
    from portability.pipeline import export
    from portability.service.request import export_id_for_run

    run = run_dag({"account_id": A, "categories": CATEGORIES, "formats": ["jsonl", "parquet"]})
    assert run["state"] == "success", run["output"][-4000:]
    _, summary = export.find_archive(export_id_for_run("account_export", run["run_id"]))
    root, archive = _archive(store, summary, tmp_path)
    _check(root, archive, planted, db)


def test_with_on_invalid_fail_a_row_pointing_outside_the_account_fails_the_run(planted, store):
    from portability.pipeline import export
    from portability.records.validation import InvalidRecords

    export_id = str(uuid.uuid4())
    with pytest.raises(InvalidRecords) as failed:
        export.run_export({"account_id": A, "categories": ["template_versions"], "formats": ["jsonl"],
                           "on_invalid": "fail"}, export_id)
    assert "/template_id (reference)" in str(failed.value)
    assert not any(marker in str(failed.value) for marker in MARKERS.values())
    assert not [k for b in ("exports-us", "exports-eu") for k in store.keys(b, f"exports/{export_id}/")]


def test_a_mapping_whose_query_drops_rows_fails_the_export_naming_both_counts(planted, db, store, tmp_path,
                                                                              monkeypatch):
    """Another ESP's mapping with an inner join: the rows it loses would be missing from the archive."""
    from portability.pipeline import export
    from portability.resources import config

    reference = config.mapping_path().read_text(encoding="utf-8")
    inner = reference.replace("LEFT JOIN contacts c", "JOIN contacts c")
    (tmp_path / "inner.toml").write_text(inner, encoding="utf-8")
    monkeypatch.setenv("PORTABILITY_MAPPING", str(tmp_path / "inner.toml"))
    owned = db.execute("SELECT count(*) FROM list_members WHERE account_id = %s", (A,)).fetchone()[0]
    export_id = str(uuid.uuid4())
    with pytest.raises(export.ExportError) as failed:
        export.run_export({"account_id": A, "categories": ["contacts", "list_members"], "formats": ["jsonl"]},
                          export_id)
    message = str(failed.value)
    # Both missing contacts' memberships are lost by the inner join (that to B's list is kept, and quarantined).
    assert message.startswith(f"list_members: the mapping's query returned {owned - 2} rows, but the account owns "
                              f"{owned} ")
    assert "LEFT JOIN" in message and "reference" in message and str(tmp_path / "inner.toml") in message
    assert not [k for b in ("exports-us", "exports-eu") for k in store.keys(b, f"exports/{export_id}/")]
