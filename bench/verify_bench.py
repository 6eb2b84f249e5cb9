"""Benchmark of `portability verify` against the export that made the archive.

    .venv/bin/python bench/verify_bench.py                       # 1M contacts
    .venv/bin/python bench/verify_bench.py --contacts 200000 --repeat 2
    .venv/bin/python bench/verify_bench.py --contacts 20000 --json   # a quick smoke run

It seeds (or reuses) the account `bench{N}-00001` with N contacts, as bench/export_bench.py does, then
runs, --repeat times in turn:

    (c)  `portability export --account ACCOUNT --json` (default formats unless --formats), a child process
    (d)  the archive downloaded through the link the export printed (timed, for information)
    (v)  `portability verify ARCHIVE --json` on the downloaded file, a child process

and prints the wall time (the best of the runs), peak RSS and CPU of (c) and (v), the ratio (v)/(c),
and PASS/FAIL against the target: verify within MAX_VERIFY_RATIO times the export's wall time. Both
commands are timed as a user runs them, interpreter start-up and Airflow's import included.

Configuration is the command's: with no AIRFLOW_CONN_PORTABILITY_* set, the embedded stores under
.state/ are started (or reused), exactly as `portability` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from export_bench import (
    BenchError,
    ChildRun,
    CpuSplit,
    Measurement,
    ensure_account,
    last_json_object,
    machine_info,
    measure_export,
    portability_command,
    positive_int,
    run_child,
    use_embedded_defaults,
)

MAX_VERIFY_RATIO = 1.5  # (v) wall / (c) wall, the target

log = logging.getLogger("verify_bench")


def download(url: str, target: Path) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    return time.perf_counter() - start


def measure_verify(archive: Path) -> tuple[dict, ChildRun, dict]:
    """verify's report, its run, and the machine's CPU-seconds over the run ("export" is verify's own)."""
    cpu = CpuSplit()
    run = run_child([str(portability_command()), "verify", str(archive), "--json"], dict(os.environ))
    split = cpu.finish(run.cpu_s, run.wall_s, os.cpu_count() or 1)
    report = last_json_object(run.stdout)
    if run.returncode != 0 or report is None:
        raise BenchError(f"`portability verify` of the export's archive failed (exit {run.returncode}); "
                         f"its stderr ends with:\n{run.stderr_tail()}")
    return report, run, {("verify" if key == "export" else key): value for key, value in split.items()}


def run_benchmark(args) -> dict:
    import psycopg

    from portability.resources import config

    use_embedded_defaults()
    conninfo = config.source_settings().conninfo
    account_id = ensure_account(conninfo, args.contacts)
    with psycopg.connect(conninfo) as conn:
        machine = machine_info(conn)

    export = Measurement("export", "(c) portability export")
    verify = Measurement("verify", "(v) portability verify")
    downloads, archive_bytes, records_checked, judged = [], None, None, None
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        archive = Path(tmp) / "archive.zip"
        for number in range(args.repeat):
            log.warning("run %d of %d: export", number + 1, args.repeat)
            summary, run, split = measure_export(account_id, formats=args.formats)
            rows = sum(int(c["exported"]) + int(c.get("quarantined", 0)) for c in summary["counts"].values())
            export.add_run(rows, run.wall_s, run.peak_rss_mib, split)
            downloads.append(round(download(summary["url"], archive), 3))
            archive_bytes = archive.stat().st_size
            log.warning("run %d of %d: verify (%d bytes)", number + 1, args.repeat, archive_bytes)
            report, run, split = measure_verify(archive)
            verify.add_run(report["records_checked"], run.wall_s, run.peak_rss_mib, split)
            verify.details.setdefault("cpu_s_runs", []).append(round(run.cpu_s, 2))
            records_checked, judged = report["records_checked"], report.get("records_judged_by_jsonschema")
            archive.unlink()

    ratio = verify.wall_s / export.wall_s
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine,
        "account_id": account_id,
        "contacts": args.contacts,
        "formats": args.formats or "default (csv, jsonl)",
        "repeat": args.repeat,
        "archive_bytes": archive_bytes,
        "records_checked": records_checked,
        "records_judged_by_jsonschema": judged,
        "download_s": downloads,
        "export": export.to_dict(),
        "verify": verify.to_dict(),
        "verify_over_export": round(ratio, 3),
        "target": MAX_VERIFY_RATIO,
        "pass": ratio <= MAX_VERIFY_RATIO,
    }


def print_report(results: dict) -> None:
    print(f"verify benchmark, {results['contacts']:,} contacts ({results['account_id']}), formats "
          f"{results['formats']}, {results['repeat']} run(s) each, best wall counts")
    print(f"archive {results['archive_bytes']:,} bytes; {results['records_checked']:,} records checked, "
          f"{results['records_judged_by_jsonschema']} of them by jsonschema; download "
          f"{', '.join(f'{s:.2f}' for s in results['download_s'])} s")
    print(f"{'':<26} {'wall s':>9} {'all runs':>24} {'peak RSS MiB':>13}")
    for key in ("export", "verify"):
        m = results[key]
        runs = ", ".join(f"{w:.2f}" for w in m["walls_s"])
        print(f"{m['label']:<26} {m['wall_s']:>9.2f} {runs:>24} {m['peak_rss_mib']:>13.0f}")
    print(f"verify CPU-s (user + system) per run: {', '.join(str(c) for c in results['verify']['cpu_s_runs'])}")
    for key in ("export", "verify"):
        split = results[key].get("cpu_s")
        if split:
            print(f"machine CPU-s during the best {key}: " + ", ".join(f"{k} {v}" for k, v in split.items()))
    verdict = "PASS" if results["pass"] else "FAIL"
    print(f"(v)/(c) = {results['verify_over_export']:.2f}x, target <= {results['target']}x: {verdict}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=positive_int, default=1_000_000,
                        help="contacts of the benchmark account bench{N}-00001 (default 1000000)")
    parser.add_argument("--formats", help="formats of the export, e.g. csv,jsonl,parquet (default: the request's)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="export-and-verify rounds; the best wall time of each counts (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import airflow.sdk  # noqa: F401  (configures logging to stdout; progress goes to stderr)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True, format="verify_bench: %(message)s")
    from portability.resources.config import ConfigurationError

    try:
        results = run_benchmark(args)
    except (BenchError, ConfigurationError) as exc:
        print(f"verify_bench: {exc}", file=sys.stderr)
        return 2
    print_report(results)
    if args.json:
        print()
        print(json.dumps(results, indent=2))
    return 1 if args.check and not results["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
