"""account_export: one account's data, validated, packaged and published to its region's bucket.

Triggered from the UI form, the REST API or other DAGs; the Params are the request schema
(schemas/export_request.schema.json). Each task calls one step of `portability.pipeline.export`,
the steps the `portability` command runs too, and passes the small typed records of
`portability.pipeline.model` (ids, counts, checksums) as XCom values, never data.

An account whose every category fits in one shard (`PORTABILITY_SHARD_ROWS`) is exported whole
by `export_account`, as the command does it: read, validated and written in one pass, straight
into the archive's upload. A bigger account is staged in the region's bucket and its shards
(dynamic task mapping) are shared by any number of workers; `package` then assembles the archive.
The archive is byte-for-byte the same on either route, however it was sharded.

Each run is recorded in the request ledger: `deliver` sends the link to the requesters and returns
the run's summary (export id, archive key, counts and sha256; never the link), and a task that
fails for good marks the request failed with its error.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from airflow.sdk import dag, get_current_context, task

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
    """Refuse a malformed request before anything is read (the whole conf, not only the Params); record it. The
    run's note names the account and the requester (or the refusal) in the UI's run list."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import service
    from portability.resources.airflow_api import dag_run_state_in_task, name_run
    from portability.resources.ledger import LedgerError
    from portability.service.request import RequestError

    run = get_current_context()["dag_run"]
    conf = dict(run.conf or {})
    try:
        plan = service.begin(conf, run.dag_id, run.run_id, run_state=dag_run_state_in_task(run.dag_id),
                             triggering_user=run.triggering_user_name)
    except (RequestError, LedgerError) as exc:
        name_run(run, service.run_note(*service.conf_names(conf, run.triggering_user_name), refused=str(exc)),
                 or_add=f"refused: {exc}")
        raise AirflowFailException(str(exc)) from None
    name_run(run, service.run_note(*service.conf_names(conf, run.triggering_user_name),
                                   data_subject=bool(plan.subject_email)))
    return plan.to_xcom()


@task
def export_account(plan: dict) -> list[dict]:
    """The whole export of an account that fits in one shard; for a bigger one, its snapshot staged and its shards.

    Returns the shards to map `export_shard` over (none when the account was exported whole);
    the summary or the snapshot go to the XCom keys "summary" and "snapshot".
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from portability import service
    from portability.pipeline import export
    from portability.records.validation import InvalidRecords

    current, ti = service.plan_from_xcom(plan), get_current_context()["ti"]
    if current.joined:
        raise AirflowSkipException(f"export {current.joined} of this account is under way and covers this "
                                   "request: it was added to that export's requesters")
    if current.cancelled:
        raise AirflowSkipException("the request was cancelled before its export started")
    try:
        try:
            ti.xcom_push("summary", export.export_in_process(current, unless_sharded=True).to_xcom())
            return []
        except export.NeedsShards as bigger:
            print(f"{bigger}; staging the snapshot")
        snap = export.take_snapshot(current)
    except export.AccountNotFound as exc:
        raise AirflowFailException(str(exc)) from None  # retrying cannot make the account appear
    except InvalidRecords as exc:
        raise AirflowFailException(str(exc)) from None  # on_invalid=fail: the data will not change on retry
    shards = export.shards(current, snap)
    print(f"{len(shards)} shards to export: {', '.join(shard.label for shard in shards)}")
    ti.xcom_push("snapshot", snap.to_xcom())
    return [shard.to_xcom() for shard in shards]


@task(map_index_template="{{ shard_label }}")
def export_shard(plan: dict, snapshot: dict, shard: dict) -> dict:
    """Validate every record of one shard and write its pieces of the requested formats to staging."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import service
    from portability.pipeline import export
    from portability.pipeline.model import Shard, Snapshot
    from portability.records.validation import InvalidRecords

    current = Shard.from_xcom(shard)
    get_current_context()["shard_label"] = current.label
    try:
        return export.export_shard(service.plan_from_xcom(plan), Snapshot.from_xcom(snapshot), current).to_xcom()
    except InvalidRecords as exc:
        raise AirflowFailException(str(exc)) from None  # on_invalid=fail: the data will not change on retry


@task
def package(plan: dict, snapshot: dict, results: list) -> dict:
    """Zip a sharded account's bag into the region's bucket (it becomes visible only when complete)."""
    from portability import service
    from portability.pipeline import export
    from portability.pipeline.model import ShardResult, Snapshot

    summary = export.package(service.plan_from_xcom(plan), Snapshot.from_xcom(snapshot),
                             [ShardResult.from_xcom(result) for result in results])
    return summary.to_xcom()


# After export_account alone (an account exported whole: no shard, so package is skipped) or after package.
@task(trigger_rule="none_failed_min_one_success")
def deliver(packaged: dict | None) -> dict:
    """Record the archive in the request ledger and send each requester the link (email, signed webhook).

    Returns the run's summary (export id, archive key, bytes, sha256, counts; never the link) and
    how many requesters were told.
    """
    from portability import service
    from portability.pipeline.model import Summary

    # Pulled here rather than passed in: a sharded run has no "summary" key, and an XComArg would not resolve.
    exported_whole = get_current_context()["ti"].xcom_pull(task_ids="export_account", key="summary")
    summary = Summary.from_xcom(exported_whole or packaged)
    print(f"export {summary.export_id}: {summary.bytes} bytes, sha256 {summary.sha256}, key {summary.key}")
    return {**summary.to_xcom(), "notifications": service.deliver(summary)}


@task
def cleanup() -> int:
    """Delete the staged copies (personal data), whether the export succeeded or failed.

    After a failure, export again by clearing the whole run: it keeps its export id.
    """
    from portability.pipeline import export
    from portability.service.request import export_id_for_run

    run = get_current_context()["dag_run"]
    return export.cleanup(export_id_for_run(run.dag_id, run.run_id))


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
    shards = export_account(plan)
    results = export_shard.partial(plan=plan, snapshot=shards["snapshot"]).expand(shard=shards)
    packaged = package(plan, shards["snapshot"], results)
    shards >> deliver(packaged)
    # A teardown runs even after a failure and, unlike a plain leaf, cannot turn a failed run green.
    # Once the archive is out it runs beside deliver, which may wait on a slow webhook.
    packaged >> cleanup().as_teardown()


account_export()
