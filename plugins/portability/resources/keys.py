"""Every object key the pipeline writes, in one place.

    exports/<export_id>/<token>/<archive name>.zip    the archive (the token: only holders of the key secret
    exports/<export_id>/<token>/summary.json          can derive it) and its summary, kept for the retention
    staging/<export_id>/snapshot/<category>/<piece>.arrows          a piece of the snapshot (Arrow IPC, LZ4)
    staging/<export_id>/files/<category>/<piece>.<kind>.deflate     a piece's deflated piece of a file
    staging/<export_id>/files/<category>/<piece>.invalid.json       a piece's quarantined rows

Only checked names reach a key: account ids by the request schema's pattern, export ids as UUIDs.
"""

from __future__ import annotations

import hashlib
import hmac

ARCHIVES = "exports/"   # lifecycle rules expire these a day after retention
STAGING = "staging/"    # ... and these after two days


def archive_name(account_id: str, export_id: str) -> str:
    """The archive's file name without `.zip`, and its top folder: `<account_id>-<export_id>`.

    An account id may begin with '-': that name then begins with `export`, so that no command
    the requester is told to run (`sha256sum`, `unzip`, `cd`) takes the file for an option.
    """
    return f"{'export' if account_id.startswith('-') else ''}{account_id}-{export_id}"


def key_token(key_secret: bytes, export_id: str) -> str:
    """The unguessable part of an archive's key: only holders of the key secret can derive it."""
    return hmac.new(key_secret, export_id.encode(), hashlib.sha256).hexdigest()[:32]


def archive_prefix(export_id: str) -> str:
    """Everything kept of a published export: its archive and summary."""
    return f"{ARCHIVES}{export_id}/"


def archive(export_id: str, account_id: str, key_secret: bytes) -> str:
    return f"{archive_prefix(export_id)}{key_token(key_secret, export_id)}/{archive_name(account_id, export_id)}.zip"


def summary(archive_key: str) -> str:
    """The summary beside an archive."""
    return archive_key.rsplit("/", 1)[0] + "/summary.json"


def staging_prefix(export_id: str) -> str:
    """Everything an export stages on its way (personal data: deleted after the run, whatever its outcome)."""
    return f"{STAGING}{export_id}/"


def snapshot_piece(export_id: str, category: str, piece: int) -> str:
    return f"{staging_prefix(export_id)}snapshot/{category}/{piece:05d}.arrows"


def deflated_piece(export_id: str, category: str, piece: int, kind: str) -> str:
    """A piece of one output file: kind is a text format or 'errors'."""
    return f"{staging_prefix(export_id)}files/{category}/{piece:05d}.{kind}.deflate"


def invalid_rows(export_id: str, category: str, piece: int) -> str:
    return f"{staging_prefix(export_id)}files/{category}/{piece:05d}.invalid.json"
