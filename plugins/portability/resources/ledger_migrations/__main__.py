"""Alembic's command line on the request ledger, with no alembic.ini: `python -m portability.resources.ledger_migrations
COMMAND`, e.g. `current` (the ledger's revision), `history`, `heads`, `upgrade head`, `upgrade head --sql`
(the DDL, without touching the database), `revision -m "why"` (a new revision file in versions/; then set
`ledger.SCHEMA_HEAD` to its id). It reaches the ledger through Airflow connection `portability_state`, as
`ledger.connect()` does, and upgrades under the same lock.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from alembic.config import CommandLine

    from portability.resources import ledger

    cli = CommandLine(prog="python -m portability.resources.ledger_migrations")
    options = cli.parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cfg = ledger.alembic_config()
    cfg.cmd_opts = options
    cli.run_cmd(cfg, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
