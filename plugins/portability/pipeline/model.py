"""The typed records the export's steps hand each other: small, and plain data as XCom values.

    Plan -> Snapshot -> Shard (one per task) -> ShardResult -> Summary

Each has `to_xcom()` (JSON-able builtins) and `from_xcom()`; a DAG task returns the former and the
next task rebuilds the record, so Airflow never needs to import these classes to store them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from portability.archive.deflate import DeflatedPiece


class _Record:
    def to_xcom(self) -> dict:
        return asdict(self)

    @classmethod
    def from_xcom(cls, value: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{name: item for name, item in value.items() if name in names})


@dataclass(frozen=True)
class Plan(_Record):
    """What to export, checked; nothing has been read from the source yet.

    `joined` (another live export of the account covers the request) or `cancelled` mean this
    run has nothing to do.
    """

    export_id: str
    account_id: str
    categories: tuple[str, ...]
    formats: tuple[str, ...]
    expires_in_hours: int
    on_invalid: str
    piece_rows: int
    shard_rows: int
    joined: str | None = None
    cancelled: bool = False
    # Messages and events from/until these instants (RFC 3339, UTC); None: everything the source holds.
    since: str | None = None
    until: str | None = None
    # One data subject's export. The address lives in the ledger only: never in XCom (`to_xcom` keeps only
    # whether there is one, and `service.plan_from_xcom` reads it back), a log line or an object key.
    subject_email: str | None = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "formats", tuple(self.formats))

    def options(self) -> dict:
        """The export's options as the ledger keeps them."""
        return {"account_id": self.account_id, "categories": list(self.categories), "formats": list(self.formats),
                "expires_in_hours": self.expires_in_hours, "on_invalid": self.on_invalid, "since": self.since,
                "until": self.until, "subject_email": self.subject_email}

    def to_xcom(self) -> dict:
        value = asdict(self)
        value["subject"] = value.pop("subject_email") is not None
        return value


@dataclass(frozen=True)
class Snapshot(_Record):
    """Where the export goes and what one consistent read of the source found.

    `pieces` is, per category, the rows of each piece; `references` the mapping's references per
    category as the snapshot read them, so every piece is checked by the mapping it was read with.
    """

    bucket: str
    snapshot_at: str
    region: str = ""
    source_counts: dict[str, int] = field(default_factory=dict)
    pieces: dict[str, list[int]] = field(default_factory=dict)
    references: dict[str, list[dict]] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard(_Record):
    """A run of a category's pieces that one task exports."""

    category: str
    first_piece: int
    stop_piece: int
    of_pieces: int

    @property
    def label(self) -> str:
        """How logs and the Airflow UI name the shard; `of_pieces` is 0 while the category is still being read."""
        of = f" of {self.of_pieces}" if self.of_pieces else ""
        if self.stop_piece - self.first_piece == 1:
            return f"{self.category} piece {self.stop_piece}{of}"
        return f"{self.category} pieces {self.first_piece + 1}-{self.stop_piece}{of}"


@dataclass(frozen=True)
class PieceResult(_Record):
    """One piece exported: its rows, and the deflated piece it wrote of each text file (kind -> deflated piece)."""

    piece: int
    rows: int
    exported: int
    quarantined: int
    files: dict[str, DeflatedPiece]
    errors: DeflatedPiece | None = None

    def to_xcom(self) -> dict:
        return {"piece": self.piece, "rows": self.rows, "exported": self.exported, "quarantined": self.quarantined,
                "files": {kind: s.to_dict() for kind, s in self.files.items()},
                "errors": self.errors.to_dict() if self.errors else None}

    @classmethod
    def from_xcom(cls, value: dict) -> PieceResult:
        return cls(value["piece"], value["rows"], value["exported"], value["quarantined"],
                   {kind: DeflatedPiece(**s) for kind, s in value["files"].items()},
                   DeflatedPiece(**value["errors"]) if value.get("errors") else None)


@dataclass(frozen=True)
class ShardResult(_Record):
    """A shard's pieces exported, in order. `sha256` (kind -> digest) only from a shard that wrote the whole
    category in order, which could hash each file on the way."""

    category: str
    pieces: tuple[PieceResult, ...]
    sha256: dict[str, str] = field(default_factory=dict)

    def to_xcom(self) -> dict:
        return {"category": self.category, "pieces": [p.to_xcom() for p in self.pieces], "sha256": dict(self.sha256)}

    @classmethod
    def from_xcom(cls, value: dict) -> ShardResult:
        return cls(value["category"], tuple(PieceResult.from_xcom(p) for p in value["pieces"]),
                   dict(value.get("sha256") or {}))


@dataclass(frozen=True)
class CategoryResult:
    """Every piece of a category, exported, in order: what packaging writes the category's files from."""

    category: str
    source_count: int
    exported: int
    quarantined: int
    pieces: tuple[PieceResult, ...]
    sha256: dict[str, str]


@dataclass(frozen=True)
class Summary(_Record):
    """The published archive: what the ledger records and the requesters are told (never the link)."""

    export_id: str
    account_id: str
    region: str
    bucket: str
    key: str
    bytes: int
    sha256: str
    snapshot_at: str
    counts: dict[str, dict[str, int]]
