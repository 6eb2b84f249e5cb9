"""Telling requesters what became of their export, and the privacy team what failed: an email through Airflow's
SMTP connection, a signed webhook.

Three events reach a requester on each channel they gave: `export.ready` (the link), `export.failed`
(a short public reason, and what happens next) and `export.cancelled`. Only `export.ready` carries a
link (a presigned link, built here and sent, never logged); a failed or cancelled notice carries none,
and its reason is a fixed sentence chosen from the recorded error (`public_reason`), never the error
itself, which stays in the ledger for the privacy team. The webhook bodies' fields are documented in the
README and kept stable. The webhook body is signed with HMAC-SHA256 over "<timestamp>.<body>" with the password of the
`portability_webhook` connection, as Stripe and GitHub sign theirs; a receiver recomputes it
and refuses a stale timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time

from portability.resources import config

WEBHOOK_SIGNATURE_HEADER = "Portability-Signature"
WEBHOOK_ATTEMPTS = 5
NOTIFICATION_ID_HEADER = "Portability-Notification-Id"

READY, FAILED, CANCELLED = "export.ready", "export.failed", "export.cancelled"  # the requester's events
PRIVACY_FAILED = "privacy.export.failed"  # the privacy team's email about one failed request


class DeliveryError(RuntimeError):
    """A notification could not be sent; the message names the channel, never the link."""


def ready_notice(notification: dict, summary: dict, link) -> dict:
    """What every channel says: the link, its expiry and how to check the archive.

    `notification_id` is the same on every attempt to send this notice: a receiver drops repeats by it.
    """
    return {
        "event": READY,
        "notification_id": str(notification["notification_id"]),
        "request_id": str(notification["request_id"]),
        "export_id": summary["export_id"],
        "account_id": summary["account_id"],
        "url": link.url,
        "expires_at": link.expires_at,
        "bytes": summary["bytes"],
        "sha256": summary["sha256"],
        "snapshot_at": summary["snapshot_at"],
        "counts": summary["counts"],
    }


def email_body(notice: dict) -> tuple[str, str]:
    """The email's subject and HTML body."""
    size_mb = notice["bytes"] / 1_000_000
    rows = "".join(
        f"<tr><td>{html.escape(category)}</td><td align=right>{c['exported']:,}</td>"
        f"<td align=right>{c['quarantined']:,}</td></tr>"
        for category, c in notice["counts"].items()
    )
    from portability.resources.keys import archive_name

    name = html.escape(archive_name(notice["account_id"], notice["export_id"]))
    subject = f"Your data export of account {notice['account_id']} is ready"
    body = f"""<p>Your data export of account <b>{html.escape(notice['account_id'])}</b> is ready
(data as of {html.escape(notice['snapshot_at'])}).</p>
<p><a href="{html.escape(notice['url'])}">Download the archive</a> ({size_mb:,.1f} MB).
The link works until <b>{html.escape(notice['expires_at'])}</b>; after that, ask for a new one.</p>
<p>SHA-256 of the archive: <code>{notice['sha256']}</code></p>
<p>To check it is complete and intact:</p>
<pre>sha256sum {name}.zip   # must print the SHA-256 above
unzip {name}.zip
cd {name} &amp;&amp; sha256sum -c manifest-sha256.txt</pre>
<table><tr><th>category</th><th>exported</th><th>quarantined</th></tr>{rows}</table>
<p>Export id: {notice['export_id']} &middot; request id: {notice['request_id']}</p>
"""
    return subject, body



# What a requester is told went wrong: the first reason whose markers occur in the recorded error (our own
# messages, lower-cased). The recorded error itself names connections, hosts, records and tasks: it stays in
# the ledger. The codes are part of the webhook body's contract (README); add codes, never rename one.
PUBLIC_REASONS = (
    ("account_not_found", "We could not find the account this request names.", ("account not found",)),
    ("invalid_records", "Some of the account's records did not pass validation, and the request asked for the "
                        "export to stop rather than set them aside (on_invalid=fail).", ("on_invalid=fail",)),
    ("interrupted", "The work building your export stopped before it finished (a machine running it was lost).",
     ("abandoned:",)),
    ("data_unavailable", "Your account's data could not be read: a database holding it did not answer.",
     ("portability_source", "portability_state", "database")),
    ("storage_unavailable", "Your archive could not be stored.", ("object storage", "portability_s3", "bucket")),
)
INTERNAL_REASON = ("internal_error", "An internal error stopped the export.")


