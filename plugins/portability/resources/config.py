"""Configuration shared by the DAGs and the command: Airflow connections and a few variables.

Connections are resolved through Airflow's own lookup (environment variables
`AIRFLOW_CONN_*`, secrets backends, the metadata database), so the command and the DAGs
read exactly the same configuration.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

SOURCE_CONN_ID = "portability_source"
STORAGE_CONN_ID = "portability_s3"
STATE_CONN_ID = "portability_state"
SMTP_CONN_ID = "smtp_default"  # Airflow's own SMTP connection
WEBHOOK_CONN_ID = "portability_webhook"  # its password signs webhook bodies
REGIONS = ("us", "eu")


class ConfigurationError(RuntimeError):
    """The deployment is misconfigured; the message says what to set."""


class DatabaseUnavailable(RuntimeError):
    """A PostgreSQL server refused or dropped the connection; worth a retry."""


def connect_postgres(conn_id: str, conninfo: str, **options):
    """psycopg.connect, whose refusal names the Airflow connection to check: the driver's first line
    (libpq never shows the password), never the conninfo."""
    import psycopg

    try:
        return psycopg.connect(conninfo, **options)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot reach the database of Airflow connection {conn_id!r}: {reason}; check the connection "
            f"(AIRFLOW_CONN_{conn_id.upper()}) and that the server is up") from None


def describe_database_failure(exc: BaseException) -> str:
    """A database error met mid-way, as one line naming the connections to check (libpq never shows a password)."""
    text = str(exc).strip()
    reason = text.splitlines()[0][:300] if text else type(exc).__name__
    return (f"a database failed mid-way ({reason}): check Airflow connections {SOURCE_CONN_ID!r} (the ESP's "
            f"database) and {STATE_CONN_ID!r} (the request ledger) and that their servers are up, then rerun")


@dataclass(frozen=True)
class SourceSettings:
    conninfo: str = field(repr=False)  # may carry a password


@dataclass(frozen=True)
class StorageSettings:
    """What is ours about the object storage: the buckets and the key secret. Everything about reaching it
    (endpoint, region, credentials, role, profile, botocore config) is the connection's, read by Airflow's
    S3Hook (`storage.make_client`)."""

    key_secret: bytes = field(default=b"", repr=False)  # HMAC key for unguessable object keys
    buckets: dict[str, str] = field(default_factory=dict)
    connection: Any = field(default=None, repr=False, compare=False)  # the Airflow connection portability_s3

    def bucket_for(self, region: str) -> str:
        """The bucket that holds a region's archives; never falls back to another region."""
        try:
            return self.buckets[region]
        except KeyError:
            raise ConfigurationError(
                f"no bucket is configured for region {region!r}: add it to PORTABILITY_BUCKETS, "
                f'e.g. {{"{region}": "exports-{region}"}}'
            ) from None


def connection(conn_id: str):
    """An Airflow connection, looked up exactly as Airflow looks it up where this code runs.

    In a task, through the Task SDK (the worker's secrets backends, then the API server). Anywhere
    else (the `portability` command), along Airflow's own search path: environment variables
    (`AIRFLOW_CONN_*`), the configured secrets backend, then the metadata database.
    """
    from airflow.exceptions import AirflowNotFoundException

    try:
        if _in_task():
            from airflow.sdk import Connection

            return Connection.get(conn_id)
        return _connection_outside_tasks(conn_id)
    except AirflowNotFoundException:
        raise ConfigurationError(
            f"Airflow connection {conn_id!r} is not defined (looked in the environment, the secrets backend and "
            f"Airflow's metadata database): set AIRFLOW_CONN_{conn_id.upper()} or add it with 'airflow connections "
            "add' (see README, 'Pointing at real stores'); to try the command on the development stores, "
            "give it --dev-stores"
        ) from None


def _in_task() -> bool:
    """Whether this runs inside an Airflow task (the task runner talks to its supervisor)."""
    import sys

    return getattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS", None) is not None


def _connection_outside_tasks(conn_id: str):
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import Connection

    try:  # the environment and the secrets backend, as the Task SDK reads them (cheap: no ORM)
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        pass
    from airflow.models.connection import Connection as StoredConnection  # loads the ORM (slow): only when needed

    return StoredConnection.get_connection_from_secrets(conn_id)  # the same path again, then the metadata db


def source_settings() -> SourceSettings:
    """The ESP's database, read only: connection portability_source."""
    return _postgres_settings(SOURCE_CONN_ID)


def state_settings() -> SourceSettings:
    """The pipeline's own database (the request ledger, export schedules): connection portability_state."""
    return _postgres_settings(STATE_CONN_ID)


