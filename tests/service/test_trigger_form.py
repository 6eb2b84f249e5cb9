"""The account_export trigger form in Airflow's UI, filled in a real browser as a user fills it: only the account,
every other field at the form's defaults; and one data subject's address with the categories left at the form's
full list. Both runs must succeed and export what the defaults mean (SPEC §5)."""

from __future__ import annotations

import pytest

from tests.helpers.airflow_runs import wait_for_run
from tests.helpers.subjects import SUBJECT_CATEGORIES
from tests.service.test_exports_page import browser, log_in  # noqa: F401 (the module's browser fixture)

pytestmark = pytest.mark.service

DAG_ID = "account_export"
ACCOUNT = "e2e-00002"


def run_ids(api) -> set[str]:
    import requests

    response = requests.get(f"{api.base_url}/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 1000},
                            headers={"Authorization": f"Bearer {api.token()}"}, timeout=30)
    response.raise_for_status()
    return {run["dag_run_id"] for run in response.json()["dag_runs"]}


def trigger_from_the_form(page, airflow_server, api, fields: dict[str, str]) -> str:
    """Open the DAG's trigger form, fill `fields` (by Param name), press Trigger; returns the new run's id."""
    before = run_ids(api)
    page.goto(f"{airflow_server['base_url']}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    for name, value in fields.items():
        dialog.locator(f"input[name='element_{name}']").fill(value)  # the form names a Param's field so
    dialog.get_by_role("button", name="Trigger").click()
    dialog.wait_for(state="hidden")
    for _ in range(30):
        new = run_ids(api) - before
        if new:
            [run_id] = new
            return run_id
        page.wait_for_timeout(1000)
    raise AssertionError("the trigger form made no DAG run")


def request_of(run_id: str) -> dict:
    from portability import service

    [row] = [row for row in service.request_list(account_id=ACCOUNT) if row["dag_run_id"] == run_id]
    return row


@pytest.mark.parametrize("subject", [False, True], ids=["account-only", "one-data-subject"])
def test_the_trigger_form_with_its_defaults_exports(browser, airflow_server, api, source_dsn, subject):  # noqa: F811
    import psycopg

    from portability.records.schemas import SchemaSet

    fields = {"account_id": ACCOUNT}
    if subject:
        with psycopg.connect(source_dsn) as conn:
            [address] = conn.execute("SELECT email FROM contacts WHERE account_id = %s ORDER BY id LIMIT 1",
                                     (ACCOUNT,)).fetchone()
        fields["subject_email"] = address
    page = log_in(browser, airflow_server, "portability", airflow_server["password"])
    try:
        run_id = trigger_from_the_form(page, airflow_server, api, fields)
    finally:
        page.context.close()
    assert wait_for_run(api, DAG_ID, run_id) == "success", airflow_server["log"].read_text()[-3000:]

    request = request_of(run_id)
    assert request["state"] in ("ready", "delivered") and request["data_subject"] is subject
    counts = request["counts"]
    properties = SchemaSet().request["properties"]
    # The form sends its full category list and its default formats: a data subject's request narrows the
    # categories to those about one person; an account's takes them all.
    expected = SUBJECT_CATEGORIES if subject else tuple(properties["categories"]["default"])
    assert set(counts) == set(expected)
    if subject:
        assert counts["contacts"]["exported"] == 1
    else:
        assert all(counts[name]["exported"] > 0 for name in ("account", "lists", "contacts"))
