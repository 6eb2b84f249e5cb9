"""Reading the source: one consistent, read-only snapshot of an account, streamed as Arrow batches.

A psycopg connection opens the snapshot (REPEATABLE READ, READ ONLY) and exports it with
`pg_export_snapshot()`. Each category is then read by its own ADBC PostgreSQL connection that
joins that snapshot, so several readers run in parallel and all see the same instant. ADBC
streams binary COPY straight into Arrow batches: no Python object per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from portability.records.schemas import Column, arrow_schema
from portability.resources import config
from portability.resources.mapping import PARAMETERS, CategoryQuery, MappingError

# PostgreSQL types whose text PostgreSQL itself guarantees to be valid JSON.
JSON_TYPES = ("json", "jsonb")
# Where each connection keeps a data subject's address for the queries to read (`statement_as_run`).
SUBJECT_SETTING = "portability.subject_email"
BATCH_BYTES = 2 * 1024 * 1024  # bigger batches gain little speed, and every reader and thread holding one costs memory


def largest_step(plan: dict, loops: float = 1, processes: int = 1) -> float:
    """The most rows any node of an EXPLAIN (FORMAT JSON) plan expects in all.

    EXPLAIN gives a nested loop's inner side per outer row, and a parallel node's rows per process.
    Under a Gather, a nested loop's outer rows are one process's: its inner side runs for the outer
    rows of every process, and is then complete on each run, so below it nothing is per process.
    """
    if plan.get("Node Type") in ("Gather", "Gather Merge"):
        processes = plan.get("Workers Planned", 0) + 1  # the leader takes part too
    rows = plan["Plan Rows"] * loops * (processes if plan.get("Parallel Aware") else 1)
    children = plan.get("Plans", [])
    if plan.get("Node Type") == "Nested Loop" and len(children) == 2:
        outer, inner = children
        steps = [largest_step(outer, loops, processes), largest_step(inner, loops * outer["Plan Rows"] * processes)]
    else:
        steps = [largest_step(child, loops, processes) for child in children]
    return float(max([rows, *steps]))


class SourceSnapshot:
    """A REPEATABLE READ, READ ONLY transaction: every query, on any joined connection, sees the same instant.

    Every query of the export runs with the same parameters (`mapping.PARAMETERS`). A data subject's
    address is never written into a statement's text, where a server log or an error message would
    carry it: each connection holds it in a setting, which the queries read in its place.
    """

    def __init__(self, connection, conninfo: str, parameters: dict):
        self._conn = connection
        self._conninfo = conninfo
        self._subject_email = parameters.get("subject_email")
        self._parameters = {name: parameters.get(name) for name in PARAMETERS if name != "subject_email"}
        with connection.cursor() as cursor:
            # The first statement fixes the snapshot; now() is the transaction's start instant.
            cursor.execute("SELECT now(), pg_export_snapshot()")
            self.snapshot_at, self._snapshot_id = cursor.fetchone()
            if self._subject_email is not None:  # a bound parameter: not in the statement's text
                cursor.execute("SELECT set_config(%s, %s, true)", (SUBJECT_SETTING, self._subject_email))

    def estimated_rows(self, mapping: CategoryQuery) -> float:
        """The planner's estimate of a category's rows (no rows are read): to start the big ones first, and to
        share out the archive's part numbers.

        The largest count expected at any step of the plan, not only its output's: joins on correlated
        keys (list_members to lists and contacts, each on id and account_id) are estimated far too small
        (the planner takes the keys as independent), while the scans feeding them are right. Too large an
        estimate only gives a file more part numbers than it needs; too small a one stops the export.
        """
        with self._conn.cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement_as_run(mapping.ordered()), self._parameters)
            return largest_step(cursor.fetchone()[0][0]["Plan"])

    def owned_rows(self, mapping: CategoryQuery) -> int:
        """The rows the account owns in the category's source table (the mapping's `count`), in this snapshot.

        Counted apart from the category's query, so that a query that drops rows (an inner join) cannot
        hide them: this is the manifest's source count.
        """
        with self._conn.cursor() as cursor:
            cursor.execute(statement_as_run(mapping.count), self._parameters)
            row = cursor.fetchone()
        if row is None or len(row) != 1 or isinstance(row[0], bool) or not isinstance(row[0], int):
            raise MappingError(f"the count of {mapping.category!r} in the mapping must return one number "
                               "(SELECT count(*) FROM <table> WHERE account_id = %(account_id)s)")
        return row[0]

    def explain(self, mapping: CategoryQuery) -> str:
        """EXPLAIN of the category's ordered query with these parameters, as text (the subject's lookups use
        indexes, never a scan: the benchmark and the tests show it)."""
        with self._conn.cursor() as cursor:
            cursor.execute("EXPLAIN " + statement_as_run(mapping.ordered()), self._parameters)
            return "\n".join(row[0] for row in cursor.fetchall())

    def _render(self, mapping: CategoryQuery) -> str:
        """The ordered query with its parameters as quoted literals: ADBC streams COPY only without parameters."""
        import psycopg

        return psycopg.ClientCursor(self._conn).mogrify(statement_as_run(mapping.ordered()), self._parameters)

    @contextmanager
    def reader(self, mapping: CategoryQuery, columns: list[Column]):
        """The category's rows in order as Arrow batches shaped by its record schema (`.schema`, iterable)."""
        # The driver manager's own API: its DB-API layer would also import pandas, memory every task would pay.
        import adbc_driver_manager as adbc
        import adbc_driver_postgresql
        import pyarrow as pa

        query = self._render(mapping)
        with (adbc_driver_postgresql.connect(self._conninfo) as database, adbc.AdbcConnection(database) as conn):
            conn.set_autocommit(False)  # the driver opens a transaction, which then joins the snapshot
            with adbc.AdbcStatement(conn) as statement:
                # Smaller batches than the driver's 16 MB keep every later step's working set small.
                statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
                for sql in ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                            f"SET TRANSACTION SNAPSHOT '{self._snapshot_id}'"):
                    statement.set_sql_query(sql)
                    statement.execute_update()
                if self._subject_email is not None:
                    with adbc.AdbcStatement(conn) as setting:  # its own statement: the binding stays with it
                        _bind_subject(setting, self._subject_email)
                statement.set_sql_query(query)
                stream, _ = statement.execute_query()
                # The handle implements the Arrow PyCapsule stream protocol: the reader takes the
                # stream over and pulls batches from the driver one at a time.
                with pa.RecordBatchReader.from_stream(stream) as batches:
                    yield _Shaped(batches, mapping, columns)
            conn.rollback()


