"""Benchmark (d): `account_export` through a real scheduler, against (c) `portability export` on the same account.

    .venv/bin/python bench/airflow_bench.py                           # 1M contacts, and the demo-size account
    .venv/bin/python bench/airflow_bench.py --contacts 20000          # a quick run
    .venv/bin/python bench/airflow_bench.py --skip-big                # only the demo-size account
    .venv/bin/python bench/airflow_bench.py --contacts 10000000 --json

It seeds (or reuses) the account `bench{N}-00001` with N contacts (`bench{N}m{M}e{E}-00001` with
--messages-per-contact M --events-per-contact E off the seeder's defaults), as bench/export_bench.py does, and a
demo-size account `bench500-00001` (the demo's size: 500 contacts, the seeder's defaults for the rest),
then measures in the same run:

    (a') COPY (every default category's mapping query, ordered) TO STDOUT (FORMAT csv), blocks discarded:
         the same rows as the export, in one REPEATABLE READ, READ ONLY transaction, before Airflow starts
    (c)  `portability export --account ACCOUNT --json` with the default formats, a child process, before
         Airflow starts (so nothing else runs beside it): wall time and peak RSS of its process tree
    (d)  the `account_export` DAG run by `airflow standalone` (LocalExecutor, the scheduler, DAG processor,
         API server and triggerer of a real deployment) with conf {"account_id": ACCOUNT}: wall time from
         just before the REST trigger (POST /api/v2/dags/account_export/dagRuns) until GET of the run says
         success (polled every 0.2 s), each task's times, and the peak RSS of every task process

and compares the data files of the two archives (every member under `<root>/data/`, by the SHA-256 of
its compressed and of its decompressed bytes). It prints a table and PASS/FAIL against the targets
(the constants below); bench/README.md explains each figure.

Configuration is the command's: with no AIRFLOW_CONN_PORTABILITY_* set, the embedded stores under .state/
are started (or reused) and kept running. Airflow is started for the run (a temporary home, a fresh
metadata database in the same PostgreSQL, this checkout's dags/ and plugins/) and stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from export_bench import (
    BenchError,
    Check,
    CpuSplit,
    add_account_options,
    copy_to_nowhere,
    ensure_account,
    exported_rows,
    machine_info,
    measure_export,
    positive_int,
    report_run,
    use_embedded_defaults,
)

# Targets from the issue.
MAX_SCHEDULER_RATIO = 1.15   # (d) wall / (c) wall, same account
MAX_TASK_RSS_MIB = 512       # peak RSS of any single task process of (d)
MAX_DEMO_SECONDS = 10.0      # a demo-size account, REST trigger to success
MAX_RAW_COPY_RATIO = 1.3     # (d) wall / (a') wall: the DAG run against the raw COPY of the same rows

DAG_ID = "account_export"
DEMO_CONTACTS = 500          # dev/portability_dev/demo.py seeds its accounts with 500 contacts (other sizes: defaults)
RSS_SAMPLE_SECONDS = 0.1
POLL_SECONDS = 0.2
RUN_TIMEOUT_SECONDS = 1800
READ_BLOCK = 1 << 20
EXECUTOR_TITLE = "airflow worker -- LocalExecutor"  # an executor worker, which supervises one task at a time
TASK_TITLE = "airflow worker -- "                   # a task process: the Task SDK sets "airflow worker -- <ti id>"
DATA_SUFFIXES = (".csv", ".jsonl", ".parquet")
METADATA_DATABASE = "airflow_bench"

log = logging.getLogger("airflow_bench")


# --------------------------------------------------------------------------------------------
# The REST API of the running Airflow
# --------------------------------------------------------------------------------------------

class Api:
    """The calls an outside caller makes: a JWT from /auth/token, then /api/v2 (never printed)."""

    def __init__(self, airflow):
        import requests

        self.airflow = airflow
        self.session = requests.Session()
        self._login()

    def _login(self) -> None:
        self.session.headers["Authorization"] = f"Bearer {self.airflow.token()}"

    def call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, f"{self.airflow.base_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code == 401:  # the token expired during a long run
            self._login()
            response = self.session.request(method, f"{self.airflow.base_url}/api/v2{path}", timeout=30, **kwargs)
        return response

    def get(self, path: str, **params) -> dict:
        response = self.call("GET", path, params=params)
        if response.status_code != 200:
            raise BenchError(f"GET /api/v2{path} answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    def pages(self, path: str, field_name: str, **params) -> list[dict]:
        items: list[dict] = []
        while True:
            page = self.get(path, limit=100, offset=len(items), **params)
            items += page[field_name]
            if not page[field_name] or len(items) >= page["total_entries"]:
                return items

    @staticmethod
    def run_path(run_id: str) -> str:
        return f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}"

    def trigger(self, run_id: str, conf: dict) -> None:
        response = self.call("POST", f"/dags/{DAG_ID}/dagRuns",
                             json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        if response.status_code not in (200, 201):
            raise BenchError(f"triggering {DAG_ID} answered HTTP {response.status_code}: {response.text[:300]}")

    def run(self, run_id: str) -> dict:
        return self.get(self.run_path(run_id))

    def task_instances(self, run_id: str) -> list[dict]:
        return self.pages(f"{self.run_path(run_id)}/taskInstances", "task_instances")

    def return_values(self, run_id: str) -> list[tuple[str, int, object]]:
        """(task_id, map_index, value) of every return_value XCom of the run."""
        entries = self.pages(f"{self.run_path(run_id)}/taskInstances/~/xcomEntries", "xcom_entries",
                             xcom_key="return_value")
        values = []
        for entry in entries:
            item = self.get(f"{self.run_path(run_id)}/taskInstances/{quote(entry['task_id'], safe='')}"
                            f"/xcomEntries/return_value", map_index=entry["map_index"])
            values.append((entry["task_id"], entry["map_index"], _xcom_value(item.get("value"))))
        return values


def _xcom_value(value):
    """The raw stored value: JSON, perhaps as a string, perhaps in the serializer's envelope."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict) and "__data__" in value and "__classname__" in value:
        value = value["__data__"]
    return value


