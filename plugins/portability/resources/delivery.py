"""Telling requesters their archive is ready: an email through Airflow's SMTP connection, a signed webhook.

Both carry the presigned link, so both are built here and sent, never logged. The webhook body
is signed with HMAC-SHA256 over "<timestamp>.<body>" with the password of the
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


class DeliveryError(RuntimeError):
    """A notification could not be sent; the message names the channel, never the link."""


def ready_notice(notification: dict, summary: dict, link) -> dict:
    """What every channel says: the link, its expiry and how to check the archive.

    `notification_id` is the same on every attempt to send this notice: a receiver drops repeats by it.
    """
    return {
        "event": "export.ready",
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


NOTIFICATION_ID_HEADER = "Portability-Notification-Id"


def send_email(to: str, notice: dict) -> None:
    # The same Message-ID on every attempt: mail clients show a resent notice once.
    domain = config.sender_email().rsplit("@", 1)[-1]
    headers = {"Message-ID": f"<{notice['notification_id']}@{domain}>",
               NOTIFICATION_ID_HEADER: notice["notification_id"]}
    _send(to, *email_body(notice), headers=headers)


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
