"""Benchmark of one data subject's export: `portability export --account ACCOUNT --subject EMAIL --json`.

    .venv/bin/python bench/subject_bench.py                     # bench1000000-00001
    .venv/bin/python bench/subject_bench.py --messages-per-contact 2 --events-per-contact 20 --repeat 3 --json
    .venv/bin/python bench/subject_bench.py --contacts 20000    # a quick run

It seeds (or reuses) the benchmark account as bench/export_bench.py does (`bench{N}-00001`, or
`bench{N}m{M}e{E}-00001` off the seeder's defaults), picks three subjects deterministically

    top      the contact address with the most events (by its messages' recipient), in the contact's spelling
    case     the same address in other letter case (the export matches addresses case-insensitively)
    nobody   an address the account holds nothing about

and for each runs the command --repeat times as a child process (through a bare interpreter, as
export_bench.py does, so that its peak RSS is its own), timing it from the process's start to the
moment the link is printed (stdout unbuffered) and to its exit. It then checks the archive's counts
(the command's summary) against direct SQL counts of the subject's rows, and prints the
EXPLAIN (ANALYZE, BUFFERS) plan of every subject query and count of the mapping, run with the
address as a bound parameter: a plan with a Seq Scan on contacts, list_members, messages, events or
suppressions fails. The same queries are also planned as the export runs them (the address in a
setting, read by current_setting()), and checked the same way.

Last, one more run with `-v` (its stderr lines timed as they arrive) and one with `python -X importtime`
show where the time goes: interpreter start, imports, snapshot and queries, packaging and upload, link.

Targets (the constants below): the worst wall to the link <= 3 s; no sequential scan; counts equal; peak
RSS <= 512 MiB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from export_bench import (
    BenchError,
    Check,
    _TreeRssSampler,
    add_account_options,
    ensure_account,
    last_json_object,
    machine_info,
    portability_command,
    positive_int,
    report_run,
    use_embedded_defaults,
)

# Targets from the issue.
MAX_SUBJECT_SECONDS = 3.0   # command start to the link printed, worst run of any subject
MAX_RSS_MIB = 512           # peak RSS of the command's process tree

# A subject's export is index lookups: no plan may scan one of these tables.
NO_SCAN_TABLES = ("contacts", "list_members", "messages", "events", "suppressions")
NOBODY = "nobody.at.all@subject-bench.example.com"
STDERR_TAIL_CHARS = 3000

log = logging.getLogger("subject_bench")


# --------------------------------------------------------------------------------------------
# The command as a child process: when its lines arrive, peak RSS
# --------------------------------------------------------------------------------------------

# Started as `python -I -S -c _LAUNCHER result argv...`: spawns the command with its stdout and stderr on
# pipes, notes when each line arrives (seconds after the spawn) and when the link ("url") is printed, waits
# for it (ru_maxrss of the command alone: a bare interpreter carries no peak of its own over exec).
_LAUNCHER = r"""
import json, os, selectors, sys, time
result, argv = sys.argv[1], sys.argv[2:]
out_r, out_w = os.pipe()
err_r, err_w = os.pipe()
os.environ["SUBJECT_BENCH_SPAWNED_AT"] = repr(time.time())  # for _PHASES: its notes count from the spawn too
start = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ,
                     file_actions=[(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)])
os.close(out_w)
os.close(err_w)
sel = selectors.DefaultSelector()
sel.register(out_r, selectors.EVENT_READ, "stdout")
sel.register(err_r, selectors.EVENT_READ, "stderr")
text = {"stdout": [], "stderr": []}
partial = {"stdout": b"", "stderr": b""}
lines, link_at, open_streams = [], None, 2
while open_streams:
    for key, _ in sel.select():
        data = os.read(key.fd, 65536)
        now = time.perf_counter() - start
        if not data:
            sel.unregister(key.fd)
            os.close(key.fd)
            open_streams -= 1
            continue
        text[key.data].append(data)
        *complete, partial[key.data] = (partial[key.data] + data).split(b"\n")
        for line in complete:
            if key.data == "stderr":
                lines.append([round(now, 4), line.decode(errors="replace")[:400]])
            elif link_at is None and b'"url"' in line:
                link_at = now
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(result, "w") as out:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall, "link_s": link_at,
               "maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime, "stderr_lines": lines,
               "stdout": b"".join(text["stdout"]).decode(errors="replace"),
               "stderr": b"".join(text["stderr"]).decode(errors="replace")}, out)
