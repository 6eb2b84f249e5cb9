"""The `portability` command: the export pipeline without a scheduler, on the same library code.

    portability seed     synthetic accounts in the source database
    portability export   export one account; prints the download link
    portability request  request an export through Airflow's REST API (and wait for it)
    portability status   a request's state, deadline and outcome
    portability link     a fresh link to an archive already published
    portability cancel   withdraw a request not yet served
    portability revoke   delete a published archive now
    portability schedule export an account every N days
    portability deadlines requests near or past their legal deadline
    portability verify   check an archive (a path or a link)
    portability stores   start, stop or show the embedded PostgreSQL and S3 server
    portability demo     the README's end-to-end demo through Airflow

Configuration is Airflow's: connections portability_source, portability_s3 and
portability_state, looked up as Airflow does (environment, secrets backend, metadata
database), and PORTABILITY_BUCKETS. `--dev-stores` uses the embedded development stores
under .state/ instead, starting them if needed; nothing else ever starts them.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys

from portability.resources import config

log = logging.getLogger("portability")


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def cmd_seed(args) -> int:
    import psycopg

    SeedOptions, seed = _dev_tooling("seed").SeedOptions, _dev_tooling("seed").seed
    options = SeedOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SeedOptions)})
    with psycopg.connect(config.source_settings().conninfo) as conn:
        accounts = seed(conn, options)
    print(json.dumps({"accounts": accounts}) if args.json else "\n".join(accounts))
    return 0


_REQUESTER_FIELDS = ("requested_by", "notify_email", "webhook_url")  # the ledger's, never a DAG run's conf


def _request_conf(args) -> dict:
    conf = {"account_id": args.account}
    if args.categories:
        conf["categories"] = _csv_list(args.categories)
    if args.formats:
        conf["formats"] = _csv_list(args.formats)
    if args.expires_in_hours is not None:
        conf["expires_in_hours"] = args.expires_in_hours
    if args.on_invalid:
        conf["on_invalid"] = args.on_invalid
    for option, name in (("subject", "subject_email"), ("since", "since"), ("until", "until")):
        if getattr(args, option) is not None:
            conf[name] = getattr(args, option)
    for name in _REQUESTER_FIELDS:
        if getattr(args, name, None):
            conf[name] = getattr(args, name)
    return conf


def cmd_export(args) -> int:
    from portability import service
    from portability.console import ProgressOutput

    conf = _request_conf(args)
    with ProgressOutput("export", quiet=args.quiet) as shown:
        summary, request_id = service.export_now(
            conf, on_progress=lambda message: print(message, file=sys.stderr),
            watch=lambda report: shown.update(report.rows_done, report.rows_estimated))
        shown.finish()
    link = service.link(summary.export_id, conf.get("expires_in_hours", 72), request_id=request_id)
    if args.json:
        print(json.dumps({
            "export_id": summary.export_id, "account_id": summary.account_id, "bucket": summary.bucket,
            "key": summary.key, "bytes": summary.bytes, "sha256": summary.sha256,
            "url": link.url, "expires_at": link.expires_at, "counts": summary.counts,
        }, indent=2))
    else:
        print(link.url)
        print(f"export {summary.export_id}: {summary.bytes} bytes, sha256 {summary.sha256}, "
              f"link expires {link.expires_at}", file=sys.stderr)
    return 0


def cmd_request(args) -> int:
    """Record a request and trigger its DAG run through Airflow's REST API; with --wait, follow it to the end."""
    import time

    from portability import service
    from portability.resources.airflow_api import AirflowApi
    from portability.resources.ledger import DAG_ID

    conf = _request_conf(args)
    api = AirflowApi.from_connection()

    def run_state(dag_run_id: str) -> str | None:
        return api.run_state_or_none(DAG_ID, dag_run_id)

    submission = service.submit(conf, idempotency_key=args.idempotency_key, run_state=run_state)

    def trigger(dag_run_id: str, options: dict) -> None:
        # The run's note names the account and who asked, in the UI's run list (the conf never carries the requester).
        note = service.run_note(conf["account_id"], conf.get("requested_by") or "portability request",
                                request_id=submission.request_id, data_subject=bool(conf.get("subject_email")))
        api.trigger(DAG_ID, dag_run_id, {k: v for k, v in options.items() if k not in _REQUESTER_FIELDS}, note=note)

    if submission.needs_trigger:
        trigger(submission.dag_run_id, submission.options or conf)
    how = "joined the export under way" if submission.joined else (
        "already requested with this idempotency key" if submission.replayed else "requested")
    print(f"request {submission.request_id}: {how}; export {submission.export_id}, "
          f"DAG run {submission.dag_run_id}", file=sys.stderr)
    status = service.status(submission.request_id)
    deadline = time.monotonic() + args.timeout
    while args.wait and status["state"] in ("requested", "running") and time.monotonic() < deadline:
        time.sleep(2)
        replacement = service.replace_dead(submission.request_id, run_state)
        if replacement:  # the export it waited on died: its requesters now wait on this new one
            print(f"request {submission.request_id}: export {status['export_id']} died; now served by export "
                  f"{replacement['export_id']}, DAG run {replacement['dag_run_id']}", file=sys.stderr)
            trigger(replacement["dag_run_id"], {**replacement["options"],
                                                "expires_in_hours": conf.get("expires_in_hours", 72)})
        status = service.status(submission.request_id)
    export_id = str(status["export_id"])
    result = {"request_id": submission.request_id, "export_id": export_id,
              "dag_run_id": status["dag_run_id"], "joined": submission.joined, "replayed": submission.replayed,
              "state": status["state"], "deadline_at": status["deadline_at"].isoformat()}
    if args.wait and status["state"] in ("requested", "running"):
        print(f"portability request: still {status['state']} after {args.timeout} s; follow it with "
              f"'portability status {submission.request_id}'", file=sys.stderr)
        print(json.dumps(result) if args.json else submission.request_id)
        return 3
    if status["state"] == "failed":
        print(f"portability request: the export failed: {status['error']}", file=sys.stderr)
        print(json.dumps({**result, "error": status["error"]}) if args.json else submission.request_id)
        return 1
    if args.wait and status["state"] in ("ready", "delivered"):
        link = service.link(export_id, conf.get("expires_in_hours", 72), request_id=submission.request_id)
        result.update(url=link.url, expires_at=link.expires_at, bytes=status["bytes"], sha256=status["sha256"],
                      state="delivered")
        print(json.dumps(result, indent=2) if args.json else link.url)
        return 0
    print(json.dumps(result, indent=2) if args.json else submission.request_id)
    return 0


