"""`casbak snapshot`: paths, standard input or a command's output, for cron and by hand."""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

import typer

from casbak.cli.monitoring import (
    STATUS_FAILED,
    STATUS_PARTIAL,
    STATUS_SUCCESS,
    RunReport,
    send_webhook,
    should_notify,
    write_metrics,
)
from casbak.cli.context import parse_options
from casbak.cli.output import display_path, format_size
from casbak.cli.profiles import NOTIFY_ON_VALUES, Profile, ProfileLocked, current_profile, profile_lock
from casbak.cli.progress import make_progress
from casbak.errors import EXIT_OK, EXIT_PARTIAL, CasbakError, UsageError

if TYPE_CHECKING:
    from casbak.operations.snapshot import SnapshotResult
    from casbak.operations.sources import PathFilter, StreamSource

log = logging.getLogger(__name__)

DEFAULT_STDIN_FILENAME = "stdin"


@dataclass
class SnapshotSettings:
    """Snapshot options after merging the profile with the command line."""

    paths: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    exclude_files: list[str] = field(default_factory=list)
    exclude_larger_than: Optional[str] = None
    one_file_system: bool = False
    host: Optional[str] = None
    stdin: bool = False
    stdin_filename: Optional[str] = None
    stdin_from_command: Optional[str] = None
    notify_url: Optional[str] = None
    notify_on: str = "failure"
    metrics_file: Optional[str] = None
    # One of casbak.audit.pii.PII_MODES, set by merge_settings(); that module is imported
    # only by snapshot runs, so the dataclass has no default mode of its own.
    pii_scan: Optional[str] = None
    pii_allowlist: Optional[str] = None
    source_options: list[str] = field(default_factory=list)


def merge_settings(profile: Optional[Profile], **given) -> SnapshotSettings:
    """Start from the profile's values and let every option given on the command line win."""
    from casbak.audit.pii import MODE_OFF, PII_MODES

    settings = SnapshotSettings(pii_scan=MODE_OFF)
    if profile is not None:
        settings = SnapshotSettings(
            paths=list(profile.sources), tags=list(profile.tags), excludes=list(profile.exclude),
            exclude_files=list(profile.exclude_file), exclude_larger_than=profile.exclude_larger_than,
            one_file_system=profile.one_file_system, host=profile.host,
            stdin_filename=profile.stdin_filename, stdin_from_command=profile.stdin_from_command,
            notify_url=profile.notify_url, notify_on=profile.notify_on, metrics_file=profile.metrics_file,
            pii_scan=profile.pii_scan or MODE_OFF, pii_allowlist=profile.pii_allowlist,
        )
    for name, value in given.items():
        # Empty lists and unset options mean "not given"; flags only ever switch on.
        if value not in (None, [], False):
            setattr(settings, name, value)
    if settings.stdin and given.get("stdin_from_command") is None:
        settings.stdin_from_command = None
    if settings.notify_on not in NOTIFY_ON_VALUES:
        raise UsageError(f"--notify-on {settings.notify_on!r}: must be one of {', '.join(NOTIFY_ON_VALUES)}")
    if settings.stdin and settings.stdin_from_command:
        raise UsageError("--stdin and --stdin-from-command: give only one of them")
    if settings.pii_scan not in PII_MODES:
        raise UsageError(f"--pii-scan {settings.pii_scan!r}: must be one of {', '.join(PII_MODES)}")
    return settings


def build_filter(settings: SnapshotSettings) -> PathFilter:
    from casbak.operations.sources import PathFilter, parse_size, read_exclude_files

    patterns = list(settings.excludes) + read_exclude_files(settings.exclude_files)
    limit = parse_size(settings.exclude_larger_than) if settings.exclude_larger_than else None
    return PathFilter(patterns=patterns, max_file_size=limit, one_file_system=settings.one_file_system)


def open_streams(settings: SnapshotSettings, stack: ExitStack) -> list[StreamSource]:
    from casbak.operations.sources import CommandSource, stdin_source

    filename = settings.stdin_filename or DEFAULT_STDIN_FILENAME
    if settings.stdin:
        return [stack.enter_context(stdin_source(filename))]
    if settings.stdin_from_command:
        return [stack.enter_context(CommandSource(filename, settings.stdin_from_command))]
    if settings.stdin_filename:
        raise UsageError("--stdin-filename: only valid with --stdin or --stdin-from-command")
    return []


