"""Tenant isolation, property-based: accounts whose emails, names and list addresses collide never leak
into each other's exports."""

from __future__ import annotations

import uuid
from itertools import count

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.archive_checks import check_counts_and_isolation, jsonl, unpack

pytestmark = pytest.mark.reliability
CATEGORIES = ["account", "lists", "list_members", "contacts", "suppressions"]
# Few values, so that accounts share them: the same address in several accounts, differing only in case or tag.
EMAILS = ["ann@example.com", "Ann@Example.com", "ann+news@example.com", "bob@example.com", "b@xn--bcher-kva.de"]
NAMES = ["Ann", "ann", "Bob", "Ann ", None]
LIST_ADDRESSES = ["news@lists.example.com", "News@lists.example.com", "offers@lists.example.com"]

_ids = count(9_000_000_000)

account_data = st.fixed_dictionaries({
    "region": st.sampled_from(["us", "eu"]),
    "owner": st.sampled_from(EMAILS),
    "contacts": st.lists(st.tuples(st.sampled_from(EMAILS), st.sampled_from(NAMES)), max_size=5,
                         unique_by=lambda contact: contact[0]),
    "lists": st.lists(st.tuples(st.sampled_from(["News", "news", "Offers"]), st.sampled_from(LIST_ADDRESSES)),
                      max_size=3),
    "suppressed": st.lists(st.sampled_from(EMAILS), max_size=3),
    "members": st.sets(st.tuples(st.integers(0, 2), st.integers(0, 4)), max_size=8),
})


def _insert(db, account_id: str, data: dict) -> None:
    db.execute("INSERT INTO accounts (id, name, owner_email, region, plan, created_at) VALUES (%s, %s, %s, %s, "
               "'free', now())", (account_id, "Same Name Ltd", data["owner"], data["region"]))
    contacts = []
    for email, name in data["contacts"]:
        contacts.append(next(_ids))
        db.execute("INSERT INTO contacts (id, account_id, email, full_name, created_at, updated_at) "
                   "VALUES (%s, %s, %s, %s, now(), now())", (contacts[-1], account_id, email, name))
    lists = []
    for name, address in data["lists"]:
        lists.append(next(_ids))
        db.execute("INSERT INTO lists (id, account_id, name, address, created_at) VALUES (%s, %s, %s, %s, now())",
                   (lists[-1], account_id, name, address))
    for list_index, contact_index in data["members"]:
        if list_index < len(lists) and contact_index < len(contacts):
            db.execute("INSERT INTO list_members (list_id, contact_id, account_id, subscribed) "
                       "VALUES (%s, %s, %s, true)", (lists[list_index], contacts[contact_index], account_id))
    for address in data["suppressed"]:
        db.execute("INSERT INTO suppressions (id, account_id, kind, address, created_at) "
                   "VALUES (%s, %s, 'bounce', %s, now())", (next(_ids), account_id, address))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(accounts=st.lists(account_data, min_size=2, max_size=3))
def test_no_row_of_one_account_in_anothers_export(seeded, db, store, tmp_path_factory, accounts):
    from portability.pipeline import export

    prefix = f"iso{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}-{n}" for n in range(len(accounts))]
    for account_id, data in zip(ids, accounts, strict=True):
        _insert(db, account_id, data)
    db.commit()
    for account_id, data in zip(ids, accounts, strict=True):
        summary = export.run_export({"account_id": account_id, "categories": CATEGORIES, "formats": ["jsonl"]},
                                    str(uuid.uuid4()))
        assert summary.bucket == f"exports-{data['region']}"
        folder = tmp_path_factory.mktemp(account_id)
        (folder / "a.zip").write_bytes(store.read_bytes(summary.bucket, summary.key))
        root = unpack(folder / "a.zip", folder)
        # Exactly this account's keys in every category, by independent SQL: nothing from the others.
        check_counts_and_isolation(root, account_id, db)
        own_emails = {row[0]: row[1] for row in db.execute(
            "SELECT id, email FROM contacts WHERE account_id = %s", (account_id,)).fetchall()}
        for member in jsonl(root / "data" / "list_members.jsonl"):
            assert own_emails[member["contact_id"]] == member["email"]  # joined on the id, within the account