def find_summary(api: Api, run_id: str) -> tuple[str, dict]:
    """The task whose return value is the run's summary (a dict with the archive's key and sha256), and it.

    Found by scanning the run's return values, so it does not depend on the DAG's task names.
    """
    found = [(task_id, value) for task_id, _map_index, value in api.return_values(run_id)
             if isinstance(value, dict) and "key" in value and "sha256" in value]
    if not found:
        raise BenchError(f"no task of run {run_id} returned a dict with 'key' and 'sha256': cannot find its archive")
    # The one that also names the bucket, if several carry the archive (deliver may repeat the summary).
    found.sort(key=lambda item: ("bucket" not in item[1], "counts" not in item[1]))
    return found[0]


# --------------------------------------------------------------------------------------------
# Peak RSS of the task processes under the standalone
# --------------------------------------------------------------------------------------------

@dataclass
class SeenProcess:
    ppid: int
    title: str = ""
    peak_rss: int = 0
    titles: set[str] = field(default_factory=set)
    first_seen: float = 0.0  # time.time() of the first and last sample that found it
    last_seen: float = 0.0


class AirflowRssSampler(threading.Thread):
    """Every 0.1 s, the RSS of every process under the standalone, with its title; a spike can fall between."""

    def __init__(self, root_pid: int):
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.seen: dict[int, SeenProcess] = {}
        self.peak_tree_bytes = 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        while not self._done.is_set():
            total = 0
            try:
                processes = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    seen = self.seen.get(process.pid)
                    if seen is None:
                        seen = self.seen[process.pid] = SeenProcess(ppid=process.ppid(), first_seen=time.time())
                    title = " ".join(process.cmdline()).strip()
                except psutil.Error:  # exited between listing and reading
                    continue
                total += rss
                seen.peak_rss = max(seen.peak_rss, rss)
                seen.last_seen = time.time()
                if title:
                    seen.title = title
                    seen.titles.add(title)
            self.peak_tree_bytes = max(self.peak_tree_bytes, total)
            self._done.wait(RSS_SAMPLE_SECONDS)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def task_processes(self) -> dict[int, SeenProcess]:
        """The processes that ran a task: an executor worker forks one, which first carries the worker's title,
        then the Task SDK's, `airflow worker -- <task instance id>`."""
        return {pid: p for pid, p in self.seen.items()
                if any(t.startswith(TASK_TITLE) and not t.startswith(EXECUTOR_TITLE) for t in p.titles)}

    def executor_workers(self) -> dict[int, SeenProcess]:
        tasks = self.task_processes()
        return {pid: p for pid, p in self.seen.items()
                if pid not in tasks and any(t.startswith(EXECUTOR_TITLE) for t in p.titles)}


def task_processes_by_ti(sampler: AirflowRssSampler, task_instances: list[dict]) -> dict[str, SeenProcess]:
    """The process of each task instance id: by the title the Task SDK sets, else by the pid Airflow recorded."""
    processes = sampler.task_processes()
    by_ti: dict[str, SeenProcess] = {}
    for process in processes.values():
        for title in process.titles:
            if not title.startswith(EXECUTOR_TITLE):
                by_ti[title.removeprefix(TASK_TITLE).strip()] = process
    for ti in task_instances:
        if ti["id"] not in by_ti and ti.get("pid") in processes:
            by_ti[ti["id"]] = processes[ti["pid"]]
    return by_ti


