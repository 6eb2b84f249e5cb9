"""account_export: one account's data, validated, packaged and published to its region's bucket.

Triggered from the UI form, the REST API or other DAGs; the Params are the request schema
(schemas/export_request.schema.json). Each task calls one step of `portability.pipeline.export` and
passes small dicts (ids, counts, checksums); the data moves through a staging prefix in the
region's bucket, so a retried task gives the same bytes. A big category is split into shards
(dynamic task mapping over runs of key-ordered pieces) that any number of workers share; the
archive is byte-for-byte the same however it was sharded. The `package` task's return value is
the run's summary: export id, archive key, counts and sha256 (never the link). Each run is
recorded in the request ledger (`portability.resources.ledger`): `deliver` sends the link to the
requesters, and a task that fails for good marks the request failed with its error.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import TaskGroup, dag, get_current_context, task

from portability.records.schemas import SchemaSet
from portability.service.request import dag_params

SCHEMAS = SchemaSet()


def record_failure(context) -> None:
    """A task failed for good: the request ledger says so, with the error, for the requester and the privacy team."""
    from portability import service

    run, error = context["dag_run"], context.get("exception")
    try:
        service.fail(run.dag_id, run.run_id, f"{context['ti'].task_id}: {error}")
    except Exception:  # the run's own failure is what matters; the ledger is reported in the log
        logging.getLogger(__name__).exception("could not record the failure in the request ledger")


@task
def validate_request() -> dict:
    """Refuse a malformed request before anything is read (the whole conf, not only the Params); record it."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import service
    from portability.resources.airflow_api import dag_run_state_in_task
    from portability.resources.ledger import LedgerError
    from portability.service.request import RequestError

    run = get_current_context()["dag_run"]
    try:
        return service.begin(dict(run.conf or {}), run.dag_id, run.run_id, run_state=dag_run_state_in_task(run.dag_id))
    except (RequestError, LedgerError) as exc:
        raise AirflowFailException(str(exc)) from None


@task
def snapshot(plan: dict) -> dict:
    """One consistent read of every requested category into staging."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from portability.pipeline import export

    if plan.get("joined"):
        raise AirflowSkipException(f"export {plan['joined']} of this account is under way and covers this "
                                   "request: it was added to that export's requesters")
    if plan.get("cancelled"):
        raise AirflowSkipException("the request was cancelled before its export started")
    try:
        return export.take_snapshot(plan)
    except export.AccountNotFound as exc:
        raise AirflowFailException(str(exc)) from None  # retrying cannot make the account appear


@task
def shards_of(plan: dict, snap: dict, category: str) -> list[dict | None]:
    """Split a category into shards of about `shard_rows` rows, one mapped task each."""
    from portability.pipeline import export

    # A category that was not requested still gets one (empty) task, so nothing downstream is skipped.
    return export.shards(plan, snap, category) or [None]


@task(map_index_template="{{ shard_label }}")
def validate_and_write(plan: dict, snap: dict, shard: dict | None) -> dict | None:
    """Validate every record of one shard and write its pieces of the requested formats."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability.pipeline import export
    from portability.records.validation import InvalidRecords

    if shard is None:
        get_current_context()["shard_label"] = "not requested"
        return None
    get_current_context()["shard_label"] = (
        f"{shard['category']} pieces {shard['first_piece'] + 1}-{shard['stop_piece']} of {shard['of_pieces']}"
    )
    try:
        return export.export_shard(plan, snap, shard)
    except InvalidRecords as exc:
        raise AirflowFailException(str(exc)) from None  # on_invalid=fail: the data will not change on retry


@task
def package(plan: dict, snap: dict, results: list) -> dict:
    """Zip the bag into the region's bucket; it becomes visible only when complete."""
    from portability.pipeline import export

    # One list per category of its shards' results; None for categories not requested.
    summary = export.package(plan, snap, [r for shard_results in results for r in shard_results if r])
    print(f"export {summary['export_id']}: {summary['bytes']} bytes, sha256 {summary['sha256']}, key {summary['key']}")
    return summary


@task
def deliver(summary: dict) -> dict:
    """Record the archive in the request ledger and send each requester the link (email, signed webhook)."""
    from portability import service

    return service.deliver(summary)


@task
def cleanup(plan: dict | None) -> int:
    """Delete the staged copies (personal data), whether the export succeeded or failed.

    After a failure, export again by clearing the whole run: it keeps its export id.
    """
    from portability.pipeline import export

    if plan is None:  # validate_request refused the request: nothing was staged
        return 0
    return export.cleanup(plan, None)


@dag(
    dag_id="account_export",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,  # runs come from the API; a paused DAG would queue them forever
    max_active_runs=8,
    params=dag_params(SCHEMAS),
    tags=["portability", "gdpr"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15), "retry_exponential_backoff": True,
                  "on_failure_callback": record_failure},
    doc_md=__doc__,
)
def account_export():
    plan = validate_request()
    snap = snapshot(plan)
    written = []
    for category in SCHEMAS.categories:
        with TaskGroup(group_id=category, tooltip=f"Validate and write {category}"):
            shards = shards_of(plan, snap, category)
            written.append(validate_and_write.partial(plan=plan, snap=snap).expand(shard=shards))
    # A teardown runs even after a failure and, unlike a plain leaf, cannot turn a failed run green.
    summary = package(plan, snap, written)
    deliver(summary)
    summary >> cleanup(plan).as_teardown()


account_export()
