"""The README's first command: from nothing to a verified archive behind a link, through Airflow.

Starts the embedded stores, seeds a demo account, runs the account_export DAG with
`airflow dags test`, mints the link, downloads the archive through it with a plain HTTP
client, verifies it, and prints the link and what the archive holds.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
from datetime import UTC, datetime

from portability_dev import local

DAG_ID = "account_export"


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def run(account: str = "demo-00001") -> int:
    started = time.monotonic()
    state = local.state_dir()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    _step(f"starting the embedded PostgreSQL and SeaweedFS S3 server under {state}")
    env = local.start_stores(state)
    local.apply(env)

    _seed_demo_accounts(account)

    _step("preparing Airflow's metadata database")
    _airflow(["db", "migrate"], env, logs / "airflow-db-migrate.log")

    logical_date = datetime.now(UTC).replace(microsecond=0)
    conf = {"account_id": account, "formats": ["csv", "jsonl", "parquet"]}
    _step(f"running the {DAG_ID} DAG for {account} (airflow dags test; log in {logs / 'dags-test.log'})")
    _airflow(["dags", "test", DAG_ID, logical_date.isoformat(), "-c", json.dumps(conf)], env,
             logs / "dags-test.log")
    run_id, dag_state = _find_run(env, logical_date, logs / "list-runs.log")
    if dag_state != "success":
        print(f"the DAG run {run_id} ended {dag_state}; see {logs / 'dags-test.log'}", file=sys.stderr)
        return 1

    from portability import service
    from portability.archive.verify import verify
    from portability.service.request import export_id_for_run

    export_id = export_id_for_run(DAG_ID, run_id)
    _step(f"minting a 72-hour link for export {export_id}")
    link = service.link(export_id, 72)

    downloads = state / "downloads"
    downloads.mkdir(exist_ok=True)
    target = downloads / link.key.rsplit("/", 1)[1]
    _step(f"downloading the archive through the link into {target}")
    with urllib.request.urlopen(link.url, timeout=120) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1024 * 1024)

    _step("verifying it: BagIt bag, checksums, record schemas, counts")
    report = verify(str(target))

    print()
    print(f"Archive of account {account}: {target.stat().st_size:,} bytes, export {export_id}")
    print(f"  snapshot at {report['snapshot_at']}, {report['records_checked']:,} records checked")
    for category, counts in report["categories"].items():
        print(f"  {category:18} {counts['exported']:>7} exported  {counts['quarantined']:>3} quarantined"
              f"  (source {counts['source_count']})")
    print(f"\nDownload link (expires {link.expires_at}):\n{link.url}\n")
    print(f"Try it: curl -fo export.zip '{link.url}'")
    print(f"Done in {time.monotonic() - started:.0f} s.")
    return 0


def _seed_demo_accounts(account: str) -> None:
    import psycopg

    from portability.resources import config
    from portability_dev.seed import SeedOptions, seed

    with psycopg.connect(config.source_settings().conninfo) as conn:
        seeded = conn.execute("SELECT to_regclass('accounts') IS NOT NULL").fetchone()[0] and conn.execute(
            "SELECT EXISTS (SELECT 1 FROM accounts WHERE id = %s)", (account,)).fetchone()[0]
        if seeded:
            _step(f"demo account {account} is already seeded")
            return
        _step("seeding demo accounts demo-00001 (US) and demo-00002 (EU)")
        seed(conn, SeedOptions(accounts=2, contacts=500, prefix="demo"))


def _airflow(args: list[str], env: dict, log_path) -> None:
    with open(log_path, "w") as log:
        result = local.airflow(args, env, stdout=log, stderr=log)
    if result.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args[:2])} failed (exit {result.returncode}); see {log_path}")


def _find_run(env: dict, logical_date: datetime, log_path) -> tuple[str, str]:
    runs = local.airflow_json(["dags", "list-runs", DAG_ID], env)
    log_path.write_text(json.dumps(runs, indent=2))
    for run in runs:
        when = run.get("logical_date")
        if when and datetime.fromisoformat(when) == logical_date:
            return run["run_id"], run["state"]
    raise SystemExit(f"the DAG run for {logical_date.isoformat()} was not found; see {log_path}")