def airflow_cpu_s(root_pid: int) -> dict[int, float]:
    """CPU-seconds so far of each process under the standalone, with the children each has reaped (tasks)."""
    import psutil

    used = {}
    try:
        processes = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return used
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            used[process.pid] = times.user + times.system + times.children_user + times.children_system
    return used


# --------------------------------------------------------------------------------------------
# (d): one run of the DAG
# --------------------------------------------------------------------------------------------

def _parse_time(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def measure_dag_run(api: Api, account_id: str, root_pid: int, timeout: float) -> dict:
    """Trigger, poll until success; the run's figures, its tasks and its archive's summary."""
    run_id = f"bench-{account_id}-{uuid.uuid4().hex[:12]}"
    sampler = AirflowRssSampler(root_pid)
    sampler.start()
    cpu_before = airflow_cpu_s(root_pid)
    cpu = CpuSplit()
    try:
        triggered_at = time.time()
        start = time.perf_counter()
        api.trigger(run_id, {"account_id": account_id})
        while True:
            state = api.run(run_id)["state"]
            if state == "success":
                wall = time.perf_counter() - start
                break
            if state == "failed":
                raise BenchError(f"run {run_id} of {DAG_ID} failed: {failed_tasks(api, run_id)}")
            if time.perf_counter() - start > timeout:
                raise BenchError(f"run {run_id} of {DAG_ID} was still {state} after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    finally:
        sampler.stop()
    cpu_after = airflow_cpu_s(root_pid)
    # A process that ended was reaped by its parent, which now counts its CPU: compare the sums, not per pid.
    airflow_cpu = sum(cpu_after.values()) - sum(cpu_before.values())
    split = cpu.finish(airflow_cpu, wall, os.cpu_count() or 1)
    split["airflow"] = split.pop("export")

    run = api.run(run_id)
    tis = api.task_instances(run_id)
    summary_task, summary = find_summary(api, run_id)
    tasks = task_table(tis, task_processes_by_ti(sampler, tis), triggered_at)
    worst = max(tasks, key=lambda t: t["peak_rss_mib"] or 0.0, default=None)
    workers = sampler.executor_workers()
    return {
        "run_id": run_id,
        "wall_s": wall,
        "server_wall_s": (_parse_time(run.get("end_date")) or triggered_at) - triggered_at,
        "queued_after_s": _offset(run.get("queued_at"), triggered_at),
        "started_after_s": _offset(run.get("start_date"), triggered_at),
        "tasks": tasks,
        "idle_s": idle_seconds(tasks, wall),
        "task_processes_seen": len(sampler.task_processes()),
        "max_task_rss_mib": worst["peak_rss_mib"] if worst else None,
        "max_task_rss_task": worst["task"] if worst else None,
        "max_executor_worker_rss_mib": round(max((p.peak_rss for p in workers.values()), default=0) / 2**20, 1),
        "airflow_tree_peak_rss_mib": round(sampler.peak_tree_bytes / 2**20, 1),
        "cpu_s": split,
        "summary_task": summary_task,
        "summary": summary,
    }


def failed_tasks(api: Api, run_id: str) -> str:
    bad = [f"{ti['task_id']}{_map_suffix(ti)} {ti['state']}" for ti in api.task_instances(run_id)
           if ti["state"] not in ("success", "skipped")]
    return ", ".join(bad) or "no task failed (the run was marked failed)"


def _map_suffix(ti: dict) -> str:
    return "" if ti.get("map_index", -1) < 0 else f"[{ti['map_index']}]"


def _offset(text: str | None, origin: float) -> float | None:
    moment = _parse_time(text)
    return None if moment is None else round(moment - origin, 3)


def task_table(tis: list[dict], processes: dict[str, SeenProcess], origin: float) -> list[dict]:
    rows = []
    for ti in tis:
        process = processes.get(ti["id"])
        rows.append({
            "task": f"{ti['task_id']}{_map_suffix(ti)}",
            "label": ti.get("rendered_map_index") or "",
            "state": ti["state"],
            "try": ti["try_number"],
            "scheduled_s": _offset(ti.get("scheduled_when"), origin),
            "queued_s": _offset(ti.get("queued_when"), origin),
            "start_s": _offset(ti.get("start_date"), origin),
            "end_s": _offset(ti.get("end_date"), origin),
            "duration_s": None if ti.get("duration") is None else round(ti["duration"], 3),
            # The task's process as sampled: when it was first and last seen (it outlives end_s by its exit).
            "process_s": None if process is None else [round(process.first_seen - origin, 2),
                                                       round(process.last_seen - origin, 2)],
            "peak_rss_mib": None if process is None else round(process.peak_rss / 2**20, 1),
        })
    rows.sort(key=lambda r: (r["start_s"] is None, r["start_s"] or 0.0, r["task"]))
    return rows


def idle_seconds(tasks: list[dict], wall: float) -> float:
    """Seconds between the trigger and success when no task of the run was running: the scheduling overhead."""
    intervals = sorted((t["start_s"], t["end_s"]) for t in tasks if t["start_s"] is not None and t["end_s"] is not None)
    busy, covered_to = 0.0, 0.0
    for begin, end in intervals:
        begin, end = max(begin, covered_to), min(end, wall)
        if end > begin:
            busy += end - begin
            covered_to = end
    return round(max(wall - busy, 0.0), 3)


# --------------------------------------------------------------------------------------------
# The archives: data members compared without downloading them to disk
# --------------------------------------------------------------------------------------------

class S3Range(io.RawIOBase):
    """A seekable, read-only view of an object, read with ranged GETs."""

    def __init__(self, client, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key
        self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(base + offset, 0)
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size or not len(buffer):
            return 0
        end = min(self.position + len(buffer), self.size) - 1
        body = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end}")["Body"]
        data = body.read()
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def data_members(client, bucket: str, key: str) -> dict[str, dict]:
    """Every member under `<root>/data/`, by its path below the root: sizes, CRC and the SHA-256 of its
    compressed bytes (as stored) and of its content, in one pass over the archive."""
    import zipfile

    raw = S3Range(client, bucket, key)
    members = {}
    with io.BufferedReader(raw, buffer_size=8 * READ_BLOCK) as stream, zipfile.ZipFile(stream) as archive:
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
        for info in infos:
            root, _, path = info.filename.partition("/")
            if not path.startswith("data/") or info.is_dir():
                continue
            stream.seek(info.header_offset)
            header = _LOCAL_HEADER.unpack(stream.read(_LOCAL_HEADER.size))
            if header[0] != b"PK\x03\x04":
                raise BenchError(f"{info.filename}: no local header at its offset in the archive")
            stream.seek(header[-2] + header[-1], io.SEEK_CUR)
            stored, content = hashlib.sha256(), hashlib.sha256()
            inflate = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
            if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED):
                raise BenchError(f"{info.filename}: compression method {info.compress_type} is not compared here")
            crc, size, left = 0, 0, info.compress_size
            while left:
                chunk = stream.read(min(READ_BLOCK, left))
                if not chunk:
                    raise BenchError(f"{info.filename}: the archive ends inside this member")
                left -= len(chunk)
                stored.update(chunk)
                plain = inflate.decompress(chunk) if inflate else chunk
                content.update(plain)
                crc, size = zlib.crc32(plain, crc), size + len(plain)
            if inflate:
                plain = inflate.flush()
                content.update(plain)
                crc, size = zlib.crc32(plain, crc), size + len(plain)
            if (crc, size) != (info.CRC, info.file_size):
                raise BenchError(f"{info.filename}: its content does not match the central directory's CRC or size")
            members[path] = {"size": info.file_size, "compressed_size": info.compress_size, "crc": info.CRC,
                             "method": info.compress_type, "sha256": content.hexdigest(),
                             "stored_sha256": stored.hexdigest()}
    return members


def is_data_file(path: str) -> bool:
    """The records: data/<category>.<format> and data/errors/…; not datapackage.json or the schemas."""
    return path.startswith("data/errors/") or (path.count("/") == 1 and path.endswith(DATA_SUFFIXES))


def compare_archives(client, reference: dict, other: dict) -> dict:
    """Data members of two archives compared by path below their roots (the export ids differ)."""
    ours = data_members(client, reference["bucket"], reference["key"])
    theirs = data_members(client, other["bucket"], other["key"])
    differing_files, differing_other = [], []
    for path in sorted(set(ours) | set(theirs)):
        same = path in ours and path in theirs and ours[path] == theirs[path]
        if not same:
            (differing_files if is_data_file(path) else differing_other).append(path)
    files = [p for p in ours if is_data_file(p)]
    return {"identical": not differing_files, "data_files": len(files),
            "data_bytes": sum(ours[p]["size"] for p in files), "differing_files": differing_files,
            "differing_other_data_members": differing_other}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

@dataclass
class AccountResult:
    account_id: str
    contacts: int
    a_walls: list[float] = field(default_factory=list)  # (a'): the raw COPY of the export's rows
    a_rows: int = 0
    a_csv_bytes: int = 0
    c_walls: list[float] = field(default_factory=list)
    c_rss_mib: float = 0.0
    c_cpu_s: dict | None = None
    c_summaries: list[dict] = field(default_factory=list)
    d_runs: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)

    @property
    def best_d(self) -> dict | None:
        return min(self.d_runs, key=lambda r: r["wall_s"], default=None)

    def to_dict(self) -> dict:
        best = self.best_d
        a_wall = min(self.a_walls) if self.a_walls else None
        c_wall = min(self.c_walls) if self.c_walls else None
        d_wall = best["wall_s"] if best else None
        summary = self.c_summaries[0] if self.c_summaries else None
        rows = exported_rows(summary) if summary else {}
        return {
            "account": self.account_id,
            "contacts": self.contacts,
            "rows": sum(rows.values()),
            "rows_by_category": rows,
            "archive_bytes": summary.get("bytes") if summary else None,
            "a": {"wall_s": _round(a_wall), "walls_s": [round(w, 3) for w in self.a_walls], "rows": self.a_rows,
                  "csv_bytes": self.a_csv_bytes},
            "c": {"wall_s": _round(c_wall), "walls_s": [round(w, 3) for w in self.c_walls],
                  "peak_rss_mib": round(self.c_rss_mib, 1), "cpu_s": self.c_cpu_s},
            "d": None if best is None else {
                "wall_s": round(d_wall, 3), "walls_s": [round(r["wall_s"], 3) for r in self.d_runs],
                "worst_wall_s": round(max(r["wall_s"] for r in self.d_runs), 3),
                "max_task_rss_mib": max((r["max_task_rss_mib"] or 0.0 for r in self.d_runs), default=None),
                "max_task_rss_task": max(self.d_runs, key=lambda r: r["max_task_rss_mib"] or 0.0)["max_task_rss_task"],
                **{k: _round(v) if isinstance(v, float) else v for k, v in best.items()
                   if k not in ("wall_s", "summary", "max_task_rss_mib", "max_task_rss_task")},
            },
            "d_over_c": _round(d_wall / c_wall) if c_wall and d_wall else None,
            "d_over_a": _round(d_wall / a_wall) if a_wall and d_wall else None,
            "c_over_a": _round(c_wall / a_wall) if a_wall and c_wall else None,
            "data_identical": all(c["identical"] for c in self.comparisons) if self.comparisons else None,
            "comparisons": self.comparisons,
        }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def archive_ref(summary: dict) -> dict:
    return {"bucket": summary["bucket"], "key": summary["key"]}


