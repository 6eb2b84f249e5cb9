"""Benchmark of `portability export` against a raw COPY and a straightforward Python pipeline.

    .venv/bin/python bench/export_bench.py                      # 1M contacts
    .venv/bin/python bench/export_bench.py --contacts 10000000  # 10M contacts
    .venv/bin/python bench/export_bench.py --contacts 20000 --sample 2000 --json   # a quick smoke run

It seeds (or reuses) the account `bench{N}-00001` with N contacts (and the seeder's default messages and
events per contact; `bench{N}m{M}e{E}-00001` with --messages-per-contact M --events-per-contact E), then
measures in the same run:

    (a)  COPY (the contacts mapping query, ordered) TO STDOUT (FORMAT csv), blocks discarded
    (a') the same COPY for every category the export writes by default: the rows (c) writes
    (b)  a straightforward pipeline on the first --sample contacts: psycopg rows, a jsonschema
         validation per record, `json.dumps` to a JSON Lines file (in a child process)
    (c)  `portability export --account ACCOUNT --json` with the default formats (a child process)

and prints wall time (the best of --repeat runs), rows per second and peak RSS of each, the ratios
(c)/(a') and (c)/(a), the speed-up of (c) over (b), and PASS/FAIL against the targets (the constants
below). bench/README.md explains each figure.

Configuration is the command's: with no AIRFLOW_CONN_PORTABILITY_* set, the embedded stores under
.state/ are started (or reused), exactly as `portability` does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portability_dev.seed import SeedOptions

# Targets from the issue.
MAX_COPY_RATIO = 2.5       # (c) wall / (a') wall
MAX_EXPORT_RSS_MIB = 512   # peak RSS of (c)
MIN_SPEEDUP_OVER_NAIVE = 30  # (c) contacts/s / (b) rows/s

SEED_LOCK = "hashtext('portability_dev.seed')"  # the advisory lock key seed() takes
NAIVE_CONNINFO_ENV = "PORTABILITY_BENCH_CONNINFO"  # the worker gets the conninfo here, not in argv (ps shows argv)
RSS_SAMPLE_SECONDS = 0.1
STDERR_TAIL_CHARS = 3000

log = logging.getLogger("export_bench")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class Measurement:
    key: str
    label: str
    rows: int = 0
    walls: list[float] = field(default_factory=list)
    peak_rss_mib: float | None = None  # None: the work is the PostgreSQL server's, not a process of ours
    details: dict = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        # Best of the repeats: noise on a shared machine only ever adds time.
        return min(self.walls)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else float("inf")

    def add_run(self, rows: int, wall_s: float, rss_mib: float | None = None, cpu_s: dict | None = None) -> None:
        """One run's figures; `cpu_s`, the machine's CPU split over the run, is kept for the run whose wall counts."""
        if self.walls and rows != self.rows:
            log.warning("%s: %d rows this run, %d before; the data changed during the benchmark", self.key,
                        rows, self.rows)
        self.rows = rows
        if cpu_s is not None and (not self.walls or wall_s < self.wall_s):
            self.details["cpu_s"] = cpu_s
        self.walls.append(wall_s)
        if rss_mib is not None:
            self.peak_rss_mib = max(self.peak_rss_mib or 0.0, rss_mib)  # worst run: the target is a ceiling

    def to_dict(self) -> dict:
        return {"label": self.label, "rows": self.rows, "wall_s": round(self.wall_s, 4),
                "walls_s": [round(w, 4) for w in self.walls], "rows_per_s": round(self.rows_per_s, 1),
                "peak_rss_mib": None if self.peak_rss_mib is None else round(self.peak_rss_mib, 1), **self.details}


@dataclass
class Check:
    name: str
    value: float | None  # None: not measured in this run
    limit: float
    at_most: bool        # True: value <= limit passes; False: value >= limit passes
    unit: str

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.at_most else self.value >= self.limit

    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "not measured"}[self.passed]

    def to_dict(self) -> dict:
        return {"name": self.name, "value": None if self.value is None else round(self.value, 3), "unit": self.unit,
                "target": f"{'<=' if self.at_most else '>='} {self.limit:g}{self.unit}", "pass": self.passed,
                "verdict": self.verdict()}


# --------------------------------------------------------------------------------------------
# Child processes: wall time and peak RSS of their own
# --------------------------------------------------------------------------------------------

@dataclass
class ChildRun:
    returncode: int
    wall_s: float
    maxrss_mib: float     # ru_maxrss: the largest single process (the command or a descendant it waited for)
    tree_rss_mib: float   # sampled peak of the command and all its descendants together
    cpu_s: float          # user + system CPU of the command and the descendants it waited for
    stdout: str
    stderr: str

    @property
    def peak_rss_mib(self) -> float:
        # A pipeline with worker processes uses their sum, which ru_maxrss (a per-process maximum) misses.
        return max(self.maxrss_mib, self.tree_rss_mib)

    def stderr_tail(self) -> str:
        return self.stderr[-STDERR_TAIL_CHARS:].strip() or "(nothing on stderr)"


# Linux carries a process's peak RSS over exec: a command started straight from this process (which
# holds Airflow, psycopg and pyarrow) would report at least this process's peak as its ru_maxrss.
# A bare interpreter starts the command instead, so its ru_maxrss starts from a few MiB, and times it.
_LAUNCHER = """
import os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawn(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(result, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {wall} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
"""


class _TreeRssSampler(threading.Thread):
    """Polls the summed RSS of a process's descendants; a sample can miss a short spike."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_bytes = 0
        self._done = threading.Event()  # not _stop: Thread has a method of that name

    def run(self) -> None:
        import psutil

        try:
            launcher = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            total = 0
            try:
                for process in launcher.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):  # exited between listing and reading
                        total += process.memory_info().rss
            except psutil.NoSuchProcess:
                return
            self.peak_bytes = max(self.peak_bytes, total)
            self._done.wait(RSS_SAMPLE_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_child(argv: list[str], env: dict[str, str]) -> ChildRun:
    """Run a command to completion through the launcher; its output goes to files, so a full pipe never blocks it."""
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        out_path, err_path, result_path = (Path(tmp) / name for name in ("stdout", "stderr", "result"))
        with out_path.open("wb") as out, err_path.open("wb") as err:
            # Its own session, so that on an error or Ctrl-C here the whole tree can be stopped at once.
            launcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result_path), *argv],
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                        start_new_session=True)
            sampler = _TreeRssSampler(launcher.pid)
            sampler.start()
            try:
                launcher.wait()
            except BaseException:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
                raise
            finally:
                sampler.stop()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        try:
            returncode, wall, maxrss_kib, cpu = result_path.read_text().split()
        except (OSError, ValueError):
            raise BenchError(f"could not start {argv[0]} (launcher exit {launcher.returncode}):\n"
                             f"{stderr[-STDERR_TAIL_CHARS:].strip()}") from None
    return ChildRun(returncode=int(returncode), wall_s=float(wall), maxrss_mib=int(maxrss_kib) / 1024,  # KiB on Linux
                    tree_rss_mib=sampler.peak_bytes / 2**20, cpu_s=float(cpu), stdout=stdout, stderr=stderr)


