"""Progress display: a rich progress bar on a terminal, plain log lines otherwise.

Cron and systemd capture standard error into mail or the journal, where a redrawn bar
is noise, so without a terminal the display prints one status line at a fixed interval.
Errors and warnings are not printed here: the operations log them already.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Optional, TextIO

from casbak.cli.output import format_size
from casbak.operations.progress import Progress

if TYPE_CHECKING:
    from rich.progress import TaskID

# Seconds between two status lines when standard error is not a terminal.
PLAIN_INTERVAL_SECONDS = 60.0


class Counters(Progress):
    """Thread-safe totals of files and bytes processed; the base of both displays."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files = 0
        self.bytes = 0
        self.errors = 0
        self.started = time.monotonic()

    def file_done(self, path: bytes, size: int, read: bool) -> None:
        with self._lock:
            self.files += 1
            # Read files were counted chunk by chunk in bytes_done(); reused ones count whole.
            if not read:
                self.bytes += size
        self.refresh()

    def bytes_done(self, count: int) -> None:
        with self._lock:
            self.bytes += count
        self.refresh()

    def error(self, path: bytes, message: str) -> None:
        with self._lock:
            self.errors += 1

    def refresh(self) -> None:
        """Update the display; called after every change of the counters."""

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        """Remove or finish the display."""


class LineProgress(Counters):
    """Status lines with files, bytes and throughput, printed every `interval` seconds to `stream`."""

    def __init__(self, label: str, stream: TextIO, interval: float = PLAIN_INTERVAL_SECONDS, total_bytes: Optional[int] = None) -> None:
        super().__init__()
        self.label = label
        self.stream = stream
        self.interval = interval
        self.total_bytes = total_bytes
        self._last_line = time.monotonic()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last_line < self.interval:
            return
        with self._lock:
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            files, done = self.files, self.bytes
        elapsed = max(now - self.started, 1e-6)
        line = f"casbak: {self.label}: {files} files, {format_size(done)}, {format_size(int(done / elapsed))}/s"
        if self.total_bytes:
            line += f", about {min(100, 100 * done // self.total_bytes)}% of the previous snapshot's size"
        print(line, file=self.stream, flush=True)


class BarProgress(Counters):
    """A rich progress bar on a terminal; shows an ETA only when a byte total is known."""

    def __init__(self, label: str, stream: TextIO, total_bytes: Optional[int] = None) -> None:
        # rich takes about 25 ms to import (python -X importtime), so runs without a terminal never load it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as RichProgress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        super().__init__()
        columns = [TextColumn("[bold]{task.description}"), TextColumn("{task.fields[files]} files")]
        if total_bytes:
            columns += [BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
        else:
            columns += [DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn()]
        self._display = RichProgress(*columns, console=Console(file=stream), transient=True)
        self._task: TaskID = self._display.add_task(label, total=total_bytes or None, files=0)

    def refresh(self) -> None:
        task = self._display.tasks[0]
        if task.total is not None and self.bytes > task.total:
            # The source grew beyond the estimate, so the bar and ETA would be wrong.
            task.total = None
        self._display.update(self._task, completed=self.bytes, files=self.files)

    def start(self) -> None:
        super().start()
        self._display.start()

    def stop(self) -> None:
        self._display.stop()


def make_progress(label: str, quiet: bool, json_output: bool, total_bytes: Optional[int] = None, stream: Optional[TextIO] = None) -> Counters:
    """Choose the display: none with --quiet or --json, a bar on a terminal, else lines."""
    stream = stream or sys.stderr
    if quiet or json_output:
        return Counters()
    if stream.isatty():
        return BarProgress(label, stream, total_bytes)
    return LineProgress(label, stream, total_bytes=total_bytes)