def public_reason(error: str | None) -> tuple[str, str]:
    """(code, sentence) for a requester, chosen from the recorded error and never quoting it."""
    text = (error or "").lower()
    for code, sentence, markers in PUBLIC_REASONS:
        if any(marker in text for marker in markers):
            return code, sentence
    return INTERNAL_REASON


def _utc(instant) -> str | None:
    """An instant as the notices show it: UTC, to the second, e.g. 2026-12-07T11:30:00Z."""
    from datetime import UTC

    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if instant is not None else None


def next_steps(deadline: str) -> str:
    return (f"Our privacy team has been told and will follow up. The legal deadline to answer your request, "
            f"{deadline}, still applies.")


def failed_notice(notification: dict, export: dict) -> dict:
    """export.failed: a public reason and what happens next; no link, no recorded error."""
    code, sentence = public_reason(export["error"])
    deadline = _utc(notification["deadline_at"])
    return {
        "event": FAILED,
        "notification_id": str(notification["notification_id"]),
        "request_id": str(notification["request_id"]),
        "export_id": str(export["export_id"]),
        "account_id": notification["account_id"],
        "reason": code,
        "message": sentence,
        "next_steps": next_steps(deadline),
        "deadline_at": deadline,
        "failed_at": _utc(export["failed_at"]),
    }


def cancelled_notice(notification: dict) -> dict:
    """export.cancelled: the privacy team withdrew the request; no link."""
    return {
        "event": CANCELLED,
        "notification_id": str(notification["notification_id"]),
        "request_id": str(notification["request_id"]),
        "export_id": str(notification["export_id"]),
        "account_id": notification["account_id"],
        "message": "Our privacy team cancelled this request: no archive will be sent for it.",
        "cancelled_at": _utc(notification["cancelled_at"]),
    }


def email_of(notice: dict) -> tuple[str, str]:
    """The requester's email (subject, HTML body) for any of the three events (a notice without one is a ready
    notice, as they all were before the others)."""
    event = notice.get("event", READY)
    if event == READY:
        return email_body(notice)
    account, request = html.escape(notice["account_id"]), html.escape(notice["request_id"])
    if event == FAILED:
        subject = f"Your data export of account {notice['account_id']} could not be completed"
        body = (f"<p>We could not complete your data export of account <b>{account}</b>.</p>\n"
                f"<p>What went wrong: {html.escape(notice['message'])}</p>\n"
                f"<p>What happens next: {html.escape(notice['next_steps'])}</p>\n"
                f"<p>Request id: {request}</p>\n")
        return subject, body
    subject = f"Your data export request for account {notice['account_id']} was cancelled"
    body = (f"<p>Our privacy team cancelled your data export request for account <b>{account}</b> on "
            f"{html.escape(notice['cancelled_at'] or '')}: no archive will be sent for it.</p>\n"
            f"<p>If you did not expect this, contact us and quote request id {request}.</p>\n")
    return subject, body


