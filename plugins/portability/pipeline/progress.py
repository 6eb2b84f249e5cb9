"""How far a long step has got, and where its time goes: for the task log, the ledger and the command's bar.

Each step that moves an account's rows (`export_in_process`, `take_snapshot`, `export_shard`,
`package`) keeps one `Progress`. It counts rows and pieces per category as batches pass, and
charges time to four phases:

    reading     rows from the source, or staged objects from object storage
    validating  judging each batch against its record schema
    writing     rendering CSV and JSON Lines and deflating them; the ZIP, when packaging
    uploading   storage requests, and waits for an upload to take what was written

Time is taken per batch or chunk (`perf_counter` deltas), never per row, so counting costs
nothing measurable. A phase's time is its own on its thread: an upload wait inside writing
counts as uploading only. Phases run on several threads at once (the source readers, the
piece's thread, the upload senders), so together they may exceed the wall time; their shares
say which one the step spent most on.

While the step runs, a timer thread logs a progress line every `interval` seconds (10 by
default, `PORTABILITY_PROGRESS_SECONDS`), also while the step is stuck inside one slow call;
records each category's progress in the ledger every few seconds (`ledger.record_progress`,
under the step's part: a shard's label, or "" for an export done whole); and tells the
watchers (the command's progress bar). When the step ends, in success or failure, it logs
where its time went. Lines name the export and its categories, never a data subject or a link.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PHASES = ("reading", "validating", "writing", "uploading")
DEFAULT_INTERVAL_SECONDS = 10.0  # the longest a long task stays silent in its log
RECORD_INTERVAL_SECONDS = 5.0    # the most often a step writes its progress to the ledger
WATCH_INTERVAL_SECONDS = 0.5     # how often watchers (a progress bar) hear of it
JOIN_SECONDS = 10.0              # the longest the end of a step waits for the timer thread's last write


def log_interval() -> float:
    """Seconds between progress lines: `PORTABILITY_PROGRESS_SECONDS`, 10 by default."""
    value = os.environ.get("PORTABILITY_PROGRESS_SECONDS", "")
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_INTERVAL_SECONDS
    return seconds if seconds > 0 else DEFAULT_INTERVAL_SECONDS


@dataclass(frozen=True)
class CategoryProgress:
    """One category's rows and pieces done, of what the snapshot counted (None: not known yet)."""

    category: str
    rows_done: int
    rows_estimated: int | None
    pieces_done: int
    pieces_total: int | None
    stage: str = "exporting"  # "staging": a big account's rows read into staging, before its shards export them

    @property
    def percent(self) -> int | None:
        """Rows done of the estimate, in percent (None while there is no estimate)."""
        if not self.rows_estimated:
            return None
        return min(100, round(100 * self.rows_done / self.rows_estimated))


@dataclass(frozen=True)
class Report:
    """What a step has done so far, or in all once `finished`."""

    what: str
    elapsed: float
    categories: tuple[CategoryProgress, ...] = ()
    phases: dict[str, float] = field(default_factory=dict)
    finished: bool = False
    failed: bool = False
    counts_rows: bool = True  # False for a step that moves files, not rows (packaging)

    @property
    def rows_done(self) -> int:
        return sum(c.rows_done for c in self.categories)

    @property
    def rows_estimated(self) -> int | None:
        """Every category's rows, once each is known."""
        if not self.categories or any(c.rows_estimated is None for c in self.categories):
            return None
        return sum(c.rows_estimated for c in self.categories)

    @property
    def pieces_done(self) -> int:
        return sum(c.pieces_done for c in self.categories)

    @property
    def pieces_total(self) -> int | None:
        if not self.categories or any(c.pieces_total is None for c in self.categories):
            return None
        return sum(c.pieces_total for c in self.categories)

    @property
    def rate(self) -> float:
        """Rows per second since the step began."""
        return self.rows_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far; None until rows have moved and the total is known."""
        if self.rows_estimated is None or not self.rate:
            return None
        return max(self.rows_estimated - self.rows_done, 0) / self.rate

    def shares(self) -> dict[str, float]:
        """Each phase's part of the time spent in phases (0 to 1)."""
        total = sum(self.phases.values())
        return {phase: (seconds / total if total else 0.0) for phase, seconds in self.phases.items()}

    def line(self) -> str:
        """The periodic progress line."""
        if not self.counts_rows:
            return f"{self.what}: {_duration(self.elapsed)} so far; {self.phase_times()}"
        if not self.categories:
            return f"{self.what}: counting what to do, after {_duration(self.elapsed)}; {self.phase_times()}"
        estimated = self.rows_estimated
        rows = f"{self.rows_done:,} of {estimated:,} rows" if estimated is not None else f"{self.rows_done:,} rows"
        if estimated:
            rows += f" ({100 * self.rows_done / estimated:.0f}%)"
        total = self.pieces_total
        pieces = f"{self.pieces_done} of {_pieces(total)}" if total is not None else _pieces(self.pieces_done)
        left = self.seconds_left
        eta = f", about {_duration(left)} left" if left is not None and left >= 0.5 else ""
        under_way = [c for c in self.categories
                     if c.rows_done and c.rows_estimated is not None and c.rows_done < c.rows_estimated]
        detail = "".join(f"; {c.category} {c.rows_done:,} of {c.rows_estimated:,}" for c in under_way[:4])
        return (f"{self.what}: {rows}, {pieces}, {self.rate:,.0f} rows/s after {_duration(self.elapsed)}{eta}"
                f"{detail}; {self.phase_times()}")

    def phase_times(self) -> str:
        return ", ".join(f"{phase} {self.phases.get(phase, 0.0):.1f} s" for phase in PHASES)

    def where_time_went(self, *, stopped: bool = False) -> str:
        """The closing line: the outcome, then each phase's total and share."""
        outcome = "failed after" if self.failed else "stopped after" if stopped else "done in"
        shares = self.shares()
        spent = ", ".join(f"{phase} {self.phases.get(phase, 0.0):.1f} s ({100 * shares.get(phase, 0.0):.0f}%)"
                          for phase in PHASES)
        estimated = f" of {self.rows_estimated:,}" if self.rows_estimated is not None and self.failed else ""
        rows = (f": {self.rows_done:,}{estimated} rows, {_pieces(self.pieces_done)}, {self.rate:,.0f} rows/s"
                if self.counts_rows else "")
        return f"{self.what}: {outcome} {_duration(self.elapsed)}{rows}; time went to {spent}"