# --------------------------------------------------------------------------------------------
# Where the machine's CPU went while a command ran
# --------------------------------------------------------------------------------------------

# Server processes on this machine, by process name, and how the report names them.
SERVER_PROCESSES = {"postgres": "postgresql", "weed": "s3_server"}


def machine_cpu_s() -> tuple[float, float]:
    """CPU-seconds of the whole machine since boot (/proc/stat): busy, and stolen by the hypervisor."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def server_cpu_s() -> dict[str, float]:
    """CPU-seconds each kind of server has used so far, with the exited processes it reaped (PostgreSQL
    serves each connection from a process of its own, which is gone by the time the command ends)."""
    import psutil

    used = dict.fromkeys(SERVER_PROCESSES.values(), 0.0)
    for process in psutil.process_iter(["name"]):
        kind = SERVER_PROCESSES.get(process.info["name"])
        if kind:
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                times = process.cpu_times()
                used[kind] += times.user + times.system + times.children_user + times.children_system
    return used


class CpuSplit:
    """The machine's CPU-seconds from its creation to `finish`, split by who used them."""

    def __init__(self):
        self._busy, self._stolen = machine_cpu_s()
        self._servers = server_cpu_s()

    def finish(self, own_cpu_s: float, wall_s: float, cores: int) -> dict[str, float]:
        """`own_cpu_s` is the command's (from its rusage): the rest of the busy time was someone else's."""
        busy, stolen = machine_cpu_s()
        servers = server_cpu_s()
        used = {kind: servers[kind] - self._servers[kind] for kind in servers}
        split = {"available": wall_s * cores, "busy": busy - self._busy, "stolen": stolen - self._stolen,
                 "export": own_cpu_s, **used}
        split["other"] = split["busy"] - own_cpu_s - sum(used.values())
        return {key: round(value, 2) for key, value in split.items()}


