"""The privacy team's Exports page, in a real browser (Debian's chromium, driven by Playwright) against the session's
`airflow standalone`: the login, the page opened from Airflow's navigation, a request made through the REST API
with its per-category counts, a cancel through the button (the ledger and the DAG run follow), a fresh link sent
(never shown), a revoke, the DAG run one click away; and every route refusing a caller without a valid Airflow
token, and an action from a user who may not edit DAG runs."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.helpers.airflow_runs import wait_for_run

pytestmark = pytest.mark.service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = REPO / "docs" / "exports-page.png"
DAG_ID = "account_export"
REQUESTER_EMAIL = "exports-page-requester@example.org"
# Options no other test asks for, so that no request of theirs joins these exports (nor these theirs).
EXPORTED = {"account_id": "e2e-00001", "categories": ["account", "lists", "contacts", "templates", "campaigns"],
            "formats": ["jsonl"]}
TO_CANCEL = {"account_id": "e2e-00002", "categories": ["account", "lists"], "formats": ["jsonl"]}
UNDER_WAY = {"account_id": "e2e-00003", "categories": ["contacts", "lists", "messages"], "formats": ["jsonl"]}
# What must never reach the page: an archive's presigned link, or an address the ledger keeps for its channel.
NEVER_SHOWN = re.compile(r"X-Amz-|Signature=|https?://[^\s\"']*(?:exports|archives)/|" + re.escape(REQUESTER_EMAIL))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as scripts/test "
                   "does when it can")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI runs the browser tests; it never skips them
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def exported(airflow_server, mailbox, steady_webhook):
    """A request made through the REST API (a trigger of account_export, as any client would), run to the end."""
    from portability import service
    from portability.resources.airflow_api import AirflowApi

    api = AirflowApi(airflow_server["base_url"], "portability", airflow_server["password"])
    run_id = f"exports-page-{uuid.uuid4()}"
    api.trigger(DAG_ID, run_id, {**EXPORTED, "requested_by": "dpo@example.com", "notify_email": REQUESTER_EMAIL,
                                 "webhook_url": steady_webhook.url})
    assert wait_for_run(api, DAG_ID, run_id) == "success", airflow_server["log"].read_text()[-3000:]
    [row] = [row for row in service.request_list(account_id=EXPORTED["account_id"]) if row["dag_run_id"] == run_id]
    [first_notice] = mailbox.wait_for(lambda m: m["To"] == REQUESTER_EMAIL)
    return {**row, "run_id": run_id, "first_notification_id": first_notice["Portability-Notification-Id"]}


def submitted(api, conf: dict) -> dict:
    """A request recorded and its DAG run triggered, as `portability request` does (the DAG is paused: it waits)."""
    from portability import service

    submission = service.submit({**conf, "requested_by": "privacy-team@example.com"})
    options = {name: value for name, value in (submission.options or conf).items() if value is not None}
    assert api.trigger(DAG_ID, submission.dag_run_id, options)
    return {"request_id": submission.request_id, "export_id": submission.export_id,
            "dag_run_id": submission.dag_run_id}


def set_paused(airflow_server, api, paused: bool) -> None:
    import requests

    requests.patch(f"{airflow_server['base_url']}/api/v2/dags/{DAG_ID}", json={"is_paused": paused},
                   headers={"Authorization": f"Bearer {api.token()}"}, timeout=30).raise_for_status()


def task_states(airflow_server, api, run_id: str) -> dict[str, str | None]:
    import requests

    response = requests.get(f"{airflow_server['base_url']}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances",
                            headers={"Authorization": f"Bearer {api.token()}"}, params={"limit": 100}, timeout=30)
    response.raise_for_status()
    return {ti["task_id"]: ti["state"] for ti in response.json()["task_instances"]}


def log_in(browser, airflow_server, username: str, password: str):
    """A fresh browser session logged in through Airflow's own login page."""
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    page = context.new_page()
    page.goto(airflow_server["base_url"] + "/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(airflow_server["base_url"] + "/")
    return page


def open_exports(page):
    """The Exports entry of Airflow's navigation; returns the page's frame inside the UI."""
    page.get_by_role("link", name="Exports").click()
    page.wait_for_url("**/plugin/exports**")
    frame = page.frame_locator("iframe[title='Exports']")
    frame.locator("table.requests").wait_for()
    return frame


def row_of(frame, request_id: str):
    return frame.locator(f"tr[data-request-id='{request_id}']")


def click_twice(row, label: str, confirm: str) -> None:
    row.get_by_role("button", name=label).click()
    row.get_by_role("button", name=confirm).click()


def test_the_privacy_team_works_from_the_exports_page(browser, airflow_server, api, exported, mailbox, viewer,
                                                      steady_webhook):
    from playwright.sync_api import expect

    from portability import service
    from portability.resources import ledger

    set_paused(airflow_server, api, True)  # the next requests stay under way while the page shows them
    under_way = None
    try:
        to_cancel = submitted(api, TO_CANCEL)
        under_way = submitted(api, UNDER_WAY)
        with ledger.connect() as conn:  # what the export's tasks record as they go, and a request refused early
            for category, done, estimated, pieces, total in (("contacts", 180, 300, 1, 2), ("lists", 3, 3, 1, 1),
                                                             ("messages", 0, 400, 0, 2)):
                ledger.record_progress(conn, under_way["export_id"], category, rows_done=done,
                                       rows_estimated=estimated, pieces_done=pieces, pieces_total=total)
            # Both were asked for weeks ago (the ledger's clock, moved back): one is due this week, one is overdue.
            for request_id, days_ago in ((to_cancel["request_id"], 26), (under_way["request_id"], 33)):
                conn.execute("UPDATE export_requests SET requested_at = now() - make_interval(days => %s), "
                             "deadline_at = now() - make_interval(days => %s) + interval '1 month' "
                             "WHERE request_id = %s", (days_ago, days_ago, request_id))
            refused_id = ledger.refuse(conn, reason="invalid request: field 'formats': 'pdf' is not one of csv, "
                                       "jsonl, parquet", requested_by="crm-integration", account_id="e2e-00003",
                                       dag_run_id=f"refused-{uuid.uuid4()}")

        page = log_in(browser, airflow_server, "portability", airflow_server["password"])
        frame = open_exports(page)

        # The request made through the REST API, with its state, deadline, export and per-category counts.
        row = row_of(frame, exported["request_id"])
        assert row.get_attribute("data-state") == "delivered"
        assert exported["account_id"] in row.inner_text() and "dpo@example.com" in row.inner_text()
        counts = exported["counts"]
        assert set(counts) == set(EXPORTED["categories"])
        for category, count in counts.items():
            shown = row.locator(f"ul.counts li[data-category='{category}'] .n").inner_text()
            assert shown == f"{count['exported']:,}"
        assert row.locator(".size").get_attribute("title") == f"{exported['bytes']:,} bytes"
        # An export under way shows its progress per category; a refused request its reason.
        progress = row_of(frame, under_way["request_id"]).locator(".progress")
        assert "180 of 300 rows, 1 of 2 pieces" in progress.locator("[data-category='contacts']").inner_text()
        refused = row_of(frame, refused_id)
        assert refused.get_attribute("data-state") == "refused" and "'pdf' is not one of" in refused.inner_text()
        # Overdue and due this week stand out.
        assert row_of(frame, under_way["request_id"]).locator(".flag.overdue").inner_text().lower() == "overdue"
        assert row_of(frame, to_cancel["request_id"]).locator(".flag.due").inner_text().lower() == "due this week"
        assert row_of(frame, exported["request_id"]).locator(".flag").count() == 0

        # Filters: by state and by account.
        frame.locator("form.filters select[name=state]").select_option("delivered")
        frame.locator("form.filters input[name=account]").fill(EXPORTED["account_id"])
        frame.get_by_role("button", name="Filter").click()
        expect(frame.locator("form.filters input[name=account]")).to_have_attribute("value", EXPORTED["account_id"])
        states = frame.locator("tr[data-request-id]").evaluate_all("rows => rows.map(r => r.dataset.state)")
        assert states and set(states) == {"delivered"} and row_of(frame, exported["request_id"]).count() == 1
        assert row_of(frame, to_cancel["request_id"]).count() == 0
        frame.get_by_role("link", name="Clear").click()
        row_of(frame, to_cancel["request_id"]).wait_for()

        # A fresh link goes to the requester's channel with a new notification id; the page says only where.
        row_of(frame, exported["request_id"]).get_by_role("button", name="Send fresh link").click()
        expect(frame.locator(".notice.ok")).to_contain_text(
            f"A fresh link to request {exported['request_id']}'s archive was sent to its email and webhook.")
        emails = mailbox.wait_for(lambda m: m["To"] == REQUESTER_EMAIL and m["Portability-Notification-Id"]
                                  != exported["first_notification_id"])
        [fresh_id] = {m["Portability-Notification-Id"] for m in emails}
        posted = [json.loads(call["body"]) for call in steady_webhook.calls]
        assert [(n["event"], n["notification_id"]) for n in posted] == [
            ("export.ready", exported["first_notification_id"]), ("export.ready", fresh_id)]
        assert posted[1]["url"] != posted[0]["url"]  # a fresh link, on the requester's channel only
        html = frame.locator("body").evaluate("body => body.ownerDocument.documentElement.outerHTML")
        assert not NEVER_SHOWN.search(html) and steady_webhook.url not in html, NEVER_SHOWN.search(html)

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

        # Cancel: the ledger records it and the DAG run is stopped.
        click_twice(row_of(frame, to_cancel["request_id"]), "Cancel", "Click again to cancel")
        expect(frame.locator(".notice.ok")).to_contain_text(
            f"Request {to_cancel['request_id']} cancelled. Its export {to_cancel['export_id']} is cancelled too, and "
            f"its DAG run {to_cancel['dag_run_id']} is stopped.")
        assert row_of(frame, to_cancel["request_id"]).get_attribute("data-state") == "cancelled"
        assert service.status(to_cancel["request_id"])["state"] == "cancelled"
        # Stopped: none of its tasks will run but the teardown, which Airflow keeps so that it cleans up.
        tasks = task_states(airflow_server, api, to_cancel["dag_run_id"])
        assert {state for task, state in tasks.items() if task != "cleanup"} == {"skipped"}, tasks

        # Revoke: the archive is deleted and the request shows expired.
        click_twice(row_of(frame, exported["request_id"]), "Revoke archive", "Click again to revoke")
        expect(frame.locator(".notice.ok")).to_contain_text(f"Export {exported['export_id']} revoked")
        assert row_of(frame, exported["request_id"]).get_attribute("data-state") == "expired"
        assert service.status(exported["request_id"])["state"] == "expired"

        # The DAG run is one click away, in Airflow's own UI.
        row_of(frame, exported["request_id"]).locator("a.run").click()
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/{exported['run_id']}")
        page.context.close()

        # A read-only user sees the list, and no action.
        page = log_in(browser, airflow_server, viewer["username"], viewer["password"])
        frame = open_exports(page)
        row_of(frame, exported["request_id"]).wait_for()
        assert frame.locator("td.actions button").count() == 0
        page.context.close()
    finally:
        set_paused(airflow_server, api, False)
        if under_way is not None:
            service.cancel(under_way["request_id"])
            api.stop_run(DAG_ID, under_way["dag_run_id"])


def test_every_route_refuses_a_caller_without_a_valid_token_or_the_right(airflow_server, api, exported, viewer):
    import requests

    from portability.resources import ledger
    from portability.resources.airflow_api import AirflowApi

    base = airflow_server["base_url"] + "/portability"
    reads = [f"{base}/exports", f"{base}/exports.json"]
    request_id, export_id = exported["request_id"], exported["export_id"]
    actions = [f"{base}/requests/{request_id}/cancel", f"{base}/requests/{request_id}/send-link",
               f"{base}/exports/{export_id}/revoke"]

    def call(url: str, **kwargs):
        method = requests.get if url in reads else requests.post
        return method(url, timeout=30, allow_redirects=False, **kwargs)

    for url in reads + actions:
        assert call(url).status_code == 401, url
        assert call(url, headers={"Authorization": "Bearer not-a-token"}).status_code in (401, 403), url
        assert call(url, cookies={"_token": "not-a-token"}).status_code in (401, 403), url

    admin = {"Authorization": f"Bearer {api.token()}", "Accept": "application/json"}
    read_only = {"Authorization": f"Bearer {AirflowApi(airflow_server['base_url'], **viewer).token()}",
                 "Accept": "application/json"}
    for url in reads:
        assert call(url, headers=admin).status_code == 200, url
        assert call(url, headers=read_only).status_code == 200, url
    listing = call(f"{base}/exports.json", headers=admin, params={"account": EXPORTED["account_id"]})
    assert exported["request_id"] in {row["request_id"] for row in listing.json()["requests"]}
    assert not NEVER_SHOWN.search(listing.text)
    for url in actions:
        assert call(url, headers=read_only).status_code == 403, url  # may read runs, may not edit them
    # The admin's token reaches the ledger, which refuses to cancel a request already served.
    refused = call(actions[0], headers=admin)
    assert refused.status_code == 409 and "can be cancelled" in refused.json()["detail"]
    # A fresh link only for a served request.
    with ledger.connect() as conn:
        refused_id = ledger.refuse(conn, reason="invalid request: field 'account_id' is required", requested_by="api")
    not_served = call(f"{base}/requests/{refused_id}/send-link", headers=admin)
    assert not_served.status_code == 409 and "is refused: only a ready or delivered" in not_served.json()["detail"]
    unknown = call(f"{base}/requests/{uuid.uuid4()}/send-link", headers=admin)
    assert unknown.status_code == 409 and "no request" in unknown.json()["detail"]
    malformed = call(f"{base}/exports/not-an-id/revoke", headers=admin)
    assert malformed.status_code == 404 and "expected a UUID" in malformed.json()["detail"]
    # With the UI's cookie instead of a bearer token, a form without the page's CSRF token is refused.
    forged = call(actions[0], cookies={"_token": api.token()}, data={"state": ""})
    assert forged.status_code == 403 and "did not come from your Exports page" in forged.json()["detail"]
