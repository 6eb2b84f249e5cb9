"""Alembic's environment for the request ledger: the ledger's own database, its own version table.

`ledger.upgrade()` passes a SQLAlchemy connection in `config.attributes["connection"]`, already in a
transaction that holds the ledger's schema lock. Without one (alembic's own command line, say), this
connects through Airflow connection `portability_state` itself and takes the same lock.
"""

from __future__ import annotations

from alembic import context

from portability.resources.ledger import SCHEMA_LOCK_SQL, VERSION_TABLE

config = context.config


def run_offline() -> None:
    """`--sql`: the DDL as a script, for a DBA to read or run."""
    context.configure(dialect_name="postgresql", version_table=VERSION_TABLE, literal_binds=True,
                      transactional_ddl=True)
    with context.begin_transaction():
        context.execute(SCHEMA_LOCK_SQL)
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from portability.resources.ledger import ledger_engine

    engine = ledger_engine(config.attributes.get("conninfo"))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE, transactional_ddl=True)
    with context.begin_transaction():
        # Taken again when the caller holds it already (it nests within a session); released at commit.
        connection.exec_driver_sql(SCHEMA_LOCK_SQL)
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
