"""Progress of long steps: the tracker's arithmetic, a progress line at least every interval (10 s by default) even
inside one slow call, where the time went at the end, and each category's progress in the ledger."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid

import pytest

from portability.pipeline.progress import PHASES, CategoryProgress, Progress, Report, log_interval

LOGGER = "portability.pipeline.progress"


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_report_arithmetic():
    report = Report("export x", elapsed=4.0, categories=(
        CategoryProgress("contacts", 300, 1000, 1, 4), CategoryProgress("lists", 100, 100, 1, 1)),
        phases={"reading": 1.0, "validating": 0.5, "writing": 2.0, "uploading": 0.5})
    assert (report.rows_done, report.rows_estimated, report.pieces_done, report.pieces_total) == (400, 1100, 2, 5)
    assert report.rate == 100.0
    assert report.seconds_left == 7.0
    assert report.shares() == {"reading": 0.25, "validating": 0.125, "writing": 0.5, "uploading": 0.125}
    line = report.line()
    assert line.startswith("export x: 400 of 1,100 rows (36%), 2 of 5 pieces, 100 rows/s after 4.0 s, about 7.0 s left")
    assert "contacts 300 of 1,000" in line and "lists" not in line.split(";")[1]  # only categories under way
    assert line.endswith("reading 1.0 s, validating 0.5 s, writing 2.0 s, uploading 0.5 s")
    assert report.where_time_went() == ("export x: done in 4.0 s: 400 rows, 2 pieces, 100 rows/s; time went to "
                                        "reading 1.0 s (25%), validating 0.5 s (12%), writing 2.0 s (50%), "
                                        "uploading 0.5 s (12%)")
    failed = Report("export x", 4.0, report.categories, report.phases, finished=True, failed=True)
    assert failed.where_time_went().startswith("export x: failed after 4.0 s: 400 of 1,100 rows")

    unknown = Report("export x", 2.0, (CategoryProgress("contacts", 10, None, 0, None),))
    assert unknown.rows_estimated is None and unknown.seconds_left is None and unknown.pieces_total is None
    assert unknown.line().startswith("export x: 10 rows, 0 pieces, 5 rows/s")
    assert Report("idle", 0.0).rate == 0.0 and Report("idle", 0.0).shares() == {}
    packaging = Report("export x: packaging", 3.0, phases={"reading": 1.0, "writing": 1.0}, counts_rows=False)
    assert packaging.line() == ("export x: packaging: 3.0 s so far; reading 1.0 s, validating 0.0 s, writing 1.0 s, "
                                "uploading 0.0 s")
    assert packaging.where_time_went().startswith("export x: packaging: done in 3.0 s; time went to reading 1.0 s "
                                                  "(50%)")


def test_phase_time_is_its_own_on_each_thread():
    progress = Progress("export x", record=False)

    def work():
        with progress.timed("writing"):
            time.sleep(0.05)
            with progress.timed("uploading"):  # the upload's wait is not writing's
                time.sleep(0.1)
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = progress.timed_batches(iter([1, 2, 3]))
    assert list(batches) == [1, 2, 3]
    phases = progress.report().phases
    assert set(phases) == set(PHASES)
    assert 0.18 <= phases["writing"] < 0.3 and 0.18 <= phases["uploading"] < 0.3  # two threads' worth each
    assert phases["reading"] < 0.05


def test_the_default_interval_is_ten_seconds(monkeypatch):
    monkeypatch.delenv("PORTABILITY_PROGRESS_SECONDS", raising=False)
    assert log_interval() == 10.0
    assert Progress("export x", record=False).interval == 10.0
    monkeypatch.setenv("PORTABILITY_PROGRESS_SECONDS", "2.5")
    assert log_interval() == 2.5
    for wrong in ("0", "-1", "soon"):
        monkeypatch.setenv("PORTABILITY_PROGRESS_SECONDS", wrong)
        assert log_interval() == 10.0


def test_a_step_stuck_in_one_slow_call_still_logs(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(TimeoutError), Progress("export x", record=False, interval=0.1) as progress:
        progress.expect("contacts", 500, 1)
        with progress.timed("reading"):
            time.sleep(0.55)  # one call that does not return: no batch passes
        raise TimeoutError
    lines = _lines(caplog)
    periodic = [line for line in lines if "0 of 500 rows" in line]
    assert len(periodic) >= 3, lines
    assert "reading 0.0 s" not in periodic[-1]  # the call under way counts already: where it is stuck shows
    assert lines[-1].startswith("export x: failed after 0.") and "(100%), validating 0.0 s (0%)" in lines[-1]


def test_a_watcher_that_fails_never_stops_the_step():
    def broken(report):
        raise RuntimeError("display gone")

    with Progress("export x", record=False, interval=0.05, watchers=[broken]) as progress:
        progress.add_rows("lists", 3)
        time.sleep(0.6)
    assert progress.report().rows_done == 3


# --- real exports ------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_real_export_logs_progress_and_where_its_time_went(seeded, store_env, monkeypatch, caplog):
    from portability.pipeline import export

    monkeypatch.setenv("PORTABILITY_PROGRESS_SECONDS", "0.1")
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "50")  # several pieces per category
    caplog.set_level(logging.INFO, logger=LOGGER)
    summary = export.run_export({"account_id": "e2e-00001"}, str(uuid.uuid4()))
    total = sum(c["source_count"] for c in summary.counts.values())
    lines = _lines(caplog)
    periodic = [line for line in lines if re.search(rf" of {total:,} rows \(\d+%\), \d+ of \d+ pieces, [\d,]+ rows/s",
                                                    line)]
    assert periodic, lines
    assert all(all(f"{phase} " in line for phase in PHASES) for line in periodic)
    final = lines[-1]
    assert summary.bytes > 0
    assert final.startswith(f"export {summary.export_id}: done in ") and f": {total:,} rows, " in final, final
    assert re.search(r"time went to reading [\d.]+ s \(\d+%\), validating [\d.]+ s \(\d+%\), writing [\d.]+ s "
                     r"\(\d+%\), uploading [\d.]+ s \(\d+%\)$", final), final
    assert not [line for line in lines if "@" in line or "http" in line]  # never an address or a link
    # This export id has no row in the ledger, which refuses its progress: said once, and the export went on.
    refused = [line for line in lines if "could not record the progress" in line]
    assert refused == [f"could not record the progress of export {summary.export_id} in the ledger "
                       "(ForeignKeyViolation); the export goes on without it"]


@pytest.mark.e2e
def test_the_steps_of_a_sharded_run_log_and_record_each_shard(seeded, store_env, monkeypatch, caplog):
    """The DAG's staged route, step by step as its tasks call them: each step logs where its time went, and each
    shard records its own part in the ledger, the parts adding up to the archive's counts."""
    from portability import service
    from portability.pipeline import export
    from portability.resources import ledger

    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "40")
    monkeypatch.setenv("PORTABILITY_SHARD_ROWS", "80")
    caplog.set_level(logging.INFO, logger=LOGGER)
    plan = service.begin({"account_id": "e2e-00003", "categories": ["contacts", "lists", "list_members"]},
                         "account_export", f"manual__progress-{uuid.uuid4()}")
    with pytest.raises(export.NeedsShards):
        export.export_in_process(plan, unless_sharded=True)
    snapshot = export.take_snapshot(plan)
    shards = export.shards(plan, snapshot)
    assert len(shards) > len(plan.categories)
    results = [export.export_shard(plan, snapshot, shard) for shard in shards]
    summary = export.package(plan, snapshot, results)
    export.cleanup(plan.export_id, snapshot)
    service.deliver(summary)

    ends = [line for line in _lines(caplog) if " done in " in line or " stopped after " in line]
    prefix = f"export {plan.export_id}"
    assert ends[0].startswith(f"{prefix}: stopped after ")  # handed over to the shards, not failed
    assert ends[1].startswith(f"{prefix}: staging: done in ")
    assert [line.split(": done in")[0] for line in ends[2:-1]] == [f"{prefix}: {shard.label}" for shard in shards]
    assert ends[-1].startswith(f"{prefix}: packaging: done in ")
    with ledger.connect() as conn:
        recorded = ledger.progress(conn, plan.export_id)
    assert set(recorded) == set(plan.categories)
    for category, counts in summary.counts.items():
        rows = counts["exported"] + counts["quarantined"]
        assert (recorded[category]["rows_done"], recorded[category]["rows_estimated"]) == (rows, rows)
        pieces = len(snapshot.pieces[category])
        assert (recorded[category]["pieces_done"], recorded[category]["pieces_total"]) == (pieces, pieces)