def last_json_object(text: str) -> dict | None:
    """The last JSON object in a command's stdout; anything may be logged before it."""
    decoder = json.JSONDecoder()
    starts = [i for i, char in enumerate(text) if char == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------------------------
# Set-up: stores, account, machine
# --------------------------------------------------------------------------------------------

def use_embedded_defaults() -> None:
    """As the `portability` command does: with nothing configured, start (or reuse) the embedded stores."""
    if os.environ.get("AIRFLOW_CONN_PORTABILITY_SOURCE") or os.environ.get("AIRFLOW_CONN_PORTABILITY_S3"):
        return
    from portability_dev import local

    log.info("no stores configured: starting (or reusing) the embedded stores under %s", local.state_dir())
    local.apply(local.start_stores())


def contact_count(conn, account_id: str) -> int:
    if conn.execute("SELECT to_regclass('contacts') IS NULL").fetchone()[0]:
        return 0
    return conn.execute("SELECT count(*) FROM contacts WHERE account_id = %s", (account_id,)).fetchone()[0]


def table_count(conn, table: str, account_id: str) -> int:
    """Rows of `table` (messages, events) in the account; 0 when the table does not exist."""
    if conn.execute("SELECT to_regclass(%s) IS NULL", (table,)).fetchone()[0]:
        return 0
    return conn.execute(f"SELECT count(*) FROM {table} WHERE account_id = %s", (account_id,)).fetchone()[0]


def seed_options(contacts: int, messages_per_contact: int | None = None,
                 events_per_contact: int | None = None) -> SeedOptions:
    """The seeder's options for a benchmark account: `bench{N}-00001` with the seeder's defaults for
    messages and events, `bench{N}m{M}e{E}-00001` otherwise (None: the seeder's default)."""
    from portability_dev.seed import SeedOptions

    defaults = SeedOptions()
    messages = defaults.messages_per_contact if messages_per_contact is None else messages_per_contact
    events = defaults.events_per_contact if events_per_contact is None else events_per_contact
    prefix = f"bench{contacts}"
    if (messages, events) != (defaults.messages_per_contact, defaults.events_per_contact):
        prefix += f"m{messages}e{events}"
    return SeedOptions(accounts=1, contacts=contacts, prefix=prefix, messages_per_contact=messages,
                       events_per_contact=events)


def benchmark_account_id(contacts: int, messages_per_contact: int | None = None,
                         events_per_contact: int | None = None) -> str:
    return seed_options(contacts, messages_per_contact, events_per_contact).account_ids()[0]


def ensure_account(conninfo: str, contacts: int, messages_per_contact: int | None = None,
                   events_per_contact: int | None = None) -> str:
    """The benchmark account with exactly `contacts` contacts and `contacts * M` messages and `contacts * E`
    events: reused if it exists, seeded otherwise (None for M or E: the seeder's default)."""
    import psycopg

    from portability_dev.seed import seed

    options = seed_options(contacts, messages_per_contact, events_per_contact)
    account_id = options.account_ids()[0]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        found = contact_count(conn, account_id)
        if found == 0:
            # seed() serialises seeders on this lock, but only after its DDL; waiting here instead holds
            # no table lock that could get in the way of a seeder that is running (a session lock is
            # re-entrant, so seed() still gets it). It is released when the connection closes.
            if not conn.execute(f"SELECT pg_try_advisory_lock({SEED_LOCK})").fetchone()[0]:
                log.warning("another seeder is running; waiting for it to finish before seeding %s", account_id)
                conn.execute(f"SELECT pg_advisory_lock({SEED_LOCK})")
            found = contact_count(conn, account_id)  # that seeder may have created this very account
        if found == 0:
            log.warning("seeding %s with %d contacts, %d messages and %d events (about 11 minutes for 1M "
                        "contacts, 2M messages and 20M events)...", account_id, contacts,
                        contacts * options.messages_per_contact, contacts * options.events_per_contact)
            start = time.perf_counter()
            conn.autocommit = False  # seed() commits everything at once, or nothing
            try:
                seed(conn, options)
            except ValueError as exc:  # the account exists without contacts: not one of ours
                raise BenchError(f"cannot seed the benchmark account: {exc}") from None
            log.warning("seeded %s in %.1f s", account_id, time.perf_counter() - start)
            # Otherwise autovacuum sets the new rows' hint bits and visibility while the rounds are timed.
            conn.autocommit = True
            start = time.perf_counter()
            conn.execute("VACUUM (ANALYZE) contacts, list_members, messages, events")
            log.warning("vacuumed the seeded tables in %.1f s", time.perf_counter() - start)
            return account_id
        expected = {"contacts": contacts, "messages": contacts * options.messages_per_contact,
                    "events": contacts * options.events_per_contact}
        have = {"contacts": found, "messages": table_count(conn, "messages", account_id),
                "events": table_count(conn, "events", account_id)}
    if have != expected:
        differ = ", ".join(f"{have[t]:,} {t}, not {expected[t]:,}" for t in expected if have[t] != expected[t])
        raise BenchError(
            f"account {account_id} exists with {differ}, so it is not a benchmark account of this size: delete "
            f"that account's rows from the source database, or use other --contacts, --messages-per-contact or "
            f"--events-per-contact"
        )
    log.warning("reusing %s (%d contacts, %d messages, %d events)", account_id, contacts, have["messages"],
                have["events"])
    return account_id


def machine_info(conn) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model", "Hardware") and value.strip():
                cpu = value.strip()
                break
    except OSError:
        cpu = platform.processor() or platform.machine()
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "postgresql": conn.execute("SHOW server_version").fetchone()[0],
        "python": platform.python_version(),
        "pyarrow": metadata.version("pyarrow"),
        "os": platform.platform(),
    }