def _pieces(count: int) -> str:
    return f"{count} piece" if count == 1 else f"{count} pieces"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class _Counts:
    __slots__ = ("rows_done", "rows_estimated", "pieces_done", "pieces_total")

    def __init__(self):
        self.rows_done = self.pieces_done = 0
        self.rows_estimated: int | None = None
        self.pieces_total: int | None = None


class Progress:
    """A step's counters and phase clocks, with the timer thread that reports them while the step runs.

    Use it as a context manager around the step; the counting methods may be called from any thread.
    """

    def __init__(self, what: str, *, export_id: str | None = None, part: str = "", record: bool = True,
                 interval: float | None = None, record_interval: float | None = None,
                 watchers: Iterable[Callable[[Report], None] | None] = (),
                 stopped_by: tuple[type[BaseException], ...] = (), counts_rows: bool = True):
        self.what = what
        self.export_id, self.part = export_id, part
        self.record = record and export_id is not None
        self.interval = interval if interval is not None else log_interval()
        self.record_interval = record_interval if record_interval is not None else RECORD_INTERVAL_SECONDS
        self.watchers = [w for w in watchers if w is not None]
        self.counts_rows = counts_rows
        self.stopped_by = stopped_by  # exceptions that end the step without failing it (another route takes over)
        self._counts: dict[str, _Counts] = {}
        self._phases = dict.fromkeys(PHASES, 0.0)
        self._lock = threading.Lock()
        self._open: dict[int, tuple[str, float]] = {}  # thread -> the phase it is in, and since when
        self._started = time.monotonic()
        self._ended: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ledger_warned = False

    # --- counting --------------------------------------------------------------------------------------

    def expect(self, category: str, rows: int | None, pieces: int | None = None) -> None:
        with self._lock:
            counts = self._counts.setdefault(category, _Counts())
            counts.rows_estimated, counts.pieces_total = rows, pieces

    def add_rows(self, category: str, rows: int) -> None:
        with self._lock:
            self._counts.setdefault(category, _Counts()).rows_done += rows

    def piece_done(self, category: str) -> None:
        with self._lock:
            self._counts.setdefault(category, _Counts()).pieces_done += 1

    def timed(self, phase: str) -> _Timed:
        """A context manager charging the block's time to `phase` (and not to the phase around it on this thread)."""
        return _Timed(self, phase)

    def timed_batches(self, items, phase: str = "reading") -> _TimedIterable:
        """`items` (Arrow batches, with their other attributes such as `.schema`), each `next` charged to `phase`."""
        return _TimedIterable(self, items, phase)

    def timed_stream(self, stream, phase: str = "reading") -> _TimedStream:
        """A readable stream whose `read` calls are charged to `phase`."""
        return _TimedStream(self, stream, phase)

    def _enter(self, phase: str) -> str | None:
        """This thread enters `phase`: the phase it was in stops its clock. Returns that phase."""
        now, thread = time.perf_counter(), threading.get_ident()
        with self._lock:
            outer = self._open.get(thread)
            if outer is not None:
                self._phases[outer[0]] += now - outer[1]
            self._open[thread] = (phase, now)
        return outer[0] if outer is not None else None

    def _leave(self, outer: str | None) -> None:
        """This thread leaves its phase, back into `outer` (None: no phase)."""
        now, thread = time.perf_counter(), threading.get_ident()
        with self._lock:
            phase, since = self._open.pop(thread)
            self._phases[phase] += now - since
            if outer is not None:
                self._open[thread] = (outer, now)

    # --- reporting -------------------------------------------------------------------------------------

    def report(self, *, failed: bool = False) -> Report:
        with self._lock:
            categories = tuple(CategoryProgress(name, c.rows_done, c.rows_estimated, c.pieces_done, c.pieces_total)
                               for name, c in self._counts.items())
            phases = dict(self._phases)
            now = time.perf_counter()
            for phase, since in self._open.values():  # a call still under way (perhaps stuck) counts already
                phases[phase] += now - since
        end = self._ended if self._ended is not None else time.monotonic()
        return Report(self.what, end - self._started, categories, phases, finished=self._ended is not None,
                      failed=failed, counts_rows=self.counts_rows)

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name=f"progress:{self.what}"[:60], daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            # A ledger write that hangs (an unreachable server) must not hold the step: the thread is a daemon.
            self._thread.join(timeout=JOIN_SECONDS)
        self._ended = time.monotonic()
        stopped = exc_type is not None and issubclass(exc_type, self.stopped_by)
        final = self.report(failed=exc_type is not None and not stopped)
        self._tell_watchers(final)
        if self._thread is None or not self._thread.is_alive():
            self._record(final)
        log.info("%s", final.where_time_went(stopped=stopped))

    def _beat(self) -> None:
        ticks = [self.interval, self.record_interval if self.record else self.interval]
        if self.watchers:
            ticks.append(WATCH_INTERVAL_SECONDS)
        tick = min(ticks)
        next_log = self._started + self.interval
        next_record = self._started + self.record_interval
        recorded = None
        while not self._stop.wait(tick):
            now, report = time.monotonic(), self.report()
            self._tell_watchers(report)
            if now >= next_log:
                log.info("%s", report.line())
                next_log = now + self.interval
            if self.record and now >= next_record and report.categories != recorded:
                self._record(report)
                recorded, next_record = report.categories, now + self.record_interval

    def _tell_watchers(self, report: Report) -> None:
        for watcher in self.watchers:
            try:
                watcher(report)
            except Exception:  # noqa: BLE001 (a display must never stop an export)
                log.debug("a progress watcher failed", exc_info=True)

    def _record(self, report: Report) -> None:
        """Each category's progress in the ledger, for the Exports page; a failure is logged once, never raised."""
        if not self.record or not report.categories:
            return
        try:
            from portability.resources import ledger

            with ledger.connect() as conn:
                for c in report.categories:
                    ledger.record_progress(conn, self.export_id, c.category, part=self.part, rows_done=c.rows_done,
                                           rows_estimated=c.rows_estimated, pieces_done=c.pieces_done,
                                           pieces_total=c.pieces_total)
        except Exception as exc:  # noqa: BLE001 (the export goes on without its progress on the page)
            if not self._ledger_warned:
                self._ledger_warned = True
                # The error's type only: a driver's message may quote the connection it tried.
                log.warning("could not record the progress of export %s in the ledger (%s); the export goes on "
                            "without it", self.export_id, type(exc).__name__)


class _Timed:
    """Self time: entering a phase stops the clock of the phase around it on the same thread."""

    __slots__ = ("_progress", "_phase", "_outer")

    def __init__(self, progress: Progress, phase: str):
        self._progress, self._phase = progress, phase

    def __enter__(self) -> None:
        self._outer = self._progress._enter(self._phase)

    def __exit__(self, *exc) -> None:
        self._progress._leave(self._outer)


class _TimedIterable:
    def __init__(self, progress: Progress, items, phase: str):
        self._progress, self._items, self._phase = progress, items, phase

    def __getattr__(self, name: str):
        return getattr(self._items, name)

    def __iter__(self) -> Iterator:
        items, timed = iter(self._items), self._progress.timed(self._phase)
        while True:
            with timed:
                item = next(items, _END)
            if item is _END:
                return
            yield item


class _TimedStream:
    def __init__(self, progress: Progress, stream, phase: str):
        self._progress, self._stream, self._phase = progress, stream, phase

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def read(self, size: int = -1) -> bytes:
        with self._progress.timed(self._phase):
            return self._stream.read(size)


_END = object()


def idle() -> Progress:
    """A tracker nobody reports: for callers (tests, benchmarks) of a step's inner parts that keep none."""
    return Progress("idle", record=False)