def cmd_status(args) -> int:
    from portability import service

    status = service.status(args.request_id)
    print(json.dumps(status, indent=2, default=str))
    return 0


def cmd_cancel(args) -> int:
    from portability import service
    from portability.resources.airflow_api import AirflowApi
    from portability.resources.ledger import DAG_ID

    result = service.cancel(args.request_id)
    stopped = False
    if result["export_cancelled"] and result["dag_run_id"]:
        stopped = AirflowApi.from_connection().stop_run(DAG_ID, result["dag_run_id"])
    print(f"request {args.request_id} cancelled; export {result['export_id']} "
          + ("cancelled" + (" and its DAG run stopped" if stopped else "") if result["export_cancelled"]
             else "goes on for the other requests that wait for it")
          + ("; the requester was told" if result.get("requester_told") else ""))
    return 0


def cmd_revoke(args) -> int:
    from portability import service

    deleted = service.revoke(args.export_id)
    print(f"export {args.export_id} revoked: archive deleted ({deleted} objects); its links no longer work")
    return 0


def cmd_deadlines(args) -> int:
    from portability import service

    rows = service.deadline_report(args.within_days)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for row in rows:
            print(f"{'OVERDUE' if row['overdue'] else 'due    '} {row['deadline_at'][:16]}  {row['state']:9} "
                  f"{row['account_id']:20} request {row['request_id']}  {row['error'] or ''}")
        print(f"{len(rows)} request(s) overdue or due within {args.within_days} days", file=sys.stderr)
    return 1 if any(row["overdue"] for row in rows) else 0


