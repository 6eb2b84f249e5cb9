"""Exports as a service: the request ledger's side of each step, for the DAGs and the command.

    submit -> (the account_export DAG run) begin -> ... -> deliver | fail
    link / revoke / expire_past_retention: the archive's life after it is published

A request is recorded before its export starts and each step moves its state on, so the
requester and the privacy team read the state, deadline and outcome from the ledger without
opening Airflow. Links are minted when handed over and never stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from portability.pipeline import export
from portability.pipeline.model import Plan, Summary
from portability.pipeline.progress import CategoryProgress, Report
from portability.records.schemas import SchemaSet
from portability.resources import config, keys, ledger
from portability.service.request import RequestError, export_id_for_run, parse_request

log = logging.getLogger(__name__)

# The cleanup DAG watches deadlines daily; under a day, so each daily run alerts again while a request waits.
DEADLINE_ALERT_QUIET = timedelta(hours=20)


def export_now(conf: dict, *, requested_by: str = "portability export",
               on_progress: Callable[[str], None] | None = None,
               watch: Callable[[Report], None] | None = None) -> tuple[dict, str]:
    """The whole export in this process (the `export` command, a scheduled export), recorded in the ledger like
    any other; returns the summary and the request id (`link(..., request_id=)` hands the link over).

    If an export of the account that covers the request is already under way and alive, this joins it
    and waits for its archive instead of doing the work twice; if that one dies, this takes over.
    `on_progress` hears, in words, when this waits on another export; `watch` hears how far the
    export has got (the command's progress bar): this process's about twice a second, the one it
    waits on as the ledger records it.
    """
    with refusals_recorded(conf, requested_by=requested_by):
        request = parse_request(conf, SchemaSet())
    requester = request.requester()
    lease = config.export_lease()
    request_id = None
    while True:
        with ledger.connect() as conn:
            request_id, export_id, options = ledger.start_in_process(
                conn, request.to_dict(), requested_by=requester["requested_by"] or requested_by,
                notify_email=requester["notify_email"], lease=lease, request_id=request_id)
        if options is not None:
            return _export_in_process(options, export_id, lease, watch), request_id
        if on_progress:
            on_progress(f"export {export_id} of this account is under way: waiting for its archive")
        summary = _wait_for(export_id, lease, watch)
        if summary is not None:
            return summary, request_id
        # It died: place the request again (it is moved to the export that replaces it, perhaps this one).


def _export_in_process(options: dict, export_id: str, lease: timedelta,
                       watch: Callable[[Report], None] | None = None) -> dict:
    conf = {name: options[name] for name in ("account_id", "categories", "formats", "expires_in_hours",
                                             "on_invalid", "since", "until", "subject_email")}
    try:
        with _renewing(export_id, lease):
            summary = export.run_export(conf, export_id, watch)
    except BaseException as exc:
        _record_failure(export_id, exc)
        raise
    deliver(summary)  # records the archive and tells the requesters that have a channel
    return summary


def _record_failure(export_id: str, exc: BaseException) -> None:
    """The export failed: say so in the ledger and tell its requesters and the privacy team, unless the ledger is
    what failed (the first error is what counts)."""
    try:
        with ledger.connect() as conn:
            ledger.fail(conn, export_id, f"{type(exc).__name__}: {exc}")
    except Exception as ledger_exc:  # noqa: BLE001
        log.warning("could not record the failure of export %s in the ledger (%s); its lease runs out instead",
                    export_id, type(ledger_exc).__name__)
        return
    tell_failed(export_id)


@contextmanager
def _renewing(export_id: str, lease: timedelta) -> Iterator[None]:
    """Renew the export's lease every quarter of it while the block runs, proving the export alive."""
    import threading

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease.total_seconds() / 4):
            try:
                with ledger.connect() as conn:
                    ledger.renew_lease(conn, export_id, lease)
            except Exception as exc:  # noqa: BLE001 (the export goes on; a lapse only lets others take over)
                log.warning("could not renew the lease of export %s: %s", export_id, type(exc).__name__)

    renewer = threading.Thread(target=renew, name=f"lease:{export_id}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def _wait_for(export_id: str, lease: timedelta, watch: Callable[[Report], None] | None = None) -> dict | None:
    """The summary of another process's export once it is published; None if it died first.

    `watch` hears that export's progress as the ledger has it.
    """
    import time

    started = time.monotonic()
    while True:
        with ledger.connect() as conn:
            record = ledger.export_record(conn, export_id)
            recorded = ledger.progress(conn, export_id) if watch else {}
        if watch and recorded:
            watch(Report(f"export {export_id}", time.monotonic() - started, tuple(
                CategoryProgress(category, row["rows_done"], row["rows_estimated"], row["pieces_done"],
                                 row["pieces_total"]) for category, row in recorded.items())))
        if record["state"] in ("ready", "delivered"):
            return _summary_of(record)
        if record["state"] in ("failed", "cancelled", "expired"):
            if record["error"] and record["error"].startswith("abandoned:"):
                return None
            raise export.ExportError(f"export {export_id} of this account, which this request joined, "
                                     f"{record['state']}: {record['error'] or 'no reason recorded'}")
        if not record["leased"]:
            return None
        time.sleep(min(1.0, lease.total_seconds() / 4))


def _summary_of(record: dict) -> Summary:
    return Summary(export_id=str(record["export_id"]), account_id=record["account_id"], region=record["region"],
                   bucket=record["bucket"], key=record["archive_key"], bytes=record["bytes"], sha256=record["sha256"],
                   snapshot_at=record["snapshot_at"], counts=record["counts"])


def schedule(conf: dict, every_days: int, *, first_due: datetime | None = None) -> dict:
    """Export an account every `every_days` days (the scheduled_exports DAG runs them); first due now by default."""
    if not isinstance(every_days, int) or not 1 <= every_days <= 366:
        raise RequestError("every_days must be a whole number of days from 1 to 366")
    request = parse_request(conf, SchemaSet())
    # A schedule keeps only the account's options: it would silently export the whole account, every time.
    narrowed = [name for name in ("subject_email", "since", "until") if getattr(request, name) is not None]
    if narrowed:
        raise RequestError(f"invalid schedule: field {narrowed[0]!r}: a schedule exports the whole account; ask for "
                           "one data subject's export, or a time window, with `portability export`")
    due = first_due or datetime.now(UTC)
    with ledger.connect() as conn:
        ledger.set_schedule(conn, request.to_dict(), every_days, notify_email=request.requester()["notify_email"],
                            first_due=due)
    return {"account_id": request.account_id, "every_days": every_days, "next_due_at": due.isoformat()}


def due_batches(batch_size: int, max_batches: int = 512) -> list[list[str]]:
    """The accounts due for their scheduled export, in batches (one mapped task each, within max_map_length)."""
    with ledger.connect() as conn:
        due = [row["account_id"] for row in ledger.due_schedules(conn, datetime.now(UTC))]
    size = max(batch_size, -(-len(due) // max_batches))
    return [due[i:i + size] for i in range(0, len(due), size)]


def run_scheduled(account_ids: list[str]) -> dict:
    """Export each account of a batch in turn; one account's failure is recorded and the others go on."""
    with ledger.connect() as conn:
        rows = ledger.due_among(conn, account_ids, datetime.now(UTC))
    succeeded, failed = [], []
    for row in rows:
        conf = {"account_id": row["account_id"], "categories": row["categories"], "formats": row["formats"],
                "expires_in_hours": row["expires_in_hours"], "on_invalid": row["on_invalid"],
                "requested_by": "scheduled_exports"}
        if row["notify_email"]:
            conf["notify_email"] = row["notify_email"]
        try:
            summary, _ = export_now(conf, requested_by="scheduled_exports")
        except Exception as exc:  # noqa: BLE001 (any failure of one account is recorded, and the batch goes on)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("scheduled export of %s failed: %s", row["account_id"], error)
            with ledger.connect() as conn:
                ledger.schedule_failed(conn, row["account_id"], error)
            failed.append({"account_id": row["account_id"], "error": error[:500]})
            continue
        with ledger.connect() as conn:
            ledger.schedule_done(conn, row["account_id"], summary.export_id)
        succeeded.append({"account_id": row["account_id"], "export_id": summary.export_id})
    return {"succeeded": succeeded, "failed": failed}


def submit(conf: dict, *, idempotency_key: str | None = None,
           run_state: ledger.RunState | None = None) -> ledger.Submission:
    """Validate and record a request; the caller triggers the DAG run when `needs_trigger`, with its `options`.

    `run_state` (a DAG run id's state, from Airflow) lets a dead DAG run's export be told from a live one.
    """
    key_valid = idempotency_key is None or (0 < len(idempotency_key) <= 200 and idempotency_key.isprintable())
    with refusals_recorded(conf, requested_by="portability request",
                           idempotency_key=idempotency_key if key_valid else None):
        request = parse_request(conf, SchemaSet())
        if not key_valid:
            raise RequestError("invalid idempotency key: 1 to 200 printable characters")
    requester = request.requester()
    with ledger.connect() as conn:
        return ledger.submit(conn, request.to_dict(), requested_by=requester["requested_by"] or "portability request",
                             notify_email=requester["notify_email"], webhook_url=requester["webhook_url"],
                             idempotency_key=idempotency_key, run_state=run_state)


def replace_dead(request_id: str, run_state: ledger.RunState | None) -> dict | None:
    """If the export a request waits on died, it is marked failed and a new one takes its requesters: returns
    that export's DAG run id and options for the caller to trigger; None while the export is alive."""
    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        return ledger.replace_dead(conn, request_id, run_state)


@contextmanager
def refusals_recorded(conf: object, *, requested_by: str, dag_run_id: str | None = None,
                      idempotency_key: str | None = None) -> Iterator[None]:
    """A request refused for its content (RequestError) in the block is recorded in the ledger, with its reason,
    so that every request is on the privacy team's list, then the refusal goes on to the caller unchanged.

    The reason is the RequestError's message, which never echoes a data subject's address; the account is
    recorded only if it is a well-formed id, the requester only if the conf's is a valid one (else `requested_by`).
    The same DAG run id or idempotency key records one refusal however often it is retried or replayed. If the
    ledger cannot record it, that is logged: the refusal is still what the caller reports.
    """
    try:
        yield
    except RequestError as refusal:
        fields = conf if isinstance(conf, dict) else {}
        requester = fields["requested_by"] if _valid_requester(fields) else requested_by
        try:
            with ledger.connect() as conn:
                ledger.refuse(conn, reason=str(refusal), requested_by=requester,
                              account_id=well_formed_account(fields), dag_run_id=dag_run_id,
                              idempotency_key=idempotency_key)
        except Exception as exc:  # noqa: BLE001 (the refusal is what counts; the ledger's failure is only logged)
            log.info("could not record the refused request in the ledger (%s)", type(exc).__name__)
        raise


def _valid_requester(conf: object) -> bool:
    asked = conf.get("requested_by") if isinstance(conf, dict) else None
    return isinstance(asked, str) and 0 < len(asked) <= 200 and asked.isprintable()


def run_note(account_id: str | None, requested_by: str | None, *, request_id: str | None = None,
             data_subject: bool = False, refused: str | None = None) -> str:
    """A DAG run's note, which the Airflow UI shows in the run list and the run's details: whose export it is and
    who asked (never the data subject's address, only that there is one), or why the request was refused."""
    parts = [f"account {account_id}" if account_id else "no valid account",
             f"requested by {requested_by}" if requested_by else "requester not given"]
    if data_subject:
        parts.append("one person's data")
    if request_id:
        parts.append(f"request {request_id}")
    if refused:
        parts.append(f"refused: {refused}")
    from portability.resources.airflow_api import MAX_NOTE

    return " · ".join(parts)[:MAX_NOTE]


def airflow_requester(conf: dict, triggering_user: str | None) -> str:
    """Who asked for a run triggered in Airflow: the conf's requested_by if it is a valid one, else the Airflow user
    who triggered it."""
    if _valid_requester(conf):
        return conf["requested_by"]
    return f"Airflow user {triggering_user}" if triggering_user else "airflow"


def well_formed_account(conf: dict) -> str | None:
    """The conf's account id if it is a valid one (only such an id is written into a note or a refusal's record)."""
    import re

    account = conf.get("account_id") if isinstance(conf, dict) else None
    return account if isinstance(account, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", account) else None


def conf_names(conf: dict, triggering_user: str | None) -> tuple[str | None, str]:
    """(account, requester) of a run's conf, as its note and a refusal's record name them."""
    return well_formed_account(conf), airflow_requester(conf, triggering_user)


def begin(conf: dict, dag_id: str, run_id: str, run_state: ledger.RunState | None = None, *,
          triggering_user: str | None = None) -> Plan:
    """The first task of a run: the plan, with "joined" set if another live export of the account already serves
    it; if it replaces a dead one, its categories and formats are widened to serve that one's requesters.
    `triggering_user`: the Airflow user who triggered the run, the requester when the conf names none."""
    with refusals_recorded(conf, requested_by=airflow_requester(conf, triggering_user), dag_run_id=run_id):
        request = parse_request(conf, SchemaSet())
        plan = export.plan(conf, export_id_for_run(dag_id, run_id))
    requester = request.requester()
    with ledger.connect() as conn:
        outcome = ledger.begin(conn, {"export_id": plan.export_id, **plan.options()}, run_id,
                               requested_by=airflow_requester(requester, triggering_user),
                               notify_email=requester["notify_email"], webhook_url=requester["webhook_url"],
                               run_state=run_state)
    widened = {name: tuple(outcome[name]) for name in ("categories", "formats") if name in outcome}
    return replace(plan, **widened, joined=outcome.get("joined"), cancelled=bool(outcome.get("cancelled")))


def plan_from_xcom(value: dict) -> Plan:
    """A plan as a task receives it through XCom, with the data subject's address read back from the ledger, the
    only place it is kept."""
    plan = Plan.from_xcom(value)
    if not value.get("subject"):
        return plan
    with ledger.connect() as conn:
        subject_email = ledger.export_record(conn, plan.export_id)["subject_email"]
    if subject_email is None:
        raise export.ExportError(f"export {plan.export_id} is for one data subject, but the ledger does not name "
                                 "them: clear the whole DAG run to begin it again")
    return replace(plan, subject_email=subject_email)


def cancel(request_id: str) -> dict:
    """Withdraw a request; if nobody else waits for its export, the export is cancelled (its run stops at its next
    step, or the caller stops the DAG run). The requester is told on their channels (export.cancelled); a channel
    that fails is recorded on the request and tried again by the cleanup DAG, and never undoes the cancel."""
    from portability.resources.delivery import CANCELLED

    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        result = ledger.cancel(conn, request_id)
        ledger.queue_notifications(conn, result["export_id"], CANCELLED, request_id=request_id)
    told = send_notices(result["export_id"], CANCELLED)
    return {**result, "requester_told": told["notified"] > 0}


def fail(dag_id: str, run_id: str, error: str) -> dict:
    """A task of the run failed for good: the export and its requests are marked failed, with why, and each
    requester and the privacy team are told (once per request, however many tasks fail or callbacks repeat)."""
    export_id = export_id_for_run(dag_id, run_id)
    with ledger.connect() as conn:
        ledger.fail(conn, export_id, error)
    return tell_failed(export_id)


def tell_failed(export_id: str) -> dict:
    """export.failed to each failed request's channels and one email per failed request to the privacy team.

    Queued in the outbox first: the notifications table's (request, event) uniqueness makes a repeated call (a
    second failed task, a retried callback) send nothing twice. A send that fails is logged and left in the
    outbox for the cleanup DAG's sweep; it never raises, so the failure being reported stays the one that counts.
    """
    from portability.resources.delivery import FAILED, PRIVACY_FAILED

    team = config.privacy_team_email()
    try:
        with ledger.connect() as conn:
            ledger.queue_notifications(conn, export_id, FAILED)
            if team:
                ledger.queue_notifications(conn, export_id, PRIVACY_FAILED)
            else:
                log.info("export %s failed and PORTABILITY_PRIVACY_EMAIL is not set: the privacy team is not "
                         "emailed", export_id)
        told = send_notices(export_id, FAILED)
        team_told = send_notices(export_id, PRIVACY_FAILED)
    except Exception as exc:  # noqa: BLE001 (the ledger failed too: the failure itself is what is reported)
        log.warning("could not tell the requesters of failed export %s (%s)", export_id, type(exc).__name__)
        return {"notified": 0, "privacy_team_told": 0, "failures": [type(exc).__name__]}
    return {"notified": told["notified"], "privacy_team_told": team_told["notified"],
            "failures": told["failures"] + team_told["failures"]}


def send_notices(export_id: str, event: str) -> dict:
    """Send the export's queued notifications of a failed or cancelled event; returns how many were sent and the
    failures (logged, not raised: the notices stay in the outbox for the next sweep)."""
    from portability.resources.delivery import (
        PRIVACY_FAILED,
        DeliveryError,
        cancelled_notice,
        failed_notice,
        post_webhook,
        send_email,
        send_privacy_failure,
    )

    with ledger.connect() as conn:
        records: list[dict] = []  # read once a notification is claimed: an export may have none (or not exist)

        def send(notification: dict) -> None:
            if not records:
                records.append(ledger.export_record(conn, export_id))
            record = records[0]
            if event == PRIVACY_FAILED:
                team = config.privacy_team_email()
                if not team:
                    raise DeliveryError("the privacy team's email is not set: set PORTABILITY_PRIVACY_EMAIL")
                send_privacy_failure(team, notification, record)
                return
            notice = failed_notice(notification, record) if notification["event"] == "export.failed" \
                else cancelled_notice(notification)
            if notification["notify_email"]:
                send_email(notification["notify_email"], notice)
            if notification["webhook_url"]:
                post_webhook(notification["webhook_url"], notice)

        told, failures = _drain_outbox(conn, export_id, event, send)
    for failure in failures:  # recorded on the request too; info, so the command's failure stays its one line
        log.info("%s notice not sent (it stays in the outbox for the cleanup DAG's sweep): %s", event, failure)
    return {"notified": told, "failures": failures}


def send_pending_notices() -> dict:
    """The outbox sweep (the cleanup DAG): every failed or cancelled notice a failed attempt left unsent."""
    from portability.resources.delivery import CANCELLED, FAILED, PRIVACY_FAILED

    with ledger.connect() as conn:
        pending = ledger.unsent_notices(conn, (FAILED, CANCELLED, PRIVACY_FAILED))
    sent, failures = 0, []
    for export_id, event in pending:
        result = send_notices(export_id, event)
        sent, failures = sent + result["notified"], failures + result["failures"]
    return {"notified": sent, "failures": len(failures)}


def _drain_outbox(conn, export_id: str, event: str, send: Callable[[dict], str | None]) -> tuple[int, list[str]]:
    """Claim, send and record each unsent notification of `event` for the export; `send` returns the link's expiry
    for export.ready. A channel's failure is recorded on the request and the notification released."""
    from portability.resources.delivery import DeliveryError

    told, failures, tried = 0, [], []
    while (notification := ledger.claim_notification(conn, export_id, NOTIFICATION_CLAIM, tried,
                                                     event)) is not None:
        tried.append(notification["notification_id"])
        try:
            expires_at = send(notification)
        except (DeliveryError, export.ExportError) as exc:
            ledger.notification_failed(conn, notification, str(exc))
            failures.append(f"request {notification['request_id']}: {exc}")
            continue
        ledger.notification_sent(conn, notification, expires_at)
        told += 1
    return told, failures


# How long a sender holds a notification before another may send it (a killed sender's claim runs out).
NOTIFICATION_CLAIM = timedelta(minutes=10)


def deliver(summary: Summary) -> dict:
    """Record the published archive and tell each waiting requester; returns how many were told.

    The notifications go through an outbox: each is queued in the ledger, claimed (committed, so no
    lock is held while a slow webhook retries), sent, then marked sent. Delivery is at least once,
    and every notification carries an id that stays the same on each attempt. A requester without a
    channel reads the link from `portability link` or `portability request --wait`, and stays
    'ready'. A failed channel is recorded on the request and raised, so the task retries; those
    already told are not told again.
    """
    from portability.resources.delivery import DeliveryError, post_webhook, ready_notice, send_email

    with ledger.connect() as conn:
        ledger.finish(conn, summary.to_xcom(), config.retention())
        ledger.queue_notifications(conn, summary.export_id)
        record = ledger.export_record(conn, summary.export_id)

        def send(notification: dict) -> str:
            link = _link(record, notification["expires_in_hours"])
            notice = ready_notice(notification, summary.to_xcom(), link)
            if notification["notify_email"]:
                send_email(notification["notify_email"], notice)
            if notification["webhook_url"]:
                post_webhook(notification["webhook_url"], notice)
            return link.expires_at

        told, failures = _drain_outbox(conn, summary.export_id, "export.ready", send)
    if failures:
        raise DeliveryError("; ".join(failures))
    return {"notified": told}


def link(export_id: str, expires_in_hours: int = 72, *, request_id: str | None = None) -> export.Link:
    """A fresh link to a retained archive, never outliving its retention; refused once it is gone."""
    if not isinstance(expires_in_hours, int) or not 1 <= expires_in_hours <= export.MAX_LINK_HOURS:
        raise RequestError(f"expires_in_hours must be an integer from 1 to {export.MAX_LINK_HOURS}")
    export.check_export_id(export_id)
    with ledger.connect() as conn:
        record = ledger.export_record(conn, export_id)
        minted = _link(record, expires_in_hours)
        if request_id:
            ledger.delivered(conn, request_id, minted.expires_at)
    return minted


def send_fresh_link(request_id: str) -> dict:
    """Mint a fresh link to a served request's archive and send it again on the requester's own channels (the
    privacy team's "send a fresh link"); returns where it went, never the link, nor the addresses.

    The notice is `export.ready` again, with a notification id of its own: a receiver that drops repeats of the
    first notice takes this one. Sending is not queued in the outbox: the person who asked is told at once
    whether it went out, and asks again if not.
    """
    import uuid

    from portability.resources.delivery import DeliveryError, post_webhook, ready_notice, send_email

    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        request = ledger.request_channels(conn, request_id)
        if request["state"] not in ("ready", "delivered"):
            raise export.ExportError(f"request {request_id} is {request['state']}: only a ready or delivered "
                                     "request's archive can be sent again")
        channels = [name for name, field in (("email", "notify_email"), ("webhook", "webhook_url")) if request[field]]
        if not channels:
            raise RequestError(f"request {request_id} names no email and no webhook to send a link to: hand one "
                               f"over with 'portability link {request_id}'")
        record = ledger.export_record(conn, str(request["export_id"]))
        minted = _link(record, request["expires_in_hours"])
        notice = ready_notice({"notification_id": str(uuid.uuid4()), "request_id": request_id},
                              _summary_of(record).to_xcom(), minted)
        sent, failures = [], []
        for channel, send in (("email", lambda: send_email(request["notify_email"], notice)),
                              ("webhook", lambda: post_webhook(request["webhook_url"], notice))):
            if channel not in channels:
                continue
            try:
                send()
            except DeliveryError as exc:
                failures.append(str(exc))
                continue
            sent.append(channel)
        if sent:
            ledger.delivered(conn, request_id, minted.expires_at)
    if failures:
        raise DeliveryError((f"sent to its {' and '.join(sent)}, but " if sent else "") + "; ".join(failures))
    log.info("request %s: a fresh link was sent to its %s", request_id, " and ".join(sent))
    return {"request_id": request_id, "export_id": str(record["export_id"]), "sent_to": sent,
            "notification_id": notice["notification_id"], "link_expires_at": minted.expires_at}


def _link(record: dict, hours: int) -> export.Link:
    if record["state"] == "expired":
        raise export.ExportError(
            f"export {record['export_id']} was deleted on {record['expired_at']:%Y-%m-%d} "
            f"({record['expiry_reason']}): request a new export")
    if record["state"] not in ("ready", "delivered") or not record["archive_key"]:
        raise export.ExportError(f"export {record['export_id']} is {record['state']}, not ready: no link yet")
    left = record["retain_until"] - datetime.now(UTC)
    seconds = int(min(timedelta(hours=hours), left).total_seconds())
    if seconds < 60:
        raise export.ExportError(f"export {record['export_id']} is about to be deleted (retention ends "
                                 f"{record['retain_until']:%Y-%m-%d %H:%M} UTC): request a new export")
    from portability.resources.storage import ObjectStore

    store = ObjectStore(config.storage_settings())
    return export.presigned_link(store, record["bucket"], record["archive_key"], seconds)


def revoke(export_id: str) -> int:
    """Delete a published archive now; every link to it stops working. Returns the objects deleted."""
    export.check_export_id(export_id)
    with ledger.connect() as conn:
        record = ledger.export_record(conn, export_id)
        deleted = _delete_archive(record)
        ledger.expire(conn, export_id, "revoked")
    log.info("export %s revoked: %d objects deleted", export_id, deleted)
    return deleted


def expire_past_retention(now: datetime | None = None) -> dict:
    """Delete every archive whose retention is over and record it; the export_cleanup DAG's work."""
    now = now or datetime.now(UTC)
    expired = []
    with ledger.connect() as conn:
        for record in ledger.past_retention(conn, now):
            _delete_archive(record)
            ledger.expire(conn, str(record["export_id"]), "retention")
            expired.append(str(record["export_id"]))
    return {"expired": expired}


def _delete_archive(record: dict) -> int:
    from portability.resources.storage import ObjectStore

    if not record["bucket"] or not record["archive_key"]:
        return 0
    store = ObjectStore(config.storage_settings())
    return store.delete_prefix(record["bucket"], keys.archive_prefix(str(record["export_id"])))


def apply_lifecycle_rules() -> dict:
    """The storage's own backstop: archives and staging expire even if the cleanup DAG stops running."""
    from portability.resources.storage import ObjectStore

    settings = config.storage_settings()
    store = ObjectStore(settings)
    days = config.retention().days + 1  # the DAG deletes on time; the rule catches what it missed
    applied = {}
    for bucket in sorted(set(settings.buckets.values())):
        applied[bucket] = store.set_expiry_rules(bucket, {keys.ARCHIVES: days, keys.STAGING: 2})
    return applied


def deadline_report(within_days: int = 7) -> list[dict]:
    """Requests not delivered whose legal deadline is past or within `within_days`."""
    with ledger.connect() as conn:
        return _report_rows(ledger.overdue_or_due(conn, timedelta(days=within_days)))


def request_list(state: str | None = None, account_id: str | None = None) -> list[dict]:
    """Every request in the ledger (newest first), optionally of one state or account."""
    with ledger.connect() as conn:
        return _report_rows(ledger.requests(conn, state, account_id))


def export_progress(export_ids: list[str]) -> dict[str, dict[str, dict]]:
    """The progress of exports under way, per export and category (rows and pieces done of the estimate)."""
    with ledger.connect() as conn:
        return {export_id: ledger.progress(conn, export_id) for export_id in export_ids}


def _report_rows(rows: list[dict]) -> list[dict]:
    instants = ("requested_at", "deadline_at", "delivered_at", "cancelled_at")
    return [{**row, "request_id": str(row["request_id"]),
             "export_id": str(row["export_id"]) if row.get("export_id") is not None else None,
             **{name: row[name].isoformat() for name in instants if row.get(name) is not None}}
            for row in rows]


def status(request_id: str) -> dict:
    export.check_export_id(request_id, "request id")
    with ledger.connect() as conn:
        return ledger.request_status(conn, request_id)


def watch_deadlines(within_days: int = 7, run_state: ledger.RunState | None = None) -> dict:
    """The deadline alert: counts overdue and due requests, and emails the list to the privacy team when it
    holds a request not alerted in the last DEADLINE_ALERT_QUIET, so that a retried, repeated or concurrent
    run does not send the same list again. Exports under way that died are marked failed first, so that
    their requests show as failed instead of waiting for ever."""
    from portability.resources.delivery import send_deadline_alert

    to = config.privacy_team_email()
    with ledger.connect() as conn:
        reaped = ledger.reap_dead(conn, run_state)
        if reaped:
            log.warning("%d export(s) under way had died and are now marked failed: %s", len(reaped),
                        ", ".join(reaped))
        for export_id in reaped:  # failed for good: their requesters and the privacy team are told
            tell_failed(export_id)
        rows = ledger.overdue_or_due(conn, timedelta(days=within_days))
        with conn.transaction():  # a failed email raises, the claims roll back and the next run tries again
            fresh = ledger.claim_deadline_alerts(conn, [row["request_id"] for row in rows], DEADLINE_ALERT_QUIET) \
                if rows and to else []
            if fresh:
                send_deadline_alert(to, _report_rows(rows), within_days)
    overdue = sum(1 for row in rows if row["overdue"])
    resent = send_pending_notices()  # what a failed email or webhook left in the outbox
    return {"overdue": overdue, "due": len(rows) - overdue, "alerted": bool(fresh), "abandoned": len(reaped),
            "notices_resent": resent["notified"]}