# --------------------------------------------------------------------------------------------
# (a) and (a'): raw COPY
# --------------------------------------------------------------------------------------------

def copy_to_nowhere(conn, queries: list, account_id: str) -> tuple[int, int, float]:
    """COPY each query's ordered rows as CSV and discard them; returns (rows, bytes, wall seconds).

    One REPEATABLE READ, READ ONLY transaction, as the export reads its snapshot.
    """
    rows = size = 0
    start = time.perf_counter()
    with conn.transaction():
        for query in queries:
            with conn.cursor() as cursor:
                statement = f"COPY ({query.ordered()}) TO STDOUT (FORMAT csv)"
                with cursor.copy(statement, {"account_id": account_id, "since": None, "until": None}) as copy:
                    for block in copy:
                        size += len(block)
                rows += cursor.rowcount  # "COPY n" from the server
    return rows, size, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# (b): the straightforward pipeline, run in a child process by --naive-worker
# --------------------------------------------------------------------------------------------

def naive_pipeline(conninfo: str, account_id: str, sample: int, out_dir: Path) -> dict:
    """psycopg rows -> dict -> jsonschema -> json.dumps, one record at a time, as one would write it first."""
    import psycopg

    from portability.records.schemas import JSON, SchemaSet
    from portability.resources.mapping import load_mapping

    schemas = SchemaSet()
    validator = schemas.validator(schemas.record("contacts"))
    json_columns = {column.name for column in schemas.columns("contacts") if column.kind == JSON}
    query = load_mapping()["contacts"]
    path = out_dir / "contacts.jsonl"
    rows = invalid = 0

    start = time.perf_counter()
    with psycopg.connect(conninfo) as conn, conn.cursor(name="naive_contacts") as cursor, \
            path.open("w", encoding="utf-8") as out:
        cursor.itersize = 10_000
        cursor.execute(f"{query.ordered()} LIMIT %(sample)s", {"account_id": account_id, "sample": sample})
        names = [column.name for column in cursor.description]
        for row in cursor:
            record = {}
            for name, value in zip(names, row, strict=True):
                if isinstance(value, datetime):
                    value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                elif name in json_columns and isinstance(value, str):
                    value = json.loads(value)  # the mapping selects jsonb as text
                record[name] = value
            if any(True for _ in validator.iter_errors(record)):
                invalid += 1
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            rows += 1
    wall = time.perf_counter() - start
    return {"rows": rows, "wall_s": wall, "invalid": invalid, "bytes": path.stat().st_size}