def cmd_requests(args) -> int:
    from portability import service

    rows = service.request_list(args.state, args.account)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        flag = "OVERDUE" if row["overdue"] else "due" if row["due_soon"] else ""
        what = "one person" if row["data_subject"] else "account"
        size = f"{row['bytes']} bytes" if row["bytes"] is not None else ""
        why = row["refused_reason"] or row["error"]  # a refused request has no export, so no error of one
        print(f"{row['requested_at'][:16]}  {row['state']:9} {flag:7} deadline {row['deadline_at'][:10]}  "
              f"{row['account_id'] or '(no account)':20} {what:10} by {row['requested_by'][:30]:30} "
              f"request {row['request_id']}  {size}{'  ' + why[:120] if why else ''}")
    print(f"{len(rows)} request(s)", file=sys.stderr)
    return 0


def cmd_schedule(args) -> int:
    from datetime import datetime

    from portability import service
    from portability.resources import ledger

    if args.remove:
        with ledger.connect() as conn:
            removed = ledger.remove_schedule(conn, args.account)
        print(f"schedule of {args.account} {'removed' if removed else 'not found'}")
        return 0 if removed else 2
    if args.every_days is None:
        print("portability schedule: give --every-days N (or --remove)", file=sys.stderr)
        return 2
    first_due = None
    if args.first_due:
        try:
            first_due = datetime.fromisoformat(args.first_due)
        except ValueError:
            print(f"portability schedule: --first-due {args.first_due[:40]!r} is not an ISO 8601 instant "
                  "(e.g. 2026-12-01T00:00:00+00:00)", file=sys.stderr)
            return 2
    result = service.schedule(_request_conf(args), args.every_days, first_due=first_due)
    print(f"{result['account_id']}: exported every {result['every_days']} days, next due {result['next_due_at']}")
    return 0


def cmd_link(args) -> int:
    from portability import service

    link = service.link(args.export_id, args.expires_in_hours)
    if args.json:
        print(json.dumps({"export_id": args.export_id, "url": link.url, "expires_at": link.expires_at}))
    else:
        print(link.url)
    return 0


def cmd_verify(args) -> int:
    from portability.archive.verify import verify
    from portability.console import ProgressOutput

    with ProgressOutput("verify", unit="bytes", quiet=args.quiet) as shown:
        report = verify(args.archive, on_progress=shown.update)
        shown.finish()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"OK: export {report['export_id']} of account {report['account_id']} as of {report['snapshot_at']}: "
              f"bag valid, checksums match, {report['records_checked']} records checked")
        for category, counts in report["categories"].items():
            print(f"  {category:18} source {counts['source_count']:>9}  exported {counts['exported']:>9}  "
                  f"quarantined {counts['quarantined']:>6}")
    return 0


def cmd_stores(args) -> int:
    embedded, local = _dev_tooling("embedded"), _dev_tooling("local")
    state = local.state_dir()
    if args.action == "start":
        env = local.start_stores(state)
        print(f"embedded stores running under {state}", file=sys.stderr)  # stdout is for `eval`
        if args.env:
            for key, value in env.items():
                print(f"export {key}={_shell_quote(value)}")
    elif args.action == "stop":
        embedded.stop(state / "stores")
        print("embedded stores stopped")
    else:
        endpoints = embedded.status(state / "stores")
        print("running" if endpoints else "stopped")
        return 0 if endpoints else 3
    return 0


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def cmd_demo(args) -> int:
    return _dev_tooling("demo").run(account=args.account)


