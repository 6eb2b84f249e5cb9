"""What the Exports page shows of each request: the ledger's row (`service.request_list`) as a typed record.

Only what the privacy team needs and may see: never a link, never a data subject's address (a subject's
request shows as "one person"), never the requester's email or webhook address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

from portability.pipeline.progress import CategoryProgress  # one category's progress, as the ledger sums it
from portability.resources.ledger import ACTIVE, DAG_ID

SERVED = ("ready", "delivered")


@dataclass(frozen=True)
class CategoryCount:
    category: str
    exported: int
    quarantined: int


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    state: str
    account_id: str
    one_person: bool
    requested_by: str
    requested_at: str
    deadline_at: str
    overdue: bool
    due_soon: bool
    export_id: str | None
    dag_run_id: str | None
    bytes: int | None
    counts: tuple[CategoryCount, ...]
    reason: str | None  # why it was refused, or why its export failed
    progress: tuple[CategoryProgress, ...] = field(default=())

    @property
    def cancellable(self) -> bool:
        return self.state in ACTIVE

    @property
    def served(self) -> bool:
        """Its archive is published: it can be revoked, and a fresh link sent."""
        return self.state in SERVED and self.export_id is not None

    @property
    def run_path(self) -> str | None:
        """The DAG run's page in Airflow's UI, relative to the Exports page (`<base>/portability/exports`)."""
        if not self.dag_run_id:
            return None
        return f"../dags/{quote(DAG_ID, safe='')}/runs/{quote(self.dag_run_id, safe='')}"

    @property
    def size(self) -> str:
        return human_bytes(self.bytes) if self.bytes is not None else ""


def request_row(row: dict, progress: dict[str, dict] | None = None) -> RequestRow:
    """One row of `service.request_list()` (and the progress of its export, if under way) as the page shows it."""
    export_id = row.get("export_id")
    reason = row.get("refused_reason") or (row.get("error") if row["state"] == "failed" else None)
    return RequestRow(
        request_id=str(row["request_id"]), state=row["state"], account_id=row.get("account_id") or "",
        one_person=bool(row.get("data_subject")), requested_by=row.get("requested_by") or "",
        requested_at=instant(row.get("requested_at")), deadline_at=instant(row.get("deadline_at")),
        overdue=bool(row.get("overdue")), due_soon=bool(row.get("due_soon")),
        export_id=str(export_id) if export_id else None, dag_run_id=row.get("dag_run_id"),
        bytes=row.get("bytes"), counts=counts(row.get("counts")), reason=reason,
        progress=tuple(CategoryProgress(category=name, rows_done=p["rows_done"], rows_estimated=p["rows_estimated"],
                                        pieces_done=p["pieces_done"], pieces_total=p["pieces_total"],
                                        stage=p.get("stage", "exporting"))
                       for name, p in sorted((progress or {}).items())))


def counts(value: dict | None) -> tuple[CategoryCount, ...]:
    return tuple(CategoryCount(name, c.get("exported", 0), c.get("quarantined", 0))
                 for name, c in sorted((value or {}).items()))


def instant(value: str | datetime | None) -> str:
    """An instant as the page shows it: "2026-12-07 11:29 UTC" (the ledger keeps UTC)."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def human_bytes(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