def naive_worker(args) -> int:
    conninfo = os.environ.get(NAIVE_CONNINFO_ENV)
    if not conninfo:
        print(f"--naive-worker needs {NAIVE_CONNINFO_ENV}; it is meant to be started by this script", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="export-bench-naive-") as out_dir:
        result = naive_pipeline(conninfo, args.naive_worker, args.sample, Path(out_dir))
    print(json.dumps(result))
    return 0


def measure_naive(conninfo: str, account_id: str, sample: int) -> tuple[dict, ChildRun]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--naive-worker", account_id, "--sample", str(sample)]
    run = run_child(argv, {**os.environ, NAIVE_CONNINFO_ENV: conninfo})
    result = last_json_object(run.stdout)
    if run.returncode != 0 or result is None:
        raise BenchError(f"the straightforward pipeline (b) failed (exit {run.returncode}):\n{run.stderr_tail()}")
    return result, run


# --------------------------------------------------------------------------------------------
# (c): our export
# --------------------------------------------------------------------------------------------

def portability_command() -> Path:
    command = Path(sys.executable).with_name("portability")
    if not command.exists():
        raise BenchError(f"{command} not found: run this script with the project's virtualenv "
                         "(.venv/bin/python bench/export_bench.py) after installing the project into it")
    return command


def measure_export(account_id: str, categories: list[str] | None = None,
                   formats: str | None = None) -> tuple[dict, ChildRun, dict]:
    """The command's summary, its run, and the machine's CPU-seconds over the run by who used them."""
    argv = [str(portability_command()), "export", "--account", account_id, "--json"]
    if categories:
        argv += ["--categories", ",".join(categories)]
    if formats:  # bench/verify_bench.py --formats
        argv += ["--formats", formats]
    cpu = CpuSplit()
    run = run_child(argv, dict(os.environ))
    split = cpu.finish(run.cpu_s, run.wall_s, os.cpu_count() or 1)
    summary = last_json_object(run.stdout)
    if run.returncode != 0 or summary is None or not isinstance(summary.get("counts"), dict):
        raise BenchError(
            f"`portability export --account {account_id} --json` failed (exit {run.returncode}) or printed no "
            f"summary with counts; its stderr ends with:\n{run.stderr_tail()}"
        )
    return summary, run, split