def _dev_tooling(module: str):
    """A module of the development tooling (`dev/portability_dev`), which a deployment does not install."""
    import importlib

    try:
        return importlib.import_module(f"portability_dev.{module}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("portability_dev", f"portability_dev.{module}"):
            raise
        raise config.ConfigurationError(
            "the development tooling (embedded stores, seeding, the demo) is not installed here: it is for a "
            "developer's checkout (scripts/setup installs it), never a deployment") from None


def _add_seed_options(parser: argparse.ArgumentParser) -> None:
    """One option per field of SeedOptions, with its default: sizes are per account."""
    try:
        SeedOptions = _dev_tooling("seed").SeedOptions  # noqa: N806 (a class)
    except config.ConfigurationError:  # not a developer's checkout: `portability seed` says so when it runs
        parser.set_defaults(takes_any_options=True)
        return

    helps = {"accounts": "accounts to create", "prefix": "account ids are PREFIX-00001, ...",
             "seed": "another number gives other (still deterministic) data",
             "large_html_bytes": "size of the largest template HTML of each account",
             "messages_per_contact": "each account gets exactly contacts x this many messages",
             "events_per_contact": "each account gets exactly contacts x this many events"}
    for f in dataclasses.fields(SeedOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=helps.get(f.name, f"{f.name.replace('_', ' ')} per account"))


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--account", required=True)
    parser.add_argument("--categories", help="comma-separated; default all")
    parser.add_argument("--formats", help="comma-separated csv,jsonl,parquet; default csv,jsonl")
    parser.add_argument("--expires-in-hours", type=int, help="link lifetime, 1 to 168 (default 72)")
    parser.add_argument("--on-invalid", choices=["quarantine", "fail"])
    parser.add_argument("--subject", metavar="EMAIL",
                        help="only what the account holds about this one person (GDPR Art. 15 and 20)")
    parser.add_argument("--since", metavar="INSTANT", help="messages and events at or after this RFC 3339 instant")
    parser.add_argument("--until", metavar="INSTANT", help="messages and events before this RFC 3339 instant")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("--dev-stores", action="store_true",
                        help="use the embedded development PostgreSQL and S3 server under .state/ (started if "
                             "needed) instead of Airflow's connections; never on a deployment")
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="create synthetic accounts in the source database")
    _add_seed_options(seed)
    seed.add_argument("--json", action="store_true")
    seed.set_defaults(handler=cmd_seed)

    exp = sub.add_parser("export", help="export one account and print its download link")
    _add_request_options(exp)
    exp.add_argument("--json", action="store_true", help="print one JSON object instead of the link")
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress lines on stderr")
    exp.set_defaults(handler=cmd_export)

    req = sub.add_parser("request", help="request an export through Airflow's REST API (DAG account_export)")
    _add_request_options(req)
    req.add_argument("--requested-by", help="who asks (kept in the request ledger)")
    req.add_argument("--notify-email", help="email the link here when the archive is ready")
    req.add_argument("--webhook-url", help="POST a signed notice here when the archive is ready")
    req.add_argument("--idempotency-key", help="the same key again gives the same request, never a second export")
    req.add_argument("--wait", action="store_true", help="wait for the export and print its link")
    req.add_argument("--timeout", type=int, default=3600, help="seconds --wait waits (default 3600)")
    req.add_argument("--json", action="store_true")
    req.set_defaults(handler=cmd_request)

    status = sub.add_parser("status", help="a request's state, deadline, archive and error (from the ledger)")
    status.add_argument("request_id")
    status.set_defaults(handler=cmd_status)

    cancel = sub.add_parser("cancel", help="withdraw a request not yet served (and stop its export)")
    cancel.add_argument("request_id")
    cancel.set_defaults(handler=cmd_cancel)

    revoke = sub.add_parser("revoke", help="delete a published archive now; its links stop working")
    revoke.add_argument("export_id")
    revoke.set_defaults(handler=cmd_revoke)

    listing = sub.add_parser("requests", help="every request in the ledger, newest first, with its state")
    listing.add_argument("--state", help="only requests in this state (requested, running, ready, delivered, "
                                         "expired, failed, cancelled)")
    listing.add_argument("--account", help="only this account's requests")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_requests)

    deadlines = sub.add_parser("deadlines", help="requests overdue or near their legal deadline (exit 1 if overdue)")
    deadlines.add_argument("--within-days", type=int, default=7)
    deadlines.add_argument("--json", action="store_true")
    deadlines.set_defaults(handler=cmd_deadlines)

    sched = sub.add_parser("schedule", help="export an account every N days (DAG scheduled_exports)")
    _add_request_options(sched)
    sched.add_argument("--every-days", type=int, help="1 to 366, e.g. 60 for every two months")
    sched.add_argument("--notify-email", help="email each export's link here")
    sched.add_argument("--first-due", help="ISO 8601 instant of the first export (default: now)")
    sched.add_argument("--remove", action="store_true", help="stop exporting this account on a schedule")
    sched.set_defaults(handler=cmd_schedule)

    link = sub.add_parser("link", help="a fresh download link for a published export")
    link.add_argument("export_id", help="the export id, or the id of a request it serves")
    link.add_argument("--expires-in-hours", type=int, default=72)
    link.add_argument("--json", action="store_true")
    link.set_defaults(handler=cmd_link)

    ver = sub.add_parser("verify", help="check an archive: bag, checksums, schemas, counts")
    ver.add_argument("archive", metavar="PATH_OR_URL")
    ver.add_argument("--json", action="store_true")
    ver.add_argument("-q", "--quiet", action="store_true", help="no progress bar or progress lines on stderr")
    ver.set_defaults(handler=cmd_verify)

    stores = sub.add_parser("stores", help="the embedded PostgreSQL and S3 server under .state/")
    stores.add_argument("action", choices=["start", "stop", "status"])
    stores.add_argument("--env", action="store_true", help="print shell exports that point at them")
    stores.set_defaults(handler=cmd_stores)

    demo = sub.add_parser("demo", help="seed, export through Airflow, download through the link, verify")
    demo.add_argument("--account", default="demo-00001")
    demo.set_defaults(handler=cmd_demo)
    return parser