def public_summary(summary: dict) -> dict:
    """What the report keeps of a summary: no key (it holds an unguessable token) and no link."""
    return {k: summary[k] for k in ("export_id", "bytes", "sha256") if k in summary}


def git_state() -> dict:
    """The revision of the code measured: the checkout the `portability` package is imported from.

    A copy outside git (e.g. `git archive HEAD`, to measure a commit while the work tree changes) names
    its revision in PORTABILITY_BENCH_REVISION.
    """
    import portability

    repo = Path(portability.__file__).resolve().parents[2]

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return {"head": os.environ.get("PORTABILITY_BENCH_REVISION", "unknown (not a git checkout)"),
                "uncommitted_in": []}
    changed = git("status", "--porcelain", "--", "plugins", "dags").splitlines()
    return {"head": head, "uncommitted_in": sorted({line[3:].split("/", 1)[0] for line in changed})}


def store_environment() -> dict[str, str]:
    use_embedded_defaults()
    prefixes = ("AIRFLOW_CONN_PORTABILITY_", "PORTABILITY_", "AIRFLOW__DATABASE__")
    return {k: v for k, v in os.environ.items() if k.startswith(prefixes)}


def default_queries() -> list:
    """The mapping query of every category the export writes by default."""
    from portability.records.schemas import SchemaSet
    from portability.resources.mapping import load_mapping

    categories = SchemaSet().request["properties"]["categories"]["default"]
    mapping = load_mapping()
    missing = [c for c in categories if c not in mapping]
    if missing:
        raise BenchError(f"the source mapping has no query for {missing}: the export could not run either")
    return [mapping[c] for c in categories]