"""


@dataclass
class Run:
    returncode: int
    wall_s: float          # spawn to exit
    link_s: float | None   # spawn to the line of stdout that carries the link
    peak_rss_mib: float    # the larger of ru_maxrss and the sampled sum over the process tree
    cpu_s: float
    stdout: str
    stderr: str
    stderr_lines: list     # [seconds after spawn, line]

    def stderr_tail(self) -> str:
        return self.stderr[-STDERR_TAIL_CHARS:].strip() or "(nothing on stderr)"


def run_timed(argv: list[str], env: dict[str, str]) -> Run:
    with tempfile.TemporaryDirectory(prefix="subject-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        launcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result_path), *argv],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        sampler = _TreeRssSampler(launcher.pid)
        sampler.start()
        try:
            _, launcher_err = launcher.communicate()
        except BaseException:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            raise
        finally:
            sampler.stop()
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise BenchError(f"could not start {argv[0]} (launcher exit {launcher.returncode}):\n"
                             f"{launcher_err.decode(errors='replace')[-STDERR_TAIL_CHARS:]}") from None
    return Run(returncode=result["returncode"], wall_s=result["wall_s"], link_s=result["link_s"],
               peak_rss_mib=max(result["maxrss_kib"] / 1024, sampler.peak_bytes / 2**20), cpu_s=result["cpu_s"],
               stdout=result["stdout"], stderr=result["stderr"], stderr_lines=result["stderr_lines"])


def child_env() -> dict[str, str]:
    # Unbuffered, so that the link reaches the pipe when it is printed rather than when the command exits.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def export_argv(account_id: str, email: str, *, verbose: bool = False) -> list[str]:
    return [str(portability_command()), *(["-v"] if verbose else []), "export", "--account", account_id,
            "--subject", email, "--json"]


def run_export(account_id: str, email: str, *, verbose: bool = False) -> tuple[dict, Run]:
    run = run_timed(export_argv(account_id, email, verbose=verbose), child_env())
    summary = last_json_object(run.stdout)
    if run.returncode != 0 or summary is None or not isinstance(summary.get("counts"), dict):
        raise BenchError(f"`portability export --account {account_id} --subject ... --json` failed (exit "
                         f"{run.returncode}) or printed no summary with counts; its stderr ends with:\n"
                         f"{run.stderr_tail()}")
    if run.link_s is None:
        raise BenchError("the command's output carries no \"url\": update run_export() in bench/subject_bench.py")
    return summary, run


# --------------------------------------------------------------------------------------------
# Subjects, direct counts, plans
# --------------------------------------------------------------------------------------------

def pick_subjects(conn, account_id: str) -> list[dict]:
    """The contact address with the most events, a case variant of it, and an address without data."""
    row = conn.execute(
        """
        WITH per_message AS (
            SELECT message_id, count(*) AS n FROM events WHERE account_id = %(a)s GROUP BY message_id
        ), per_address AS (
            SELECT lower(m.recipient) AS address, sum(p.n) AS n
            FROM per_message p JOIN messages m ON m.id = p.message_id AND m.account_id = %(a)s
            GROUP BY 1
        )
        SELECT (SELECT c.email FROM contacts c WHERE c.account_id = %(a)s AND lower(c.email) = a.address
                ORDER BY c.id LIMIT 1), a.n
        FROM per_address a
        WHERE EXISTS (SELECT 1 FROM contacts c WHERE c.account_id = %(a)s AND lower(c.email) = a.address)
        ORDER BY a.n DESC, a.address
        LIMIT 1
        """, {"a": account_id}).fetchone()
    if row is None:
        raise BenchError(f"account {account_id} has no event of a message to a contact: nothing to pick")
    email, events = row
    variant = email.swapcase() if email.swapcase() != email else email.upper()
    if variant == email:
        raise BenchError(f"the top subject's address has no letter to change the case of: {email!r}")
    return [
        {"key": "top", "label": f"most events ({events:,})", "email": email},
        {"key": "case", "label": "the same in other case", "email": variant},
        {"key": "nobody", "label": "no data", "email": NOBODY},
    ]


# Counted straight from the tables, not through the mapping: the rows a subject's export must hold.
DIRECT_COUNTS = {
    "contacts": "SELECT count(*) FROM contacts WHERE account_id = %(a)s AND lower(email) = lower(%(s)s)",
    "list_members": """
        SELECT count(*) FROM list_members m JOIN contacts c ON c.id = m.contact_id AND c.account_id = m.account_id
        WHERE m.account_id = %(a)s AND lower(c.email) = lower(%(s)s)""",
    "suppressions": "SELECT count(*) FROM suppressions WHERE account_id = %(a)s AND lower(address) = lower(%(s)s)",
    "messages": "SELECT count(*) FROM messages WHERE account_id = %(a)s AND lower(recipient) = lower(%(s)s)",
    "events": """
        SELECT count(*) FROM events e JOIN messages m ON m.id = e.message_id AND m.account_id = e.account_id
        WHERE e.account_id = %(a)s AND lower(m.recipient) = lower(%(s)s)""",
}


def direct_counts(conn, account_id: str, email: str, categories: list[str]) -> dict[str, int | None]:
    return {c: conn.execute(DIRECT_COUNTS[c], {"a": account_id, "s": email}).fetchone()[0] if c in DIRECT_COUNTS
            else None for c in categories}


def subject_parameters(account_id: str, email: str) -> dict:
    return {"account_id": account_id, "since": None, "until": None, "subject_email": email}


SEQ_SCAN = re.compile(r"Seq Scan on (\w+)")


def explain(conn, statement: str, params: dict) -> list[str]:
    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", params).fetchall()
    return [row[0] for row in rows]


def node_lines(plan: list[str]) -> list[str]:
    """The plan abridged to its nodes (and the execution time)."""
    return [line for i, line in enumerate(plan) if i == 0 or "->" in line or line.startswith("Execution Time")]


def scans(plan: list[str]) -> list[str]:
    return sorted({table for line in plan for table in SEQ_SCAN.findall(line) if table in NO_SCAN_TABLES})


def plans(conn, queries: dict, account_id: str, email: str) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of each subject query (ordered, as the export runs it) and count, the
    address a bound parameter; then the same statements as the export sends them (the address in a setting)."""
    from portability.resources.source import SUBJECT_SETTING, statement_as_run

    out = {}
    params = subject_parameters(account_id, email)
    for category, query in queries.items():
        for kind, statement in (("query", query.ordered()), ("count", query.count)):
            with conn.transaction():
                plan = explain(conn, statement, params)
            with conn.transaction():
                conn.execute("SELECT set_config(%s, %s, true)", (SUBJECT_SETTING, email))
                as_export = explain(conn, statement_as_run(statement), params)
            out[f"{category}.{kind}"] = {"plan": node_lines(plan), "seq_scans": scans(plan),
                                         "seq_scans_as_export": scans(as_export),
                                         "execution_ms": execution_ms(plan)}
    return out


