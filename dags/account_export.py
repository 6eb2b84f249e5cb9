"""account_export: one account's data, validated, packaged and published to its region's bucket.

Triggered from the UI form, the REST API or other DAGs; the Params are the request schema
(schemas/export_request.schema.json). Each task calls one step of `portability.export` and
passes small dicts (ids, counts, checksums); the data moves through a staging prefix in the
region's bucket, so a retried task gives the same bytes. A big category is split into shards
(dynamic task mapping over runs of key-ordered pieces) that any number of workers share; the
archive is byte-for-byte the same however it was sharded. The `package` task's return value is
the run's summary: export id, archive key, counts and sha256 (never the link).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import TaskGroup, dag, get_current_context, task

from portability.request import dag_params
from portability.schemas import SchemaSet

SCHEMAS = SchemaSet()


@task
def validate_request() -> dict:
    """Refuse a malformed request before anything is read: the whole conf, not only the Params."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import export
    from portability.request import RequestError, export_id_for_run

    run = get_current_context()["dag_run"]
    try:
        return export.plan(dict(run.conf or {}), export_id_for_run(run.dag_id, run.run_id))
    except RequestError as exc:
        raise AirflowFailException(str(exc)) from None


@task
def snapshot(plan: dict) -> dict:
    """One consistent read of every requested category into staging."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import export

    try:
        return export.take_snapshot(plan)
    except export.AccountNotFound as exc:
        raise AirflowFailException(str(exc)) from None  # retrying cannot make the account appear


@task
def shards_of(plan: dict, snap: dict, category: str) -> list[dict | None]:
    """Split a category into shards of about `shard_rows` rows, one mapped task each."""
    from portability import export

    # A category that was not requested still gets one (empty) task, so nothing downstream is skipped.
    return export.shards(plan, snap, category) or [None]


@task(map_index_template="{{ shard_label }}")
def validate_and_write(plan: dict, snap: dict, shard: dict | None) -> dict | None:
    """Validate every record of one shard and write its pieces of the requested formats."""
    from airflow.sdk.exceptions import AirflowFailException

    from portability import export
    from portability.validation import InvalidRecords

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
    from portability import export

    # One list per category of its shards' results; None for categories not requested.
    summary = export.package(plan, snap, [r for shard_results in results for r in shard_results if r])
    print(f"export {summary['export_id']}: {summary['bytes']} bytes, sha256 {summary['sha256']}, key {summary['key']}")
    return summary


@task
def cleanup(plan: dict) -> int:
    """Delete the staged copies (personal data), whether the export succeeded or failed.

    After a failure, export again by clearing the whole run: it keeps its export id.
    """
    from portability import export

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
    default_args={"retries": 2, "retry_delay": timedelta(seconds=15), "retry_exponential_backoff": True},
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
    package(plan, snap, written) >> cleanup(plan).as_teardown()


account_export()
