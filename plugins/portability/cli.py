"""The `portability` command: the export pipeline without a scheduler, on the same library code.

    portability seed     synthetic accounts in the source database
    portability export   export one account; prints the download link
    portability link     a fresh link to an archive already published
    portability verify   check an archive (a path or a link)
    portability stores   start, stop or show the embedded PostgreSQL and S3 server
    portability demo     the README's end-to-end demo through Airflow

Configuration is Airflow's (connections portability_source and portability_s3, and
PORTABILITY_BUCKETS). With none set, the embedded stores under .state/ are used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from portability import config

log = logging.getLogger("portability")


def _configured() -> bool:
    return bool(os.environ.get("AIRFLOW_CONN_PORTABILITY_SOURCE") or os.environ.get("AIRFLOW_CONN_PORTABILITY_S3"))


def _use_embedded_defaults() -> None:
    """With nothing configured, point at the embedded stores (starting them if needed)."""
    if _configured():
        return
    from portability import local

    local.apply(local.start_stores())


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def cmd_seed(args) -> int:
    import psycopg

    from portability.seed import SeedOptions, seed

    _use_embedded_defaults()
    options = SeedOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SeedOptions)})
    with psycopg.connect(config.source_settings().conninfo) as conn:
        accounts = seed(conn, options)
    print(json.dumps({"accounts": accounts}) if args.json else "\n".join(accounts))
    return 0


def cmd_export(args) -> int:
    from portability import export
    from portability.request import new_export_id

    _use_embedded_defaults()
    conf = {"account_id": args.account}
    if args.categories:
        conf["categories"] = _csv_list(args.categories)
    if args.formats:
        conf["formats"] = _csv_list(args.formats)
    if args.expires_in_hours is not None:
        conf["expires_in_hours"] = args.expires_in_hours
    if args.on_invalid:
        conf["on_invalid"] = args.on_invalid
    summary, link = export.run_export(conf, new_export_id())
    if args.json:
        print(json.dumps({
            "export_id": summary["export_id"], "account_id": summary["account_id"], "bucket": summary["bucket"],
            "key": summary["key"], "bytes": summary["bytes"], "sha256": summary["sha256"],
            "url": link.url, "expires_at": link.expires_at, "counts": summary["counts"],
        }, indent=2))
    else:
        print(link.url)
        print(f"export {summary['export_id']}: {summary['bytes']} bytes, sha256 {summary['sha256']}, "
              f"link expires {link.expires_at}", file=sys.stderr)
    return 0


def cmd_link(args) -> int:
    from portability import export

    _use_embedded_defaults()
    link = export.mint_link(args.export_id, args.expires_in_hours)
    if args.json:
        print(json.dumps({"export_id": args.export_id, "url": link.url, "expires_at": link.expires_at}))
    else:
        print(link.url)
    return 0


def cmd_verify(args) -> int:
    from portability.verify import verify

    report = verify(args.archive)
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
    from portability import embedded, local

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
    from portability import demo

    return demo.run(account=args.account)


def _add_seed_options(parser: argparse.ArgumentParser) -> None:
    """One option per field of SeedOptions, with its default: sizes are per account."""
    from portability.seed import SeedOptions

    helps = {"accounts": "accounts to create", "prefix": "account ids are PREFIX-00001, ...",
             "seed": "another number gives other (still deterministic) data",
             "large_html_bytes": "size of the largest template HTML of each account"}
    for f in dataclasses.fields(SeedOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=helps.get(f.name, f"{f.name.replace('_', ' ')} per account"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="create synthetic accounts in the source database")
    _add_seed_options(seed)
    seed.add_argument("--json", action="store_true")
    seed.set_defaults(handler=cmd_seed)

    exp = sub.add_parser("export", help="export one account and print its download link")
    exp.add_argument("--account", required=True)
    exp.add_argument("--categories", help="comma-separated; default all")
    exp.add_argument("--formats", help="comma-separated csv,jsonl,parquet; default csv,jsonl")
    exp.add_argument("--expires-in-hours", type=int)
    exp.add_argument("--on-invalid", choices=["quarantine", "fail"])
    exp.add_argument("--json", action="store_true", help="print one JSON object instead of the link")
    exp.set_defaults(handler=cmd_export)

    link = sub.add_parser("link", help="a fresh download link for a published export")
    link.add_argument("export_id")
    link.add_argument("--expires-in-hours", type=int, default=72)
    link.add_argument("--json", action="store_true")
    link.set_defaults(handler=cmd_link)

    ver = sub.add_parser("verify", help="check an archive: bag, checksums, schemas, counts")
    ver.add_argument("archive", metavar="PATH_OR_URL")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(handler=cmd_verify)

    stores = sub.add_parser("stores", help="the embedded PostgreSQL and S3 server under .state/")
    stores.add_argument("action", choices=["start", "stop", "status"])
    stores.add_argument("--env", action="store_true", help="print shell exports that point at them")
    stores.set_defaults(handler=cmd_stores)

    demo = sub.add_parser("demo", help="seed, export through Airflow, download through the link, verify")
    demo.add_argument("--account", default="demo-00001")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Importing Airflow sends logging to stdout; stdout is for the command's output (a link, JSON).
    import airflow.sdk  # noqa: F401

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from portability.export import ExportError
    from portability.mapping import MappingError
    from portability.request import RequestError
    from portability.storage import StorageError
    from portability.validation import InvalidRecords
    from portability.verify import VerificationError

    try:
        return args.handler(args)
    except (RequestError, ExportError, VerificationError, InvalidRecords, MappingError, StorageError,
            config.ConfigurationError) as exc:
        print(f"portability {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