def execution_ms(plan: list[str]) -> float | None:
    for line in plan:
        if line.startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return None


# --------------------------------------------------------------------------------------------
# Where the time goes
# --------------------------------------------------------------------------------------------

# `python -c _PHASES ARGS...` runs `portability ARGS...` as its console script does, and notes (seconds after
# the launcher spawned it) when some modules are first imported, and when some steps of the command begin and
# end: each is wrapped as soon as its module is imported (an __import__ hook), so nothing is imported earlier
# than the command imports it. The notes go to stderr as one line "PHASES <json>" at the end.
_PHASES = r"""
import builtins, functools, json, os, sys, time
T0 = float(os.environ.get("SUBJECT_BENCH_SPAWNED_AT") or time.time())
notes = []
def note(what):
    notes.append([what, round(time.time() - T0, 4)])
FIRST_IMPORT = ["airflow.sdk", "psycopg", "adbc_driver_postgresql", "pyarrow", "pandas", "boto3",
                "portability.service", "portability.pipeline.export"]
STEPS = {
    "portability.service": ["export_now", "_export_in_process", "deliver", "link"],
    "portability.resources.ledger": ["start_in_process"],
    "portability.pipeline.export": ["plan", "export_from_source", "package", "cleanup", "_read_snapshot"],
}
seen, patched = set(), set()
def wrap(module, name):
    function = getattr(module, name, None)
    if function is None:
        return
    @functools.wraps(function)
    def timed(*args, **kwargs):
        note(f"{name} begins")
        try:
            return function(*args, **kwargs)
        finally:
            note(f"{name} ends")
    setattr(module, name, timed)
def after_import():
    for name in FIRST_IMPORT:
        if name not in seen and name in sys.modules:
            seen.add(name)
            note(f"import {name} done")
    for name, functions in STEPS.items():
        module = sys.modules.get(name)
        # Not while the module's own body runs (it imports others first): its functions are not defined yet.
        if name not in patched and module is not None and not getattr(module.__spec__, "_initializing", False):
            patched.add(name)
            for function in functions:
                wrap(sys.modules[name], function)
original_import = builtins.__import__
def hooked_import(*args, **kwargs):
    module = original_import(*args, **kwargs)
    if len(seen) < len(FIRST_IMPORT) or len(patched) < len(STEPS):
        after_import()
    return module
builtins.__import__ = hooked_import
sys.argv = ["portability", *sys.argv[1:]]
note("python started")
from portability.cli import main
note("portability.cli imported")
try:
    code = main()
finally:
    note("main returned")
    sys.stderr.write("PHASES " + json.dumps(notes) + "\n")
sys.exit(code)
"""


