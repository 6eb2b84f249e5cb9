"""Reading the source: one consistent, read-only snapshot of an account, streamed as Arrow batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from portability.mapping import CategoryQuery, MappingError
from portability.schemas import Column, arrow_schema

BATCH_ROWS = 10_000


class SourceSnapshot:
    """A REPEATABLE READ, READ ONLY transaction: every query sees the same instant."""

    def __init__(self, connection):
        self._conn = connection
        with connection.cursor() as cursor:
            # The first statement fixes the snapshot; now() is the transaction's start instant.
            cursor.execute("SELECT now()")
            self.snapshot_at: datetime = cursor.fetchone()[0]

    def count(self, mapping: CategoryQuery, account_id: str) -> int:
        with self._conn.cursor() as cursor:
            cursor.execute(mapping.counted(), {"account_id": account_id})
            return cursor.fetchone()[0]

    def batches(self, mapping: CategoryQuery, columns: list[Column], account_id: str,
                batch_rows: int = BATCH_ROWS) -> Iterator:
        """The category's rows in order, as Arrow record batches shaped by its record schema."""
        import pyarrow as pa

        schema = arrow_schema(columns)
        # A server-side cursor streams the rows instead of loading the result into memory.
        with self._conn.cursor(name=f"export_{mapping.category}") as cursor:
            cursor.itersize = batch_rows
            cursor.execute(mapping.ordered(), {"account_id": account_id})
            rows = cursor.fetchmany(batch_rows)
            positions = _column_positions(mapping, [d.name for d in cursor.description], columns)
            while rows:
                arrays = [
                    pa.array([row[i] for row in rows], type=field.type)
                    for i, field in zip(positions, schema, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
                rows = cursor.fetchmany(batch_rows)


def _column_positions(mapping: CategoryQuery, returned: list[str], columns: list[Column]) -> list[int]:
    """Where each schema column is in the query's result.

    The query must return exactly the schema's columns, so no unlisted column (a secret) can leak.
    """
    expected = [c.name for c in columns]
    if sorted(returned) != sorted(expected) or len(set(returned)) != len(returned):
        extra = sorted(set(returned) - set(expected))
        missing = sorted(set(expected) - set(returned))
        raise MappingError(
            f"the mapping query of {mapping.category!r} returns columns that differ from its record schema "
            f"(unexpected: {extra or 'none'}; missing: {missing or 'none'}): fix the mapping's SELECT list"
        )
    return [returned.index(name) for name in expected]


@contextmanager
def snapshot(conninfo: str) -> Iterator[SourceSnapshot]:
    """Open one read-only snapshot of the source database."""
    import psycopg
    from psycopg.types.string import TextLoader

    with psycopg.connect(conninfo, application_name="portability-export") as conn:
        # JSON columns arrive as text so that their exact source bytes reach the archive.
        for json_type in ("json", "jsonb"):
            conn.adapters.register_loader(json_type, TextLoader)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            yield SourceSnapshot(conn)