class _Shaped:
    """Source batches cast to the staged Arrow schema, after checking the columns match the schema."""

    def __init__(self, batches, mapping: CategoryQuery, columns: list[Column]):
        import pyarrow as pa

        source = batches.schema
        _check_columns(mapping, source.names, columns)
        source_json = frozenset(
            f.name for f in source
            if isinstance(f.type, pa.JsonType) or (f.metadata or {}).get(b"POSTGRESQL:type", b"").decode() in JSON_TYPES
        )
        self.schema = arrow_schema(columns, source_json)
        self._batches = batches
        self._names = [c.name for c in columns]

    def __iter__(self) -> Iterator:
        import pyarrow as pa

        for batch in self._batches:
            arrays = []
            for name, field in zip(self._names, self.schema, strict=True):
                array = batch.column(name)
                if isinstance(field.type, pa.JsonType) and not isinstance(array.type, pa.JsonType):
                    array = pa.ExtensionArray.from_storage(field.type, array.cast(pa.string()))
                elif array.type != field.type:
                    try:
                        array = array.cast(field.type)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        raise MappingError(
                            f"column {name!r} of the source has type {array.type}, which does not convert to the "
                            f"record schema's {field.type}: cast it in the mapping query ({exc})"
                        ) from None
                arrays.append(array)
            yield pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def statement_as_run(query: str) -> str:
    """A mapping query as it is run: the subject's address read from the connection's setting, not written in."""
    return query.replace("%(subject_email)s", f"current_setting('{SUBJECT_SETTING}')")


def _bind_subject(statement, subject_email: str) -> None:
    """Set the subject's address on an ADBC connection's transaction as a bound parameter."""
    import pyarrow as pa

    statement.set_sql_query("SELECT set_config($1, $2, true)")
    values = pa.record_batch([pa.array([SUBJECT_SETTING]), pa.array([subject_email])], names=["name", "value"])
    schema, array = values.__arrow_c_array__()
    statement.bind(array, schema)
    statement.execute_update()


def _check_columns(mapping: CategoryQuery, returned: list[str], columns: list[Column]) -> None:
    """The query must return exactly the schema's columns, so no unlisted column (a secret) can leak."""
    expected = [c.name for c in columns]
    if sorted(returned) != sorted(expected) or len(set(returned)) != len(returned):
        extra = sorted(set(returned) - set(expected))
        missing = sorted(set(expected) - set(returned))
        raise MappingError(
            f"the mapping query of {mapping.category!r} returns columns that differ from its record schema "
            f"(unexpected: {extra or 'none'}; missing: {missing or 'none'}): fix the mapping's SELECT list"
        )


@contextmanager
def snapshot(conninfo: str, parameters: dict) -> Iterator[SourceSnapshot]:
    """Open one read-only snapshot of the source database, shareable with parallel readers; every query runs with
    `parameters` (`mapping.PARAMETERS`: the account, the time bounds, the data subject)."""
    import psycopg

    with config.connect_postgres(config.SOURCE_CONN_ID, conninfo, application_name="portability-export") as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            yield SourceSnapshot(conn, conninfo, parameters)