def exported_rows(summary: dict) -> dict[str, int]:
    """Rows the export wrote per category: to the data files, or to errors/ when quarantined."""
    rows = {}
    for category, counts in summary["counts"].items():
        try:
            rows[category] = int(counts["exported"]) + int(counts.get("quarantined", 0))
        except (KeyError, TypeError, ValueError):
            raise BenchError(f"the export's summary has no 'exported' count for {category!r}: {counts!r}; "
                             "update exported_rows() in bench/export_bench.py to its new shape") from None
    return rows


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def run_benchmark(args) -> dict:
    import psycopg

    from portability.records.schemas import SchemaSet
    from portability.resources import config
    from portability.resources.mapping import load_mapping

    use_embedded_defaults()
    conninfo = config.source_settings().conninfo
    account_id = ensure_account(conninfo, args.contacts, args.messages_per_contact, args.events_per_contact)

    request = SchemaSet().request["properties"]
    categories = request["categories"]["default"]
    formats = request["formats"]["default"]
    mapping = load_mapping()
    missing = [c for c in categories if c not in mapping]
    if missing:
        raise BenchError(f"the source mapping has no query for {missing}: the export could not run either; "
                         "fix the mapping (PORTABILITY_MAPPING or mappings/reference.toml)")
    all_queries = [mapping[c] for c in categories]

    copy_contacts = Measurement("a", "(a)  COPY contacts -> /dev/null")
    copy_all = Measurement("a'", "(a') COPY all categories -> /dev/null")
    naive = Measurement("b", f"(b)  psycopg+jsonschema+json, {args.sample:,} sample")
    export = Measurement("c", f"(c)  portability export ({','.join(formats)})")
    export_contacts = Measurement("c'", "(c') the same, contacts only")

    with psycopg.connect(conninfo, application_name="export-bench") as conn:
        machine = machine_info(conn)
        conn.commit()  # the isolation level can only change outside a transaction
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        # Untimed: every measurement then reads from a warm cache, so none pays for the first read from disk.
        rows, _, wall = copy_to_nowhere(conn, all_queries, account_id)
        log.warning("warm-up: %d rows copied in %.2f s", rows, wall)

        for round_ in range(1, args.repeat + 1):
            log.warning("round %d of %d", round_, args.repeat)
            rows, size, wall = copy_to_nowhere(conn, [mapping["contacts"]], account_id)
            copy_contacts.add_run(rows, wall)
            copy_contacts.details["csv_bytes"] = size
            rows, size, wall = copy_to_nowhere(conn, all_queries, account_id)
            copy_all.add_run(rows, wall)
            copy_all.details["csv_bytes"] = size

            if not args.skip_naive:
                result, run = measure_naive(conninfo, account_id, args.sample)
                # The worker times its own pipeline, leaving out interpreter start-up and imports.
                naive.add_run(result["rows"], result["wall_s"], run.peak_rss_mib)
                naive.details.update(invalid_records=result["invalid"], jsonl_bytes=result["bytes"],
                                     process_wall_s=round(run.wall_s, 4))

            log.warning("running portability export --account %s ...", account_id)
            summary, run, cpu = measure_export(account_id)
            per_category = exported_rows(summary)
            export.add_run(sum(per_category.values()), run.wall_s, run.peak_rss_mib, cpu)
            export.details.update(
                contacts=per_category.get("contacts", 0),
                contacts_per_s=round(per_category.get("contacts", 0) / export.wall_s, 1),
                quarantined=sum(int(c.get("quarantined", 0)) for c in summary["counts"].values()),
                rows_by_category=per_category, archive_bytes=summary.get("bytes"),
                ru_maxrss_mib=round(run.maxrss_mib, 1), tree_rss_mib=round(run.tree_rss_mib, 1),
            )
            log.warning("export done in %.2f s", run.wall_s)

            # The same rows as (b) handles: contacts alone, validated, written, zipped and uploaded.
            log.warning("running portability export --account %s --categories contacts ...", account_id)
            summary, run, cpu = measure_export(account_id, ["contacts"])
            contacts = exported_rows(summary)["contacts"]
            export_contacts.add_run(contacts, run.wall_s, run.peak_rss_mib, cpu)
            export_contacts.details.update(contacts=contacts, archive_bytes=summary.get("bytes"),
                                           contacts_per_s=round(contacts / export_contacts.wall_s, 1))
            log.warning("contacts-only export done in %.2f s", run.wall_s)

    measurements = [copy_contacts, copy_all, *([] if args.skip_naive else [naive]), export, export_contacts]
    return {
        "machine": machine,
        "account": account_id,
        "contacts": args.contacts,
        "messages_per_contact": args.messages_per_contact,
        "events_per_contact": args.events_per_contact,
        "sample": None if args.skip_naive else args.sample,
        "repeat": args.repeat,
        "statistic": "best (minimum) wall of the repeats; peak RSS is the maximum of the repeats",
        "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "measurements": {m.key: m.to_dict() for m in measurements},
        **evaluate(copy_contacts, copy_all, None if args.skip_naive else naive, export, export_contacts),
    }


