"""`portability requests`: every request of the ledger in the shell, as the privacy team lists them."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers.commands import portability_cli

pytestmark = pytest.mark.e2e


def test_the_requests_command_lists_every_request_of_an_account_with_its_state_and_deadline(store_env):
    from portability import service

    account = f"listing-{uuid.uuid4().hex[:10]}"
    whole = service.submit({"account_id": account, "requested_by": "dpo@example.com"})
    person = service.submit({"account_id": account, "subject_email": "someone@example.org",
                             "requested_by": "support"})

    listed = json.loads(portability_cli("requests", "--account", account, "--json").stdout)
    assert [row["request_id"] for row in listed] == [person.request_id, whole.request_id]
    assert [(row["state"], row["data_subject"], row["requested_by"]) for row in listed] == [
        ("requested", True, "support"), ("requested", False, "dpo@example.com")]
    assert all(row["deadline_at"] > row["requested_at"] and not row["overdue"] for row in listed)

    text = portability_cli("requests", "--account", account)
    assert [line.split()[1] for line in text.stdout.splitlines()] == ["requested", "requested"]
    assert whole.request_id in text.stdout and "one person" in text.stdout
    assert "someone@example.org" not in text.stdout + text.stderr
    assert "2 request(s)" in text.stderr

    assert json.loads(portability_cli("requests", "--account", account, "--state", "delivered", "--json").stdout) == []
    refused = portability_cli("requests", "--state", "done", check=False)
    assert refused.returncode == 2 and "unknown state 'done'" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_a_refused_request_is_listed_with_its_reason_with_or_without_an_account(store_env):
    from portability.resources import ledger

    account = f"listing-{uuid.uuid4().hex[:10]}"
    reason = "invalid export request: field 'formats[0]': 'pdf' is not one of ['csv', 'jsonl', 'parquet']"
    with ledger.connect() as conn:
        request_id = ledger.refuse(conn, reason=reason, requested_by="support", account_id=account)
        nameless = ledger.refuse(conn, reason="invalid export request: field 'account_id' is required",
                                 requested_by="support")

    [row] = json.loads(portability_cli("requests", "--account", account, "--json").stdout)
    assert (row["request_id"], row["state"], row["export_id"], row["refused_reason"]) == (
        request_id, "refused", None, reason)
    text = portability_cli("requests", "--state", "refused").stdout
    assert f"request {request_id}" in text and "'pdf' is not one of" in text
    assert any(f"request {nameless}" in line and "(no account)" in line for line in text.splitlines())