def phase_profile(account_id: str, email: str) -> dict:
    """One run of the top subject through _PHASES, with -v: when each step began and ended."""
    argv = [sys.executable, "-c", _PHASES, "-v", "export", "--account", account_id, "--subject", email, "--json"]
    run = run_timed(argv, child_env())
    notes = next((json.loads(line[len("PHASES "):]) for line in reversed(run.stderr.splitlines())
                  if line.startswith("PHASES ")), None)
    if run.returncode != 0 or notes is None:
        raise BenchError(f"the profiled run failed (exit {run.returncode}):\n{run.stderr_tail()}")
    return {"link_s": None if run.link_s is None else round(run.link_s, 3), "exit_s": round(run.wall_s, 3),
            "cpu_s": round(run.cpu_s, 3), "notes": notes,
            "stderr_lines": [line for line in run.stderr_lines if not line[1].startswith("PHASES ")]}

def import_profile(account_id: str, email: str) -> dict:
    """One run under `python -X importtime`: the time imports take wherever they happen (slightly inflated by
    the measuring), and the slowest top-level imports."""
    run = run_timed([sys.executable, "-X", "importtime", str(portability_command()), "export", "--account",
                     account_id, "--subject", email, "--json"], child_env())
    top = []
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        # "import time: <self us> | <cumulative us> | <two spaces per nesting level><module>"
        _, cumulative_us, name = line.split(":", 1)[1].split("|", 2)
        name = name[1:]
        if name.strip() and not name.startswith(" "):
            top.append((int(cumulative_us), name.strip()))
    top.sort(reverse=True)
    bare = run_timed([sys.executable, "-c", "pass"], child_env())
    return {"wall_s": round(run.wall_s, 3), "imports_s": round(sum(us for us, _ in top) / 1e6, 3),
            "interpreter_s": round(bare.wall_s, 3),
            "top_imports": [{"module": name, "cumulative_s": round(us / 1e6, 3)} for us, name in top[:8]]}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run_benchmark(args) -> dict:
    import psycopg

    from portability.resources import config
    from portability.resources.mapping import load_mapping

    use_embedded_defaults()
    conninfo = config.source_settings().conninfo
    account_id = ensure_account(conninfo, args.contacts, args.messages_per_contact, args.events_per_contact)
    mapping = load_mapping()
    queries = {c: q.for_subject() for c, q in mapping.items() if getattr(q, "subject_query", "")}
    if not queries:
        raise BenchError("the source mapping has no subject section: nothing a subject's export could run")

    with psycopg.connect(conninfo, autocommit=True, application_name="subject-bench") as conn:
        machine = machine_info(conn)
        log.warning("picking the subjects of %s ...", account_id)
        subjects = pick_subjects(conn, account_id)
        for subject in subjects:
            subject["direct_counts"] = direct_counts(conn, account_id, subject["email"], list(queries))
        log.warning("planning the subject queries ...")
        for subject in subjects:
            subject["plans"] = plans(conn, queries, account_id, subject["email"])

    for subject in subjects:
        subject.update(link_walls_s=[], exit_walls_s=[], peak_rss_mib=0.0, counts=None, count_mismatches=[])
        for round_ in range(1, args.repeat + 1):
            log.warning("%s (%s), run %d of %d ...", subject["key"], subject["label"], round_, args.repeat)
            summary, run = run_export(account_id, subject["email"])
            subject["link_walls_s"].append(round(run.link_s, 3))
            subject["exit_walls_s"].append(round(run.wall_s, 3))
            subject["peak_rss_mib"] = round(max(subject["peak_rss_mib"], run.peak_rss_mib), 1)
            counts = {c: int(v["exported"]) + int(v.get("quarantined", 0)) for c, v in summary["counts"].items()}
            subject["counts"] = counts
            subject["archive_bytes"] = summary.get("bytes")
            for category in sorted(set(counts) | set(subject["direct_counts"])):
                expected = subject["direct_counts"].get(category)
                if counts.get(category) != expected:
                    mismatch = f"{category}: archive {counts.get(category)}, SQL {expected}"
                    if mismatch not in subject["count_mismatches"]:
                        subject["count_mismatches"].append(mismatch)
        subject["best_link_s"] = min(subject["link_walls_s"])
        subject["worst_link_s"] = max(subject["link_walls_s"])

    log.warning("profiling: one run with -v and the steps timed, one under -X importtime ...")
    top = subjects[0]
    profile = {"verbose_run": phase_profile(account_id, top["email"]),
               "imports": import_profile(account_id, top["email"])}
    return {
        "machine": machine,
        "account": account_id,
        "contacts": args.contacts,
        "messages_per_contact": args.messages_per_contact,
        "events_per_contact": args.events_per_contact,
        "repeat": args.repeat,
        "categories": list(queries),
        "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "subjects": subjects,
        "profile": profile,
        **evaluate(subjects),
    }