def snapshot(
    ctx: typer.Context,
    paths: Optional[List[str]] = typer.Argument(None, help="Files and directories to snapshot (default: the profile's sources)."),
    tag: List[str] = typer.Option([], "--tag", help="Tag the snapshot (repeatable)."),
    parent: Optional[str] = typer.Option(None, help="Parent snapshot for change detection (default: newest of the same host and sources)."),
    force: bool = typer.Option(False, "--force", help="Read every file, even those unchanged since the parent."),
    host: Optional[str] = typer.Option(None, help="Host name recorded in the snapshot (default: this machine's)."),
    exclude: List[str] = typer.Option([], "--exclude", "-e", help="Leave out paths matching this .gitignore-style pattern (repeatable)."),
    exclude_file: List[str] = typer.Option([], "--exclude-file", help="Read exclude patterns from this file, one per line (repeatable)."),
    exclude_larger_than: Optional[str] = typer.Option(None, "--exclude-larger-than", help="Leave out files larger than this size, such as 2G (K, M, G, T: powers of 1024)."),
    one_file_system: bool = typer.Option(False, "--one-file-system", "-x", help="Do not cross into other file systems below a source."),
    stdin: bool = typer.Option(False, "--stdin", help="Store standard input as one file (see --stdin-filename)."),
    stdin_filename: Optional[str] = typer.Option(None, "--stdin-filename", help="File name of the --stdin or --stdin-from-command content in the snapshot (default: stdin)."),
    stdin_from_command: Optional[str] = typer.Option(None, "--stdin-from-command", help="Run this shell command and store its standard output; a non-zero exit fails the snapshot."),
    notify_url: Optional[str] = typer.Option(None, "--notify-url", help="POST a JSON run summary to this URL (on failure, or always with --notify-on always)."),
    notify_on: Optional[str] = typer.Option(None, "--notify-on", help="When to call --notify-url: failure (default; includes partial runs) or always."),
    metrics_file: Optional[str] = typer.Option(None, "--metrics-file", help="Write Prometheus gauges of this run to this file (node_exporter textfile collector)."),
    pii_scan: Optional[str] = typer.Option(None, "--pii-scan", help="Scan text-like files for personal data and secrets: off (default), warn (record findings in the manifest) or fail (write no snapshot, exit code 6)."),
    pii_allowlist: Optional[str] = typer.Option(None, "--pii-allowlist", help="File of DETECTOR:PATH-GLOB and DETECTOR:sha256:HEX lines that suppress known false positives."),
    source_option: List[str] = typer.Option([], "--source-option", help="fsspec storage option for URL sources, as KEY=VALUE like the global -o, such as s3.endpoint_url=http://127.0.0.1:9000 (repeatable)."),
) -> None:
    """Snapshot files, standard input or a command's output; only new chunks are stored."""
    state = ctx.obj
    profile = current_profile(ctx)
    report = RunReport("snapshot", profile=profile.name if profile else None, repository=state.repo)
    try:
        settings = merge_settings(
            profile, paths=paths or [], tags=tag, excludes=exclude, exclude_files=exclude_file,
            exclude_larger_than=exclude_larger_than, one_file_system=one_file_system, host=host, stdin=stdin,
            stdin_filename=stdin_filename, stdin_from_command=stdin_from_command, notify_url=notify_url,
            notify_on=notify_on, metrics_file=metrics_file, pii_scan=pii_scan, pii_allowlist=pii_allowlist,
            source_options=source_option,
        )
    except CasbakError as exc:
        # Without valid settings there is no webhook or metrics file to report to.
        report.finish(STATUS_FAILED, exc.exit_code, str(exc))
        _emit_failure(state, report)
        raise
    report.host = settings.host or report.host
    try:
        with profile_lock(profile.name) if profile else nullcontext():
            result = _run(state, settings, parent, force)
    except ProfileLocked as exc:
        # The run holding the lock reports its own outcome, so this one only reports that it stopped.
        report.finish(STATUS_FAILED, exc.exit_code, str(exc))
        _notify(settings, report)
        _emit_failure(state, report)
        raise
    except (CasbakError, OSError, KeyboardInterrupt) as exc:
        exit_code = getattr(exc, "exit_code", 130 if isinstance(exc, KeyboardInterrupt) else 1)
        report.finish(STATUS_FAILED, exit_code, str(exc) or type(exc).__name__)
        _publish(state, settings, report)
        _emit_failure(state, report)
        raise
    exit_code = _report_result(state, settings, report, result)
    if exit_code != EXIT_OK:
        raise typer.Exit(exit_code)