def evaluate(copy_contacts: Measurement, copy_all: Measurement, naive: Measurement | None,
             export: Measurement, export_contacts: Measurement) -> dict:
    contacts_per_s = export.details["contacts"] / export.wall_s
    ratios = {
        "c_over_a_all": export.wall_s / copy_all.wall_s,
        "c_over_a_contacts": export.wall_s / copy_contacts.wall_s,
        "c_contacts_over_a_contacts": export_contacts.wall_s / copy_contacts.wall_s,
        # (b)/(c) as time per row: how many times faster our export handles a contact than (b) does,
        # on the same rows (c'), and, erring against us, counting (c)'s whole wall against its contacts.
        "b_over_c_same_rows": export_contacts.rows_per_s / naive.rows_per_s if naive else None,
        "b_over_c_contacts": contacts_per_s / naive.rows_per_s if naive else None,
        "b_over_c_all_rows": export.rows_per_s / naive.rows_per_s if naive else None,
    }
    checks = {
        "copy_ratio": Check("(c)/(a') wall, same rows", ratios["c_over_a_all"], MAX_COPY_RATIO, True, "x"),
        "export_rss": Check("peak RSS of (c)", export.peak_rss_mib, MAX_EXPORT_RSS_MIB, True, " MiB"),
        "speedup": Check("(b)/(c'): contacts/s, same rows", ratios["b_over_c_same_rows"],
                         MIN_SPEEDUP_OVER_NAIVE, False, "x"),
    }
    warnings = []
    if export.rows != copy_all.rows:
        warnings.append(f"(c) wrote {export.rows} rows but (a') copied {copy_all.rows}: the ratio compares "
                        "different work")
    if export.details["contacts"] != copy_contacts.rows:
        warnings.append(f"(c) wrote {export.details['contacts']} contacts but (a) copied {copy_contacts.rows}")
    if naive and naive.details.get("invalid_records"):
        warnings.append(f"(b) found {naive.details['invalid_records']} invalid records in its sample")
    return {
        "ratios": {k: None if v is None else round(v, 3) for k, v in ratios.items()},
        "targets": {k: c.to_dict() for k, c in checks.items()},
        "all_pass": all(c.passed for c in checks.values() if c.passed is not None),
        "warnings": warnings,
    }


def print_report(results: dict) -> None:
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; PostgreSQL {m['postgresql']}, "
          f"Python {m['python']}, pyarrow {m['pyarrow']}")
    print(f"account: {results['account']} ({results['contacts']:,} contacts, "
          f"{results['contacts'] * results['messages_per_contact']:,} messages, "
          f"{results['contacts'] * results['events_per_contact']:,} events); "
          f"{results['repeat']} run(s) each, {results['statistic']}")
    print()
    header = f"{'measurement':<44} {'rows':>12} {'wall s':>9} {'rows/s':>12} {'peak RSS MiB':>13}"
    print(header)
    print("-" * len(header))
    for key, row in results["measurements"].items():
        rss = "n/a" if row["peak_rss_mib"] is None else f"{row['peak_rss_mib']:.0f}"
        print(f"{row['label']:<44} {row['rows']:>12,} {row['wall_s']:>9.3f} {row['rows_per_s']:>12,.0f} {rss:>13}")
        if key == "c":
            print(f"{'     of which contacts':<44} {row['contacts']:>12,} {'':>9} {row['contacts_per_s']:>12,.0f}")
    print()
    ratios = results["ratios"]
    print("for information:")
    print(f"{'(c)/(a) wall, contacts-only COPY':<44} {ratios['c_over_a_contacts']:>11.2f}x")
    label = "(c')/(a) wall, contacts only in both"
    print(f"{label:<44} {ratios['c_contacts_over_a_contacts']:>11.2f}x")
    if ratios["b_over_c_all_rows"] is not None:
        print(f"{'(b)/(c): (c) rows/s (all) over (b) rows/s':<44} {ratios['b_over_c_all_rows']:>11.2f}x")
        print(f"{'(b)/(c): (c) contacts/s over (b) rows/s':<44} {ratios['b_over_c_contacts']:>11.2f}x")
    print()
    print_cpu_split(results["measurements"])
    print()
    print("targets:")
    for check in results["targets"].values():
        digits = 0 if check["unit"] == " MiB" else 2
        value = "-" if check["value"] is None else f"{check['value']:.{digits}f}{check['unit']}"
        print(f"{check['name']:<44} {value:>12}   target {check['target']:<12} {check['verdict']}")
    for warning in results["warnings"]:
        print(f"warning: {warning}")