def evaluate(subjects: list[dict]) -> dict:
    seq_scans = sorted({f"{s['key']} {name}: {', '.join(p['seq_scans'] + p['seq_scans_as_export'])}"
                        for s in subjects for name, p in s["plans"].items()
                        if p["seq_scans"] or p["seq_scans_as_export"]})
    mismatches = [f"{s['key']} {m}" for s in subjects for m in s["count_mismatches"]]
    checks = {
        "subject_latency": Check("subject export: start to link, worst run", max(s["worst_link_s"] for s in subjects),
                                 MAX_SUBJECT_SECONDS, True, " s"),
        "no_seq_scan": Check("sequential scans in the subject plans", float(len(seq_scans)), 0, True, ""),
        "counts": Check("archive counts that differ from SQL", float(len(mismatches)), 0, True, ""),
        "rss": Check("peak RSS of the command", max(s["peak_rss_mib"] for s in subjects), MAX_RSS_MIB, True, " MiB"),
    }
    return {"targets": {k: c.to_dict() for k, c in checks.items()},
            "all_pass": all(c.passed for c in checks.values()), "seq_scans": seq_scans, "count_mismatches": mismatches}


def print_report(results: dict) -> None:
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; PostgreSQL {m['postgresql']}, "
          f"Python {m['python']}")
    print(f"account: {results['account']}; subject categories: {', '.join(results['categories'])}; "
          f"{results['repeat']} run(s) per subject")
    print()
    header = (f"{'subject':<8} {'address':<44} {'best s':>7} {'worst s':>8} {'exit s':>7} {'RSS MiB':>8}  "
              "rows (archive = SQL)")
    print(header)
    print("-" * len(header))
    for s in results["subjects"]:
        rows = ", ".join(f"{c} {n}" for c, n in (s["counts"] or {}).items())
        ok = "yes" if not s["count_mismatches"] else "NO: " + "; ".join(s["count_mismatches"])
        print(f"{s['key']:<8} {s['email'][:44]:<44} {s['best_link_s']:>7.2f} {s['worst_link_s']:>8.2f} "
              f"{max(s['exit_walls_s']):>7.2f} {s['peak_rss_mib']:>8.0f}  {rows} ({ok})")
    print("best s / worst s: process start to the link printed; exit s: to the process's exit (worst run)")
    print()
    top = results["subjects"][0]
    print(f"plans for {top['key']} ({top['label']}), EXPLAIN (ANALYZE, BUFFERS), address bound; node lines:")
    for name, p in top["plans"].items():
        print(f"  {name}  ({p['execution_ms']} ms)")
        for line in p["plan"]:
            print(f"    {line}")
    print()
    profile = results["profile"]
    verbose, imports = profile["verbose_run"], profile["imports"]
    print(f"where the time goes (one run of the top subject with -v: link at {verbose['link_s']:.2f} s, exit "
          f"{verbose['exit_s']:.2f} s, CPU {verbose['cpu_s']:.2f} s):")
    print(f"  interpreter alone (python -c pass): {imports['interpreter_s']:.3f} s; imports under -X importtime: "
          f"{imports['imports_s']:.3f} s of a {imports['wall_s']:.2f} s run; slowest top-level imports: "
          + ", ".join(f"{t['module']} {t['cumulative_s']:.2f}" for t in imports["top_imports"]))
    timeline = [(at, f"[{what}]") for what, at in verbose["notes"]] + [(at, line) for at, line in
                                                                      verbose["stderr_lines"]]
    if verbose["link_s"] is not None:
        timeline.append((verbose["link_s"], "(the link printed)"))
    for at, line in sorted(timeline, key=lambda item: item[0]):
        print(f"  {at:7.3f}  {line[:140]}")
    print()
    print("targets:")
    for check in results["targets"].values():
        value = "-" if check["value"] is None else f"{check['value']:g}{check['unit']}"
        print(f"{check['name']:<44} {value:>12}   target {check['target']:<12} {check['verdict']}")
    for line in results["seq_scans"]:
        print(f"sequential scan: {line}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=positive_int, default=1_000_000,
                        help="contacts of the benchmark account bench{N}-00001 (default 1000000)")
    add_account_options(parser)
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="runs per subject; the worst wall to the link counts for the target (default 3)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # Importing Airflow (for its connection lookup) configures logging to stdout; progress goes to stderr.
    import airflow.sdk  # noqa: F401

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True, format="subject_bench: %(message)s")
    return report_run("subject_bench", args, run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())