@pytest.mark.e2e
def test_the_commands_export_records_progress_in_the_ledger_while_it_runs(seeded, store_env, monkeypatch):
    from portability import service
    from portability.pipeline import progress
    from portability.resources import ledger

    monkeypatch.setattr(progress, "RECORD_INTERVAL_SECONDS", 0.05)
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "20")
    seen_mid_export: list[dict] = []

    def watch(report: Report) -> None:  # told on the timer thread, which records before it tells again
        if report.finished or not report.rows_done or seen_mid_export:
            return
        with ledger.connect() as conn:
            recorded = ledger.progress(conn, report.what.split()[1])  # "export <export id>"
        if sum(r["rows_done"] for r in recorded.values()):
            seen_mid_export.append(recorded)

    summary, _ = service.export_now({"account_id": "e2e-00002", "formats": ["jsonl"]}, watch=watch)
    with ledger.connect() as conn:
        recorded = ledger.progress(conn, summary.export_id)
    assert {c: r["rows_done"] for c, r in recorded.items()} == {
        c: n["exported"] + n["quarantined"] for c, n in summary.counts.items()}
    assert all(r["rows_estimated"] == r["rows_done"] and r["pieces_done"] == r["pieces_total"]
               for r in recorded.values())
    assert seen_mid_export, "no progress was recorded while the export ran"
    assert set(seen_mid_export[0]) == set(recorded)  # every category has its row from the start


