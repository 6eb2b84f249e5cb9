"""What the Exports page makes of the ledger's rows (no server: the page itself is tested in a browser, in
tests/service/test_exports_page.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from portability.web.rows import CategoryProgress, human_bytes, instant, request_row

BASE = {"request_id": "5c76fe84-95d1-4000-831c-b409e029da9c", "account_id": "acct-1", "requested_by": "dpo",
        "requested_at": "2026-12-07T11:55:00+00:00", "deadline_at": "2027-01-07T11:55:00+00:00",
        "export_id": "854e39cc-d6c0-5de5-a0f2-b68c3f89f95a", "dag_run_id": "request__a5afd26f"}


def test_a_refused_request_has_no_export_and_shows_its_reason():
    row = request_row({**BASE, "state": "refused", "export_id": None, "refused_reason": "invalid request: field x"})
    assert row.export_id is None and row.reason == "invalid request: field x"
    assert not row.cancellable and not row.served


def test_a_failed_request_shows_its_error_and_others_none():
    assert request_row({**BASE, "state": "failed", "error": "account not found"}).reason == "account not found"
    assert request_row({**BASE, "state": "delivered", "error": "an old notification error"}).reason is None


@pytest.mark.parametrize(("state", "cancellable", "served"), [
    ("requested", True, False), ("running", True, False), ("ready", False, True), ("delivered", False, True),
    ("expired", False, False), ("failed", False, False), ("cancelled", False, False), ("refused", False, False)])
def test_which_actions_a_state_allows(state, cancellable, served):
    row = request_row({**BASE, "state": state})
    assert (row.cancellable, row.served) == (cancellable, served)


def test_a_subjects_request_shows_as_one_person_and_counts_come_sorted():
    row = request_row({**BASE, "state": "delivered", "data_subject": True, "bytes": 54_200,
                       "counts": {"lists": {"exported": 3, "quarantined": 0},
                                  "contacts": {"exported": 1200, "quarantined": 2}}})
    assert row.one_person and row.size == "54.2 kB"
    assert [(c.category, c.exported, c.quarantined) for c in row.counts] == [("contacts", 1200, 2), ("lists", 3, 0)]


def test_the_run_is_a_link_into_airflows_ui_relative_to_the_page():
    row = request_row({**BASE, "state": "running", "dag_run_id": "manual__2026-12-07T11:55:00+00:00"})
    # The page is <base>/portability/exports: one level up is Airflow's UI, whatever the base URL's path.
    assert row.run_path == "../dags/account_export/runs/manual__2026-12-07T11%3A55%3A00%2B00%3A00"
    assert request_row({**BASE, "state": "refused", "dag_run_id": None}).run_path is None


def test_progress_per_category_in_percent_of_the_estimate():
    row = request_row({**BASE, "state": "running"}, {
        "messages": {"rows_done": 0, "rows_estimated": None, "pieces_done": 0, "pieces_total": None},
        "contacts": {"rows_done": 180, "rows_estimated": 300, "pieces_done": 1, "pieces_total": 2}})
    assert [p.category for p in row.progress] == ["contacts", "messages"]
    assert [p.percent for p in row.progress] == [60, None]
    assert CategoryProgress("c", rows_done=310, rows_estimated=300, pieces_done=2, pieces_total=2).percent == 100


def test_instants_are_shown_in_utc():
    moment = datetime(2026, 12, 7, 12, 55, tzinfo=timezone(timedelta(hours=1)))
    assert instant(moment) == instant(moment.astimezone(UTC).isoformat()) == "2026-12-07 11:55 UTC"
    assert instant(None) == ""


@pytest.mark.parametrize(("size", "shown"), [(0, "0 bytes"), (999, "999 bytes"), (54_200, "54.2 kB"),
                                             (3_400_000, "3.4 MB"), (12_300_000_000_000, "12,300.0 GB")])
def test_sizes(size, shown):
    assert human_bytes(size) == shown
