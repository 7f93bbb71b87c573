"""`casbak snapshot`."""

from __future__ import annotations

import sys
import threading
import time
from typing import List, Optional

import typer

from casbak.cli.output import display_path, format_size
from casbak.errors import EXIT_PARTIAL
from casbak.operations.progress import Progress
from casbak.operations.snapshot import create_snapshot


class LineProgress(Progress):
    """Reports errors and warnings as they happen, and a status line every 10 s when asked."""

    def __init__(self, periodic: bool) -> None:
        self._lock = threading.Lock()
        self._files = 0
        self._bytes = 0
        self._periodic = periodic
        self._last = time.monotonic()

    def file_done(self, path: bytes, size: int, read: bool) -> None:
        with self._lock:
            self._files += 1
            now = time.monotonic()
            if self._periodic and now - self._last >= 10:
                self._last = now
                print(f"casbak: {self._files} files, {format_size(self._bytes)} read", file=sys.stderr)

    def bytes_done(self, count: int) -> None:
        with self._lock:
            self._bytes += count


def snapshot(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(..., help="Files and directories to snapshot."),
    tag: List[str] = typer.Option([], "--tag", help="Tag the snapshot (repeatable)."),
    parent: Optional[str] = typer.Option(None, help="Parent snapshot for change detection (default: newest of the same host and paths)."),
    force: bool = typer.Option(False, "--force", help="Read every file, even those unchanged since the parent."),
    host: Optional[str] = typer.Option(None, help="Host name recorded in the snapshot (default: this machine's)."),
) -> None:
    """Snapshot files and directories; only changed files are read and only new chunks stored."""
    state = ctx.obj
    repository = state.open_repository()
    progress = LineProgress(periodic=not state.quiet and not state.json)
    result = create_snapshot(repository, paths, tags=tag, parent=parent, full_read=force, hostname=host, progress=progress)
    manifest, stats = result.manifest, result.stats
    if state.json:
        state.emit_json({**manifest.summary(), "warnings": result.warnings})
    elif not state.quiet:
        typer.echo(
            f"snapshot {manifest.id[:12]} saved: {stats.files_new} new, {stats.files_changed} changed, "
            f"{stats.files_unmodified} unmodified files; {stats.directories} directories\n"
            f"read {format_size(stats.bytes_read)} of {format_size(stats.bytes_total)}, "
            f"added {format_size(stats.data_added)} ({format_size(stats.data_added_stored)} stored) "
            f"in {stats.duration_seconds:.1f} s"
        )
    if result.errors:
        for error in result.errors:
            typer.echo(f"casbak: not stored: {display_path(error['path'].encode('utf-8', 'surrogateescape'))}: {error['error']}", err=True)
        typer.echo(f"casbak: snapshot {manifest.id[:12]} is partial: {len(result.errors)} entries could not be read", err=True)
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot)