def _run(state, settings: SnapshotSettings, parent: Optional[str], force: bool) -> SnapshotResult:
    from casbak.audit.pii import PiiScan
    from casbak.audit.signing import signing_key_for
    from casbak.operations.snapshot import create_snapshot

    path_filter = build_filter(settings)
    if not settings.paths and not settings.stdin and not settings.stdin_from_command:
        raise UsageError("nothing to snapshot: give paths, --stdin, --stdin-from-command, or a --profile with sources")
    pii_scan = PiiScan.from_options(settings.pii_scan, settings.pii_allowlist)
    source_options = parse_options(settings.source_options)
    repository = state.open_repository()
    # Loaded before any stream starts or data is read, so a missing key password fails fast.
    signing_key = signing_key_for(repository, state.signing_key)
    with ExitStack() as stack:
        # Started only once the repository is open, so a wrong password never runs pg_dump.
        streams = open_streams(settings, stack)
        progress = make_progress("snapshot", state.quiet, state.json, _size_estimate(state, repository, settings, streams))
        progress.start()
        try:
            return create_snapshot(
                repository, settings.paths, tags=settings.tags, parent=parent, full_read=force,
                hostname=settings.host, progress=progress, exclude=path_filter, streams=streams,
                signing_key=signing_key, pii_scan=pii_scan, source_options=source_options,
            )
        finally:
            progress.stop()


def _size_estimate(state, repository, settings: SnapshotSettings, streams: list[StreamSource]) -> Optional[int]:
    """Return the parent snapshot's size as the expected total, for an ETA on a terminal."""
    if state.quiet or state.json or streams or not sys.stderr.isatty():
        return None
    from casbak.catalog import find_parent
    from casbak.operations.remote_sources import is_remote_url

    sources = [p if is_remote_url(p) else os.path.abspath(os.path.expanduser(p)) for p in settings.paths]
    parent = find_parent(repository, settings.host or socket.gethostname(), sources)
    return int(parent.stats.get("bytes_total", 0)) or None if parent else None


def _report_result(state, settings: SnapshotSettings, report: RunReport, result: SnapshotResult) -> int:
    manifest, stats = result.manifest, result.stats
    report.snapshot = manifest.id
    report.stats = dict(manifest.stats)
    report.errors, report.warnings = list(result.errors), list(result.warnings)
    if result.errors:
        report.finish(STATUS_PARTIAL, EXIT_PARTIAL, f"{len(result.errors)} entries could not be read")
    else:
        report.finish(STATUS_SUCCESS, EXIT_OK)
    _publish(state, settings, report)
    if state.json:
        state.emit_json(report.to_json())
    elif not state.quiet:
        typer.echo(
            f"snapshot {manifest.id[:12]} saved: {stats.files_new} new, {stats.files_changed} changed, "
            f"{stats.files_unmodified} unmodified files; {stats.directories} directories; {stats.excluded} excluded\n"
            f"read {format_size(stats.bytes_read)} of {format_size(stats.bytes_total)}, "
            f"added {format_size(stats.data_added)} of new chunks and trees ({format_size(stats.data_added_stored)} stored) "
            f"in {stats.duration_seconds:.1f} s"
        )
    for error in result.errors:
        shown = display_path(error["path"].encode("utf-8", "surrogateescape"))
        typer.echo(f"casbak: not stored: {shown}: {error['error']}", err=True)
    _report_pii(manifest)
    if result.errors:
        typer.echo(f"casbak: snapshot {manifest.id[:12]} is partial: {len(result.errors)} entries could not be read", err=True)
    return report.exit_code


def _report_pii(manifest) -> None:
    """Print a one-line PII scan summary on standard error: counts only, never values."""
    record = manifest.pii
    if not record:
        return
    if record["incomplete"]:
        typer.echo(f"casbak: PII scan incomplete for {len(record['incomplete'])} files (see `casbak audit pii`)", err=True)
    if not record["counts"]:
        return
    files = len({row["path"] for row in record["findings"]})
    counts = ", ".join(f"{name} {number}" for name, number in record["counts"].items())
    typer.echo(
        f"casbak: PII scan: {sum(record['counts'].values())} matches in {files} files ({counts}); "
        f"run `casbak audit pii {manifest.id[:12]}` for paths and line numbers",
        err=True,
    )


def _publish(state, settings: SnapshotSettings, report: RunReport) -> None:
    """Send the webhook and write the metrics file; neither changes the exit code."""
    _notify(settings, report)
    if settings.metrics_file:
        labels = {"profile": report.profile or "", "repository": report.repository or ""}
        write_metrics(settings.metrics_file, report, labels)


def _notify(settings: SnapshotSettings, report: RunReport) -> None:
    if settings.notify_url and should_notify(settings.notify_on, report.status):
        send_webhook(settings.notify_url, report)


def _emit_failure(state, report: RunReport) -> None:
    # With --json, a failed run still prints one document, so scripts can always parse stdout.
    if state.json:
        state.emit_json(report.to_json())


def register(app: typer.Typer) -> None:
    app.command("snapshot")(snapshot)