CPU_ROWS = {
    "available": "wall x cores", "busy": "busy, all processes", "stolen": "stolen by the hypervisor",
    "export": "  the export command", "postgresql": "  PostgreSQL", "s3_server": "  S3 server (weed)",
    "other": "  anything else",
}


def print_cpu_split(measurements: dict) -> None:
    """The machine's CPU-seconds during (c) and (c'), by who used them: where the wall time goes."""
    runs = {key: measurements[key]["cpu_s"] for key in ("c", "c'") if "cpu_s" in measurements.get(key, {})}
    if not runs:
        return
    print(f"{'CPU-seconds of the machine during':<44} " + " ".join(f"{f'({key})':>12}" for key in runs))
    for field_name, label in CPU_ROWS.items():
        print(f"{label:<44} " + " ".join(f"{split[field_name]:>12.1f}" for split in runs.values()))


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, not {text}")
    return value


def add_account_options(parser: argparse.ArgumentParser) -> None:
    """--messages-per-contact and --events-per-contact, passed to the seeder (shared by the benchmarks)."""
    from portability_dev.seed import SeedOptions

    defaults = SeedOptions()
    parser.add_argument("--messages-per-contact", metavar="M", type=non_negative_int,
                        default=defaults.messages_per_contact,
                        help=f"messages per contact of the benchmark account (the seeder's default "
                             f"{defaults.messages_per_contact}); another value than the default names the account "
                             "bench{N}m{M}e{E}-00001")
    parser.add_argument("--events-per-contact", metavar="E", type=non_negative_int,
                        default=defaults.events_per_contact,
                        help=f"events per contact of the benchmark account (the seeder's default "
                             f"{defaults.events_per_contact}); as for --messages-per-contact")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=positive_int, default=1_000_000,
                        help="contacts of the benchmark account bench{N}-00001 (default 1000000; 10000000 for 10M)")
    add_account_options(parser)
    parser.add_argument("--sample", type=positive_int, default=20_000,
                        help="contacts the straightforward pipeline (b) processes (default 20000)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="runs of each measurement; the best wall time counts (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the straightforward pipeline (b)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    parser.add_argument("--naive-worker", metavar="ACCOUNT", help=argparse.SUPPRESS)  # internal: run (b) here
    return parser


def report_run(name: str, args, run_benchmark, print_report, errors: tuple = ()) -> int:
    """Run a benchmark and print its report (with --json also its JSON): exit status 2 when it could not run,
    1 when --check finds a target missed. Shared by the benchmarks of bench/."""
    from portability.resources.config import ConfigurationError
    from portability.resources.mapping import MappingError

    try:
        results = run_benchmark(args)
    except (BenchError, ConfigurationError, MappingError, *errors) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    print_report(results)
    if args.json:
        print()
        print(json.dumps(results, indent=2))
    return 1 if args.check and not results["all_pass"] else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.naive_worker:
        return naive_worker(args)

    # Importing Airflow (for its connection lookup) configures logging to stdout; progress goes to stderr.
    import airflow.sdk  # noqa: F401

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True, format="export_bench: %(message)s")
    return report_run("export_bench", args, run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())