def warm_up_and_copy(conninfo: str, accounts: list[AccountResult], repeat: int) -> None:
    """One untimed read of every category of each account, so that no measurement pays for the first read;
    then (a'), `repeat` timed COPYs of the same rows, before anything else runs."""
    import psycopg

    queries = default_queries()
    with psycopg.connect(conninfo, application_name="airflow-bench") as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        for account in accounts:
            rows, _, wall = copy_to_nowhere(conn, queries, account.account_id)
            log.warning("warm-up: %s, %d rows copied in %.2f s", account.account_id, rows, wall)
        for account in accounts:
            for round_ in range(1, repeat + 1):
                rows, size, wall = copy_to_nowhere(conn, queries, account.account_id)
                if account.a_walls and rows != account.a_rows:
                    log.warning("(a') %s: %d rows this run, %d before; the data changed", account.account_id,
                                rows, account.a_rows)
                account.a_walls.append(wall)
                account.a_rows, account.a_csv_bytes = rows, size
                log.warning("(a') round %d of %d: %s, %d rows copied in %.2f s", round_, repeat,
                            account.account_id, rows, wall)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BenchError(f"--airflow-env takes NAME=VALUE, not {pair!r}")
        settings[name] = value
    return settings


def run_benchmark(args) -> dict:
    import psycopg

    from portability.resources import config
    from portability.resources.storage import ObjectStore
    from portability_dev import airflow_local

    store_env = store_environment()
    conninfo = config.source_settings().conninfo
    accounts: list[AccountResult] = []
    if not args.skip_big:
        accounts.append(AccountResult(ensure_account(conninfo, args.contacts, args.messages_per_contact,
                                                     args.events_per_contact), args.contacts))
    if args.demo_account and not any(a.contacts == DEMO_CONTACTS for a in accounts):
        accounts.append(AccountResult(ensure_account(conninfo, DEMO_CONTACTS), DEMO_CONTACTS))
    if not accounts:
        raise BenchError("nothing to measure: --skip-big with --no-demo-account")
    with psycopg.connect(conninfo) as conn:
        machine = machine_info(conn)
    # (a') and (c) first, with nothing else running: Airflow's idle processes would otherwise slow them down too.
    warm_up_and_copy(conninfo, accounts, args.repeat)

    # (c) first, with nothing else running: Airflow's idle processes would otherwise slow it down too.
    for account in accounts:
        for round_ in range(1, args.repeat + 1):
            log.warning("(c) round %d of %d: portability export --account %s ...", round_, args.repeat,
                        account.account_id)
            summary, run, cpu = measure_export(account.account_id)
            if not account.c_walls or run.wall_s < min(account.c_walls):
                account.c_cpu_s = cpu
            account.c_walls.append(run.wall_s)
            account.c_rss_mib = max(account.c_rss_mib, run.peak_rss_mib)
            account.c_summaries.append(summary)
            log.warning("(c) done in %.2f s", run.wall_s)

    log.warning("starting airflow standalone (LocalExecutor, parallelism %d) ...", args.parallelism)
    began = time.perf_counter()
    airflow_info: dict = {"executor": "LocalExecutor", "parallelism": args.parallelism,
                          "settings": sorted(parse_settings(args.airflow_env))}
    with airflow_local.running_airflow(store_env, database=METADATA_DATABASE, parallelism=args.parallelism,
                                       extra_env=parse_settings(args.airflow_env)) as airflow:
        airflow_info["ready_after_s"] = round(time.perf_counter() - began, 1)
        log.warning("airflow ready in %.0f s: %s is parsed and unpaused", airflow_info["ready_after_s"], DAG_ID)
        api = Api(airflow)
        try:
            if args.warmup_run:
                # Untimed: the scheduler's first run pays for starting executor workers and first imports,
                # which a long-running deployment has behind it.
                # On the demo-size account even when it is not measured: a warm-up of the big one would
                # double the run for nothing.
                warm_account = ensure_account(conninfo, DEMO_CONTACTS)
                log.warning("(d) untimed warm-up run for %s ...", warm_account)
                first = measure_dag_run(api, warm_account, airflow.pid, args.run_timeout)
                airflow_info["warmup_run_s"] = round(first["wall_s"], 3)
                log.warning("warm-up run done in %.2f s", first["wall_s"])
            for account in accounts:
                for round_ in range(1, args.repeat + 1):
                    log.warning("(d) round %d of %d: %s via the scheduler ...", round_, args.repeat,
                                account.account_id)
                    result = measure_dag_run(api, account.account_id, airflow.pid, args.run_timeout)
                    account.d_runs.append(result)
                    log.warning("(d) done in %.2f s (%d tasks, summary from task %s)", result["wall_s"],
                                len(result["tasks"]), result["summary_task"])
        except BenchError as exc:
            raise BenchError(f"{exc}\nairflow standalone's log ends with:\n{airflow.log_tail()}") from None

    client = ObjectStore(config.storage_settings()).client
    for account in accounts:
        reference = account.c_summaries[0]
        for run in account.d_runs:
            log.warning("comparing the data files of (c) and (d) for %s ...", account.account_id)
            compared = compare_archives(client, archive_ref(reference), archive_ref(run["summary"]))
            account.comparisons.append({"c": public_summary(reference), "d": public_summary(run["summary"]),
                                        **compared})
    return {
        "machine": machine,
        "git": git_state(),
        "airflow": airflow_info,
        "messages_per_contact": args.messages_per_contact,
        "events_per_contact": args.events_per_contact,
        "repeat": args.repeat,
        "statistic": "best (minimum) wall of the repeats; peak RSS the maximum; the demo target on the worst run",
        "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "accounts": [a.to_dict() for a in accounts],
        **evaluate(accounts, args),
    }