def _postgres_settings(conn_id: str) -> SourceSettings:
    """A libpq conninfo (for psycopg and the ADBC driver) with what Airflow's PostgresHook would connect with."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    params = postgres_connect_kwargs(connection(conn_id))
    for name, default in (("host", "localhost"), ("port", 5432), ("dbname", "postgres")):
        if params.get(name) in (None, ""):
            params[name] = default
    try:
        return SourceSettings(make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")}))
    except psycopg.ProgrammingError as exc:  # libpq names the option, never a value
        raise ConfigurationError(f"Airflow connection {conn_id!r} has an extra libpq does not take: "
                                 f"{str(exc).strip().splitlines()[0]}") from None


def postgres_connect_kwargs(conn) -> dict:
    """The keyword arguments Airflow's PostgresHook.get_conn connects with, from the hook's public parts: host,
    port, dbname, user and password, then every extra except those the hook keeps for itself
    (`ignored_extra_options`: `iam`, `redshift`, `aws_conn_id`, `cursor`, `sqlalchemy_*`...); with extra `iam`,
    user, password (a token) and port from its `get_iam_token`."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    class Hook(PostgresHook):
        def get_connection(self, conn_id):  # the connection already looked up
            return conn

    hook = Hook(postgres_conn_id=conn.conn_id)
    login, password, port = conn.login, conn.password, conn.port
    if conn.extra_dejson.get("iam", False):
        try:
            login, password, port = hook.get_iam_token(conn)
        except ValueError as exc:  # an IAM connection without a host, say: no secret in these
            raise ConfigurationError(f"Airflow connection {conn.conn_id!r}: {exc}") from None
    params = {"host": conn.host, "user": login, "password": password, "dbname": conn.schema, "port": port}
    params.update({name: value for name, value in conn.extra_dejson.items()
                   if name not in hook.ignored_extra_options})
    return params


def buckets() -> dict[str, str]:
    raw = os.environ.get("PORTABILITY_BUCKETS", "")
    if not raw:
        raise ConfigurationError(
            'PORTABILITY_BUCKETS is not set: give the bucket of each region as JSON, '
            'e.g. {"us": "exports-us", "eu": "exports-eu"}'
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"PORTABILITY_BUCKETS is not valid JSON ({exc.msg}); expected an object") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigurationError('PORTABILITY_BUCKETS must be a JSON object of region to bucket name')
    unknown = set(value) - set(REGIONS)
    if unknown:
        raise ConfigurationError(f"PORTABILITY_BUCKETS names unknown regions {sorted(unknown)}; use {REGIONS}")
    return value


def storage_settings() -> StorageSettings:
    conn = connection(STORAGE_CONN_ID)
    extra = conn.extra_dejson
    key_secret = extra.get("key_secret") or conn.password
    if not key_secret:
        raise ConfigurationError(
            f"connection {STORAGE_CONN_ID!r} has neither a secret access key nor extra 'key_secret': "
            "set 'key_secret' in its extra (any long random string) so archive keys cannot be guessed"
        )
    return StorageSettings(key_secret=key_secret.encode(), buckets=buckets(), connection=conn)


def schemas_dir() -> Path:
    """Where the JSON Schemas live: PORTABILITY_SCHEMAS_DIR, else the checkout's `schemas/`."""
    configured = os.environ.get("PORTABILITY_SCHEMAS_DIR")
    path = Path(configured) if configured else Path(__file__).resolve().parents[3] / "schemas"
    if not (path / "export_request.schema.json").is_file():
        raise ConfigurationError(
            f"JSON Schemas not found in {path}: set PORTABILITY_SCHEMAS_DIR to the project's schemas/ folder"
        )
    return path


def mapping_path() -> Path:
    """The source mapping: PORTABILITY_MAPPING, else the reference mapping shipped with the package."""
    configured = os.environ.get("PORTABILITY_MAPPING")
    return Path(configured) if configured else Path(__file__).with_name("mappings") / "reference.toml"


def organization_name() -> str:
    """Who exports the data, as bag-info.txt names it."""
    return os.environ.get("PORTABILITY_ORGANIZATION", "Example ESP")


def _positive_int(name: str, default: int, unit: str = "rows") -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConfigurationError(f"{name} must be a positive whole number of {unit}, not {value!r}")
    return int(value)


def piece_rows() -> int:
    """Rows per piece: the unit of staging and of compression. Changing it changes the archive's bytes."""
    return _positive_int("PORTABILITY_PIECE_ROWS", 250_000)


def shard_rows() -> int:
    """Rows per shard: one mapped task each. Only spreads the work; the archive is the same for any value."""
    return _positive_int("PORTABILITY_SHARD_ROWS", 2_000_000)


def export_lease() -> timedelta:
    """How long an export run in one process stays 'alive' without renewing its lease (PORTABILITY_LEASE_SECONDS,
    default 60; renewed every quarter of it): after that, a request for the account no longer waits on it."""
    return timedelta(seconds=_positive_int("PORTABILITY_LEASE_SECONDS", 60, "seconds"))


def retention() -> timedelta:
    """How long a published archive is kept (PORTABILITY_RETENTION_DAYS, default 30); links never outlive it."""
    return timedelta(days=_positive_int("PORTABILITY_RETENTION_DAYS", 30, "days"))


def sender_email() -> str:
    """The From address of notifications."""
    return os.environ.get("PORTABILITY_SENDER_EMAIL", "exports@example.com")


def privacy_team_email() -> str | None:
    """Where deadline alerts go (PORTABILITY_PRIVACY_EMAIL); none set means alerts only fail the watch task."""
    return os.environ.get("PORTABILITY_PRIVACY_EMAIL") or None
