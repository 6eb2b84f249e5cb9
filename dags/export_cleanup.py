"""export_cleanup: delete archives whose retention is over, keep the storage's backstop rules, watch deadlines.

Daily. Archives are kept `PORTABILITY_RETENTION_DAYS` (default 30) after they are ready;
links are never minted past that. Each deletion is recorded on the export's requests in the
request ledger. The buckets also carry lifecycle rules (archives one day after retention,
staging after two days) so that nothing outlives its retention if this DAG stops running.
`watch_deadlines` lists requests not delivered whose legal deadline (one month after the
request) is past or within a week; it emails the privacy team (PORTABILITY_PRIVACY_EMAIL) once
a day at most for the same requests (a retried or re-triggered run sends nothing new) and fails
while any is overdue, so the run shows red until someone acts. Exports under way found dead are marked
failed, and their requesters and the privacy team told (export.failed); notices a failed email or
webhook left in the outbox are sent again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task


@task
def expire_archives() -> dict:
    from portability import service

    return service.expire_past_retention()


@task
def set_lifecycle_rules() -> dict:
    from portability import service

    return {bucket: len(rules) for bucket, rules in service.apply_lifecycle_rules().items()}


@task
def watch_deadlines() -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    from portability import service
    from portability.resources.airflow_api import dag_run_state_in_task
    from portability.resources.ledger import DAG_ID

    report = service.watch_deadlines(within_days=7, run_state=dag_run_state_in_task(DAG_ID))
    if report["overdue"]:
        raise AirflowFailException(f"{report['overdue']} export request(s) are past their legal deadline and "
                                   f"{report['due']} more are due within 7 days: run 'portability deadlines'")
    return report


@dag(
    dag_id="export_cleanup",
    schedule="@daily",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    is_paused_upon_creation=False,
    max_active_runs=1,
    tags=["portability", "gdpr"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True},
    doc_md=__doc__,
)
def export_cleanup():
    expire_archives()
    set_lifecycle_rules()
    watch_deadlines()


export_cleanup()