def evaluate(accounts: list[AccountResult], args) -> dict:
    big = next((a.to_dict() for a in accounts if a.contacts == args.contacts and not args.skip_big), None)
    demo = next((a.to_dict() for a in accounts if a.contacts == DEMO_CONTACTS), None)
    all_d = [a.to_dict() for a in accounts]
    identical = [a["data_identical"] for a in all_d if a["data_identical"] is not None]
    rss = [a["d"]["max_task_rss_mib"] for a in all_d if a["d"] and a["d"]["max_task_rss_mib"] is not None]
    checks = {
        "scheduler_ratio": Check("(d)/(c) wall, same account", big["d_over_c"] if big else None,
                                 MAX_SCHEDULER_RATIO, True, "x"),
        "raw_copy_ratio": Check("(d)/(a') wall, same rows", big["d_over_a"] if big else None,
                                MAX_RAW_COPY_RATIO, True, "x"),
        "identical": Check("data files of (d) identical to (c)'s", None if not identical else float(all(identical)),
                           1, False, ""),
        "task_rss": Check("peak RSS of any task process of (d)", max(rss) if rss else None, MAX_TASK_RSS_MIB,
                          True, " MiB"),
        "demo_latency": Check("demo-size: REST trigger to success", demo["d"]["worst_wall_s"] if demo else None,
                              MAX_DEMO_SECONDS, True, " s"),
    }
    targets = {k: c.to_dict() for k, c in checks.items()}
    if targets["identical"]["value"] is not None:
        targets["identical"]["value"] = "yes" if all(identical) else "no"
        targets["identical"]["target"] = "yes"
    warnings = [f"{a['account']}: (c) wrote {a['rows']:,} rows but (a') copied {a['a']['rows']:,}: the ratio "
                "compares different work" for a in all_d if a["a"]["walls_s"] and a["rows"] != a["a"]["rows"]]
    return {"targets": targets, "all_pass": all(c.passed for c in checks.values() if c.passed is not None),
            "warnings": warnings}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def _fmt(value, spec: str = ".2f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


A_WALL, D_OVER_A = "(a') s", "(d)/(a')"


def print_report(results: dict) -> None:
    m, git, airflow = results["machine"], results["git"], results["airflow"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; PostgreSQL {m['postgresql']}, "
          f"Python {m['python']}, pyarrow {m['pyarrow']}")
    dirty = f" (uncommitted changes in {', '.join(git['uncommitted_in'])})" if git["uncommitted_in"] else ""
    print(f"code: git {git['head']}{dirty}")
    warm = f", untimed first run {airflow['warmup_run_s']:.2f} s" if "warmup_run_s" in airflow else ""
    print(f"airflow standalone: {airflow['executor']}, parallelism {airflow['parallelism']}, ready "
          f"{airflow['ready_after_s']:.0f} s after start{warm}")
    print(f"{results['repeat']} run(s) each, {results['statistic']}")
    print()
    header = (f"{'account':<24} {'contacts':>10} {'rows':>11} {A_WALL:>8} {'(c) s':>8} {'(d) s':>8} "
              f"{'(d)/(c)':>8} {D_OVER_A:>9} {'(c) RSS':>8} {'task RSS':>9} {'idle s':>7} {'tasks':>6}  identical")
    print(header)
    print("-" * len(header))
    for a in results["accounts"]:
        d = a["d"] or {}
        ident = {True: "yes", False: "NO", None: "-"}[a["data_identical"]]
        print(f"{a['account']:<24} {a['contacts']:>10,} {a['rows']:>11,} {_fmt(a['a']['wall_s']):>8} "
              f"{_fmt(a['c']['wall_s']):>8} {_fmt(d.get('wall_s')):>8} {_fmt(a['d_over_c'], '.2f'):>7}x "
              f"{_fmt(a['d_over_a'], '.2f'):>8}x {a['c']['peak_rss_mib']:>8.0f} "
              f"{_fmt(d.get('max_task_rss_mib'), '.0f'):>9} {_fmt(d.get('idle_s')):>7} "
              f"{len(d.get('tasks', [])):>6}  {ident}")
    print("(a') s: raw COPY of the same rows as (c) (every default category, blocks discarded), best wall;")
    print("(c) s / (d) s: wall, REST trigger to success for (d); task RSS: the largest task process of (d), MiB;")
    print("idle s: time of (d) with no task of the run running (scheduling overhead)")
    for a in results["accounts"]:
        print()
        print(f"{a['account']}: rows of (c) by category: "
              + ", ".join(f"{category} {rows:,}" for category, rows in a["rows_by_category"].items()))
        cpu = a["c"]["cpu_s"]
        if cpu:
            print(f"CPU-seconds during (c): wall x cores {cpu['available']:.1f}, busy {cpu['busy']:.1f} (export "
                  f"{cpu['export']:.1f}, PostgreSQL {cpu['postgresql']:.1f}, S3 {cpu['s3_server']:.1f}, other "
                  f"{cpu['other']:.1f}), stolen {cpu['stolen']:.1f}")
        if a["d"]:
            print_tasks(a)
        for round_, comparison in enumerate(a["comparisons"], 1):
            which = f"{a['account']}, run {round_} of (d)"
            if not comparison["identical"]:
                print(f"{which}: data files that differ from (c)'s: {', '.join(comparison['differing_files'])}")
        others = sorted({m for c in a["comparisons"] for m in c["differing_other_data_members"]})
        if others:
            print(f"{a['account']}: other data/ members that differ (for information): {', '.join(others)}")
        if a["comparisons"]:
            c = a["comparisons"][0]
            print(f"{a['account']}: {c['data_files']} data files ({c['data_bytes']:,} bytes) compared with (c)'s, "
                  f"{len(a['comparisons'])} run(s) of (d)")
    print()
    print("targets:")
    for check in results["targets"].values():
        value = check["value"]
        if isinstance(value, float):
            value = f"{value:.0f}{check['unit']}" if check["unit"] == " MiB" else f"{value:.2f}{check['unit']}"
        print(f"{check['name']:<44} {value if value is not None else '-':>12}   target {check['target']:<12} "
              f"{check['verdict']}")
    for warning in results.get("warnings", []):
        print(f"warning: {warning}")


def print_tasks(a: dict) -> None:
    d = a["d"]
    print()
    print(f"tasks of (d) for {a['account']} (best run, {d['wall_s']:.2f} s; seconds after the trigger; run "
          f"queued +{_fmt(d['queued_after_s'])}, started +{_fmt(d['started_after_s'])}; largest task process "
          f"{_fmt(d['max_task_rss_mib'], '.0f')} MiB in {d['max_task_rss_task']}; executor worker "
          f"{d['max_executor_worker_rss_mib']:.0f} MiB; all of Airflow {d['airflow_tree_peak_rss_mib']:.0f} MiB)")
    header = (f"{'task':<36} {'state':<8} {'try':>3} {'sched':>7} {'queued':>7} {'start':>7} {'end':>7} "
              f"{'dur':>7} {'process':>13} {'RSS MiB':>8}")
    print(header)
    for t in d["tasks"]:
        process = "-" if t["process_s"] is None else f"{t['process_s'][0]:.2f}-{t['process_s'][1]:.2f}"
        print(f"{t['task'][:36]:<36} {t['state'] or '-':<8} {t['try']:>3} {_fmt(t['scheduled_s']):>7} "
              f"{_fmt(t['queued_s']):>7} {_fmt(t['start_s']):>7} {_fmt(t['end_s']):>7} {_fmt(t['duration_s']):>7} "
              f"{process:>13} {_fmt(t['peak_rss_mib'], '.0f'):>8}")
    cpu = d["cpu_s"]
    print(f"CPU-seconds during (d): wall x cores {cpu['available']:.1f}, busy {cpu['busy']:.1f} (Airflow "
          f"{cpu['airflow']:.1f}, PostgreSQL {cpu['postgresql']:.1f}, S3 {cpu['s3_server']:.1f}, other "
          f"{cpu['other']:.1f}), stolen {cpu['stolen']:.1f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=positive_int, default=1_000_000,
                        help="contacts of the benchmark account bench{N}-00001 (default 1000000)")
    add_account_options(parser)
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="runs of (a'), (c) and (d) per account; the best wall counts (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument("--demo-account", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also measure the demo-size account bench{DEMO_CONTACTS}-00001 (default: yes)")
    parser.add_argument("--skip-big", action="store_true", help="only the demo-size account")
    parser.add_argument("--parallelism", type=positive_int, default=4, help="Airflow's core.parallelism (default 4)")
    parser.add_argument("--warmup-run", action=argparse.BooleanOptionalAction, default=True,
                        help="one untimed DAG run of the smallest account after Airflow starts (default: yes)")
    parser.add_argument("--airflow-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra environment variable for airflow standalone, e.g. "
                             "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=1 (repeatable)")
    parser.add_argument("--run-timeout", type=positive_int, default=RUN_TIMEOUT_SECONDS,
                        help=f"seconds a DAG run may take (default {RUN_TIMEOUT_SECONDS})")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # Importing Airflow (for its connection lookup) configures logging to stdout; progress goes to stderr.
    import airflow.sdk  # noqa: F401

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True, format="airflow_bench: %(message)s")
    import structlog

    # Airflow's own loggers are structlog's, at INFO, to stdout: keep its "credentials retrieved" lines off the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from portability_dev.airflow_local import AirflowNotReady

    return report_run("airflow_bench", args, run_benchmark, print_report, errors=(AirflowNotReady,))


if __name__ == "__main__":
    sys.exit(main())