@pytest.mark.e2e
def test_a_dag_run_logs_each_tasks_progress_and_records_each_shard(seeded, run_dag, monkeypatch):
    """account_export run by Airflow, sharded: the task logs hold the periodic lines and each step's closing line,
    and the ledger holds every shard's progress, adding up to the archive's counts."""
    from portability.resources import ledger
    from portability.service.request import export_id_for_run

    monkeypatch.setenv("PORTABILITY_PROGRESS_SECONDS", "0.2")
    monkeypatch.setenv("PORTABILITY_PIECE_ROWS", "100")
    monkeypatch.setenv("PORTABILITY_SHARD_ROWS", "200")
    run = run_dag({"account_id": "e2e-00002", "categories": ["contacts", "lists"], "formats": ["csv"]})
    assert run["state"] == "success", run["output"][-4000:]
    export_id = export_id_for_run("account_export", run["run_id"])
    output = run["output"]
    # A periodic line in a task's log (each step's lines come at least every 0.2 s here).
    assert re.search(rf"export {export_id}: (staging: )?(counting what to do|[\d,]+ of [\d,]+ rows)", output)
    assert f"export {export_id}: stopped after " in output  # export_account found it too big for one task
    for step in ("staging", "contacts pieces 1-2 of 3", "contacts piece 3 of 3", "lists piece 1 of 1"):
        assert re.search(rf"export {export_id}: {step}: done in [\d.]+ s: [\d,]+ rows, \d+ pieces?, [\d,]+ rows/s; "
                         r"time went to reading ", output), step
    assert re.search(rf"export {export_id}: packaging: done in [\d.]+ s; time went to reading ", output)
    with ledger.connect() as conn:
        recorded = ledger.progress(conn, export_id)
        counts = ledger.export_record(conn, export_id)["counts"]
    assert {c: r["rows_done"] for c, r in recorded.items()} == {
        c: n["exported"] + n["quarantined"] for c, n in counts.items()}