# Options whose value may begin with '-' (an account id may, an email address too): argparse would take "-x1"
# for an option.
_VALUE_OPTIONS = ("--account", "--prefix", "--requested-by", "--idempotency-key", "--subject")


def _join_option_values(argv: list[str]) -> list[str]:
    """`--account -x1` as `--account=-x1`, so that every valid account id is accepted as typed; `--dev-stores`
    is taken wherever it is typed (`portability export --dev-stores …` too)."""
    joined: list[str] = ["--dev-stores"] if "--dev-stores" in argv else []
    args = iter(arg for arg in argv if arg != "--dev-stores")
    for arg in args:
        if arg in _VALUE_OPTIONS:
            value = next(args, None)
            joined.append(arg if value is None else f"{arg}={value}")
        else:
            joined.append(arg)
    return joined


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(_join_option_values(sys.argv[1:] if argv is None else list(argv)))
    if unknown and not getattr(args, "takes_any_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.dev_stores:
        # Asked for explicitly: the development stores replace whatever this shell has configured,
        # before Airflow is imported and reads its settings.
        try:
            local = _dev_tooling("local")
        except config.ConfigurationError as exc:
            print(f"portability: --dev-stores: {exc}", file=sys.stderr)
            return 2
        local.apply(local.start_stores())
    # numpy's OpenBLAS otherwise starts a thread per core that spins for work this command never gives it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Importing Airflow makes a great many objects, and every full collection on the way walks
    # them all again: collect nothing while importing, then keep what was imported out of later collections.
    gc.disable()
    try:
        # Importing Airflow sends logging to stdout; stdout is for the command's output (a link, JSON).
        import airflow.sdk  # noqa: F401
        from airflow.sdk.log import configure_logging

        # Airflow's structured logs (its hooks' INFO lines, e.g. where S3Hook found credentials) go to stderr too.
        configure_logging(output=sys.stderr, log_level="INFO" if args.verbose else "WARNING")
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # Looking up a connection in the metadata database loads Airflow's models, which warn that values
        # would be stored unencrypted without a Fernet key: this command stores nothing there.
        logging.getLogger("airflow.models.crypto").setLevel(logging.ERROR)
    finally:
        gc.freeze()
        gc.enable()

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"portability {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (every failure ends in one message and status 2, never a traceback)
        print(f"portability {args.command}: {failure_message(exc)}", file=sys.stderr)
        if args.verbose:
            log.error("traceback of the failure above", exc_info=exc)
        return 2


def failure_message(exc: BaseException) -> str:
    """One line that names what went wrong and what to check; never a secret or a link."""
    from portability.archive.verify import VerificationError
    from portability.pipeline.export import ExportError
    from portability.records.validation import InvalidRecords
    from portability.resources.airflow_api import AirflowApiError
    from portability.resources.ledger import LedgerError
    from portability.resources.mapping import MappingError
    from portability.service.request import RequestError

    if isinstance(exc, RequestError | ExportError | VerificationError | InvalidRecords | MappingError | LedgerError
                  | AirflowApiError | config.ConfigurationError | config.DatabaseUnavailable):
        return str(exc)
    from portability.resources import storage

    if isinstance(exc, storage.StorageError) or type(exc).__module__.startswith(("botocore", "boto3", "s3transfer")):
        return storage.explain(exc)
    if type(exc).__module__.startswith(("psycopg", "adbc_driver")):
        return config.describe_database_failure(exc)
    return (f"{type(exc).__name__}: {_first_line(exc)} (an unexpected failure: rerun with --verbose for the traceback, "
            "and report it)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


if __name__ == "__main__":
    sys.exit(main())
