"""Alembic migrations of the request ledger (`portability.resources.ledger`): env.py and versions/,
run by `ledger.connect()`.

No alembic.ini: `ledger.alembic_config()` builds the configuration (script location = this folder, version
table `portability_ledger_version` in the ledger's database). A schema change is a new file in versions/,
and `ledger.SCHEMA_HEAD` names the newest revision (a test checks the two agree).
"""
