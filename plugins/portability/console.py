"""What the command shows on stderr while it works: a progress bar on a terminal, plain lines otherwise.

    exporting ━━━━━━━━━━━━━━━━━━━━━━╺━━━━━━━━━━━━━━━━━━  812,345/1,500,000 rows  201,234 rows/s  0:00:04
    portability export: 812,345 of 1,500,000 rows (54%), 201,234 rows/s, about 3.4 s left

On a terminal, a bar (`rich.progress`) that goes away when the command ends, so that only its
result stays on the screen. When stderr is not a terminal (a log file, a CI job), a plain line
at most every `interval` seconds (10 by default, `PORTABILITY_PROGRESS_SECONDS`) and one at the
end of each stage of a success (verify downloads, then checks): a failure ends with its one
error message instead. `--quiet` shows nothing.
stdout (the link, the JSON) is never touched.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from portability.pipeline.progress import log_interval


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / 1e6:,.1f} MB"
    return f"{value:,.0f} {unit}"


def _count(value: float, unit: str) -> str:
    return f"{value / 1e6:,.1f}" if unit == "bytes" else f"{value:,.0f}"


class ProgressOutput:
    """One command's progress: call `update` from any thread, as often as wanted; `finish` on success."""

    def __init__(self, command: str, *, unit: str = "rows", stream: TextIO | None = None, quiet: bool = False,
                 interval: float | None = None):
        self.command, self.unit = command, unit
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval = interval if interval is not None else log_interval()
        self.terminal = not quiet and _is_terminal(self.stream)
        self._lock = threading.Lock()
        self._bar = self._task = None
        self._stage: str | None = None
        self._stage_started = self._last_line = time.monotonic()
        self._done, self._total = 0, None

    def __enter__(self) -> ProgressOutput:
        if self.terminal:
            import rich.progress as bars
            from rich.console import Console

            amount = (bars.DownloadColumn(), bars.TransferSpeedColumn()) if self.unit == "bytes" else (
                bars.MofNCompleteColumn(), bars.TextColumn(self.unit), bars.TextColumn("{task.fields[rate]}"))
            # Transient: the bar leaves the screen at the end. stdout is the command's output: never redirected.
            self._bar = bars.Progress(bars.TextColumn("{task.description}"), bars.BarColumn(), *amount,
                                      bars.TimeRemainingColumn(), transient=True, refresh_per_second=4,
                                      console=Console(file=self.stream, force_terminal=True), redirect_stdout=False)
            self._bar.start()
        return self

    def update(self, done: int, total: int | None, stage: str = "exporting") -> None:
        """`done` of `total` (None: not known yet) in this stage (a new stage starts its own bar and rate)."""
        if self.quiet:
            return
        with self._lock:
            now = time.monotonic()
            if stage != self._stage:
                if self._stage is not None and self._bar is None:  # a stage ended: say so, as at the end
                    self._print(self._done_line(now))
                self._stage, self._stage_started = stage, now
                if self._bar is not None:
                    if self._task is not None:
                        self._bar.remove_task(self._task)
                    self._task = self._bar.add_task(stage, total=total, rate="")
            self._done, self._total = done, total
            if self._bar is not None:
                self._bar.update(self._task, completed=done, total=total, rate=self._rate_text(now))
            elif now - self._last_line >= self.interval:
                self._last_line = now
                self._print(self._line(now))

    def finish(self) -> None:
        """The command succeeded: the plain output's last line says how much in how long."""
        if self.quiet or self.terminal or self._stage is None:
            return
        with self._lock:
            self._print(self._done_line(time.monotonic()))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()  # transient: the bar leaves the screen, whatever the outcome

    def _rate(self, now: float) -> float:
        elapsed = now - self._stage_started
        return self._done / elapsed if elapsed > 0 else 0.0

    def _rate_text(self, now: float) -> str:
        return f"{_count(self._rate(now), self.unit)} {'MB' if self.unit == 'bytes' else self.unit}/s"

    def _done_line(self, now: float) -> str:
        return (f"portability {self.command}: {self._stage} done: {_amount(self._done, self.unit)} in "
                f"{now - self._stage_started:.1f} s ({self._rate_text(now)})")

    def _line(self, now: float) -> str:
        of = ""
        if self._total:
            of = f" of {_amount(self._total, self.unit)} ({100 * self._done / self._total:.0f}%)"
            done = _count(self._done, self.unit)
        else:
            done = _amount(self._done, self.unit)
        rate = self._rate(now)
        left = ""
        if self._total and rate and self._done < self._total:
            left = f", about {(self._total - self._done) / rate:.0f} s left"
        return f"portability {self.command}: {self._stage} {done}{of}, {self._rate_text(now)}{left}"

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