def privacy_failure_email(notification: dict, export: dict) -> tuple[str, str]:
    """The privacy team's email about one failed request: ids, account, the recorded error, the deadline and what
    the requester was told (the data subject's address, if any, is not in it)."""
    code, sentence = public_reason(export["error"])
    deadline = _utc(notification["deadline_at"])
    channels = [name for name, value in (("email", notification["notify_email"]),
                                         ("webhook", notification["webhook_url"])) if value]
    told = (f"told by {' and '.join(channels)}: {sentence} ({code})" if channels
            else "not told: the request gave no email or webhook")
    rows = (("request", notification["request_id"]), ("account", notification["account_id"]),
            ("requested by", notification["requested_by"]), ("requested at", _utc(notification["requested_at"])),
            ("legal deadline", deadline), ("export", export["export_id"]), ("DAG run", export["dag_run_id"] or "-"),
            ("failed at", _utc(export["failed_at"])), ("requester", told))
    table = "".join(f"<tr><th align=left>{name}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows)
    subject = (f"Data export failed: account {notification['account_id']}, request {notification['request_id']}, "
               f"deadline {deadline[:10]}")
    body = (f"<p>A data export request failed for good. Its legal deadline, {html.escape(deadline)}, still runs.</p>\n"
            f"<table>{table}</table>\n<p>Recorded error:</p>\n<pre>{html.escape(export['error'] or '')}</pre>\n"
            f"<p><code>portability status {html.escape(str(notification['request_id']))}</code> shows the request; "
            "clear the DAG run (or request the export again) once the cause is fixed.</p>\n")
    return subject, body


def send_privacy_failure(to: str, notification: dict, export: dict) -> None:
    _send(to, *privacy_failure_email(notification, export), headers=_id_headers(str(notification["notification_id"])))


def _id_headers(notification_id: str) -> dict:
    # The same Message-ID on every attempt: mail clients show a resent notice once.
    domain = config.sender_email().rsplit("@", 1)[-1]
    return {"Message-ID": f"<{notification_id}@{domain}>", NOTIFICATION_ID_HEADER: notification_id}


def send_email(to: str, notice: dict) -> None:
    _send(to, *email_of(notice), headers=_id_headers(notice["notification_id"]))


def _send(to: str, subject: str, html_body: str, headers: dict | None = None) -> None:
    """One HTML email through Airflow's SMTP connection; the error names the recipient, never the body (a link)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        with SmtpHook(smtp_conn_id=config.SMTP_CONN_ID) as smtp:
            smtp.send_email_smtp(to=to, subject=subject, html_content=html_body, from_email=config.sender_email(),
                                 custom_headers=headers)
    except Exception as exc:
        raise DeliveryError(f"email to {to} failed: {type(exc).__name__}; check connection "
                            f"{config.SMTP_CONN_ID!r}") from None


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(secret: bytes, header: str, body: bytes, *, tolerance_seconds: int = 300,
                     now: float | None = None) -> bool:
    """What a receiver runs: the signature matches and is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def webhook_secret() -> bytes:
    try:
        secret = config.connection(config.WEBHOOK_CONN_ID).password
    except config.ConfigurationError:
        secret = None
    if not secret:
        raise DeliveryError(f"webhooks need a signing secret: set the password of connection "
                            f"{config.WEBHOOK_CONN_ID!r} (AIRFLOW_CONN_{config.WEBHOOK_CONN_ID.upper()})")
    return secret.encode()


def post_webhook(url: str, notice: dict, *, attempts: int = WEBHOOK_ATTEMPTS, backoff_seconds: float = 1.0) -> None:
    """POST the signed notice; 429 and 5xx answers and connection errors are retried with exponential back-off."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    body = json.dumps(notice, sort_keys=True).encode()
    retry = Retry(total=attempts - 1, backoff_factor=backoff_seconds, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=frozenset({"POST"}), raise_on_status=False, respect_retry_after_header=True)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        # Signed per attempt round; a receiver allows a few minutes of skew, more than the back-off adds.
        headers = {"Content-Type": "application/json",
                   WEBHOOK_SIGNATURE_HEADER: sign(webhook_secret(), int(time.time()), body)}
        if "notification_id" in notice:
            headers[NOTIFICATION_ID_HEADER] = notice["notification_id"]
        try:
            response = session.post(url, data=body, headers=headers, timeout=30, allow_redirects=False)
        except requests.RequestException as exc:
            raise DeliveryError(f"webhook failed after {attempts} attempts: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"webhook answered HTTP {response.status_code} after {attempts} attempts")


def send_deadline_alert(to: str, rows: list[dict], within_days: int) -> None:
    """The privacy team's list of requests past or near their legal deadline."""
    overdue = sum(1 for row in rows if row["overdue"])
    lines = "".join(
        f"<tr><td>{'OVERDUE' if row['overdue'] else 'due'}</td><td>{html.escape(row['deadline_at'][:16])}</td>"
        f"<td>{html.escape(row['account_id'])}</td><td>{html.escape(row['state'])}</td>"
        f"<td>{row['request_id']}</td><td>{html.escape(row['error'] or '')}</td></tr>"
        for row in rows
    )
    body = (f"<p>{overdue} export request(s) are past their legal deadline; {len(rows) - overdue} more are due "
            f"within {within_days} days.</p><table><tr><th></th><th>deadline (UTC)</th><th>account</th>"
            f"<th>state</th><th>request</th><th>error</th></tr>{lines}</table>"
            "<p>Run <code>portability deadlines</code> for the current list.</p>")
    _send(to, f"Data export deadlines: {overdue} overdue, {len(rows) - overdue} due soon", body)
