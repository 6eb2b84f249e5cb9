"""scheduled_exports: recurring exports of accounts (e.g. every two months, as Google Takeout offers).

Schedules live in the request ledger (`portability schedule --account A --every-days 60`).
Each run finds the accounts that are due and exports them in batches, one mapped task per
batch (batching keeps the map within Airflow's max_map_length however many accounts are due).
Every batch task takes a slot of the `portability_source` pool, which caps how many exports read
the source database at once. An account that fails is recorded on its schedule (it stays due)
and the batch goes on; `summarize` lists what succeeded and failed, and `report_failures`
turns the run red when any account failed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

SOURCE_POOL = "portability_source"
BATCH_SIZE = 25


@task
def due_batches() -> list[list[str]]:
    from portability import service

    return service.due_batches(BATCH_SIZE)


@task(pool=SOURCE_POOL, map_index_template="{{ batch_label }}")
def export_batch(accounts: list[str]) -> dict:
    from portability import service

    get_current_context()["batch_label"] = f"{accounts[0]} .. {accounts[-1]} ({len(accounts)})"
    return service.run_scheduled(accounts)


@task
def summarize(results: list[dict]) -> dict:
    succeeded = [s for r in results for s in r["succeeded"]]
    failed = [f for r in results for f in r["failed"]]
    for item in failed:
        print(f"FAILED {item['account_id']}: {item['error']}")
    print(f"{len(succeeded)} scheduled exports published, {len(failed)} failed")
    return {"succeeded": len(succeeded), "failed": failed, "exports": {s["account_id"]: s["export_id"]
                                                                        for s in succeeded}}


@task
def report_failures(summary: dict) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    if summary["failed"]:
        names = ", ".join(f["account_id"] for f in summary["failed"][:20])
        raise AirflowFailException(f"{len(summary['failed'])} scheduled exports failed ({names}); the others "
                                   f"({summary['succeeded']}) were published. See the summarize task's log.")


@dag(
    dag_id="scheduled_exports",
    schedule="@hourly",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    tags=["portability", "gdpr"],
    # An account's failure does not fail its batch (it is recorded and retried by the next run); a batch
    # retried after a crash skips the accounts it already exported, as they are no longer due.
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True},
    doc_md=__doc__,
)
def scheduled_exports():
    results = export_batch.expand(accounts=due_batches())
    report_failures(summarize(results))


scheduled_exports()
