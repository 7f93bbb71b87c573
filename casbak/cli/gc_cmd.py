"""`casbak forget`, `casbak gc` and `casbak unlock`: retention, garbage collection, stale locks."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

from casbak.cli.output import format_size
from casbak.cli.profiles import current_profile
from casbak.cli.snapshot_cmd import DEFAULT_STDIN_FILENAME
from casbak.errors import UsageError

if TYPE_CHECKING:
    from casbak.manifest import Manifest
    from casbak.operations.forget import ForgetResult
    from casbak.operations.prune import GcReport
    from casbak.operations.retention import Decision, RetentionPolicy


def _build_policy(
    keep_last: int,
    keep_hourly: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    keep_yearly: int,
    keep_within: Optional[str],
    keep_tag: List[str],
) -> RetentionPolicy:
    from casbak.operations.retention import Duration, RetentionPolicy

    return RetentionPolicy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        yearly=keep_yearly,
        within=Duration.parse(keep_within) if keep_within else None,
        tags=tuple(keep_tag),
    )


def _with_profile_retention(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Fill each keep-* option left unset on the command line from the --profile's retention keys.

    Options given on the command line (even `--keep-daily 0`) override the profile per key.
    """
    profile = current_profile(ctx)
    if profile is None:
        return values
    merged = dict(values)
    for key, value in profile.retention.items():
        name = key.replace("-", "_")
        source = ctx.get_parameter_source(name)
        # Typer 0.29 bundles its own copy of click, so the enum is matched by member name.
        if source is None or source.name == "DEFAULT":
            merged[name] = value
    return merged


# The values of casbak.operations.retention.GROUP_BY_CHOICES, written out because importing
# that module for a help text costs every command about 8 ms (python -X importtime). A test
# compares the two.
GROUP_BY_HELP = "Judge snapshots in groups of: host,sources, host, sources, none."
HOST_HELP = "Judge only snapshots of this host (repeatable; default with --profile: the profile's host)."
PATH_HELP = (
    "Judge only snapshots whose sources are exactly these paths (repeatable; "
    "default with --profile: the profile's sources)."
)

# Options shared by `forget` and `gc`.
KEEP_LAST = typer.Option(0, "--keep-last", help="Keep the N newest snapshots of each group (-1: all).")
KEEP_HOURLY = typer.Option(0, "--keep-hourly", help="Keep the newest snapshot of each of the last N UTC hours that have one.")
KEEP_DAILY = typer.Option(0, "--keep-daily", help="Keep the newest snapshot of each of the last N UTC days that have one.")
KEEP_WEEKLY = typer.Option(0, "--keep-weekly", help="Keep the newest snapshot of each of the last N ISO weeks that have one.")
KEEP_MONTHLY = typer.Option(0, "--keep-monthly", help="Keep the newest snapshot of each of the last N months that have one.")
KEEP_YEARLY = typer.Option(0, "--keep-yearly", help="Keep the newest snapshot of each of the last N years that have one.")
KEEP_WITHIN = typer.Option(
    None, "--keep-within", help="Keep snapshots up to this long before the group's newest, such as 30d or 1y6m (units h d w m y)."
)
KEEP_TAG = typer.Option([], "--keep-tag", help="Keep snapshots with this tag (repeatable).")
GROUP_BY = typer.Option("host,sources", "--group-by", help=GROUP_BY_HELP)
HOST = typer.Option([], "--host", help=HOST_HELP)
PATH = typer.Option([], "--path", help=PATH_HELP)


def _snapshot_scope(ctx: typer.Context, hosts: List[str], paths: List[str]) -> Optional[Callable[[Manifest], bool]]:
    """Return the predicate that limits a policy to some snapshots, or None for all.

    With --profile and no --host/--path, the scope is the snapshots that profile writes
    (its host and sources), so one profile's retention never thins another's snapshots.
    """
    profile = current_profile(ctx)
    if profile is not None and not hosts and not paths:
        hosts = [profile.host or socket.gethostname()]
        paths = list(profile.sources)
        if profile.stdin_from_command:
            from casbak.operations.sources import normalize_stream_name

            paths.append(f"command:{normalize_stream_name(profile.stdin_filename or DEFAULT_STDIN_FILENAME)}")
    selected_hosts = set(hosts)
    selected_sources = sorted(_source_text(p) for p in paths)
    if not selected_hosts and not selected_sources:
        return None

    def selected(manifest: Manifest) -> bool:
        if selected_hosts and manifest.hostname not in selected_hosts:
            return False
        return not selected_sources or sorted(manifest.sources) == selected_sources

    return selected


def _source_text(path: str) -> str:
    # Stream sources ("command:NAME", "stdin:NAME") are compared as given; file paths as
    # the absolute paths a snapshot records.
    if path.startswith(("command:", "stdin:")):
        return path
    return os.path.abspath(os.path.expanduser(path))


def forget(
    ctx: typer.Context,
    snapshot_ids: List[str] = typer.Argument(None, help="Snapshots to forget: ids or unique id prefixes."),
    keep_last: int = KEEP_LAST,
    keep_hourly: int = KEEP_HOURLY,
    keep_daily: int = KEEP_DAILY,
    keep_weekly: int = KEEP_WEEKLY,
    keep_monthly: int = KEEP_MONTHLY,
    keep_yearly: int = KEEP_YEARLY,
    keep_within: Optional[str] = KEEP_WITHIN,
    keep_tag: List[str] = KEEP_TAG,
    group_by: str = GROUP_BY,
    host: List[str] = HOST,
    path: List[str] = PATH,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print what would be forgotten and why; change nothing."),
) -> None:
    """Remove snapshots by id or by retention policy; their data stays until `casbak gc`."""
    from casbak.operations.forget import forget_by_ids, forget_by_policy

    keep = dict(
        keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within, keep_tag=keep_tag,
    )
    # Snapshot ids are a request of their own, so a profile's retention applies only without them.
    policy = _build_policy(**(keep if snapshot_ids else _with_profile_retention(ctx, keep)))
    if snapshot_ids and not policy.is_empty():
        raise UsageError("give either snapshot ids or --keep-* options, not both")
    if not snapshot_ids and policy.is_empty():
        raise UsageError("nothing to forget: give snapshot ids or at least one --keep-* option")
    state = ctx.obj
    repository = state.open_repository()
    if snapshot_ids:
        result = forget_by_ids(repository, snapshot_ids, dry_run=dry_run)
    else:
        result = forget_by_policy(repository, policy, group_by, dry_run=dry_run, select=_snapshot_scope(ctx, host, path))
    if state.json:
        state.emit_json(result.to_json())
    elif not state.quiet:
        _print_forget(result)


def gc(
    ctx: typer.Context,
    keep_last: int = KEEP_LAST,
    keep_hourly: int = KEEP_HOURLY,
    keep_daily: int = KEEP_DAILY,
    keep_weekly: int = KEEP_WEEKLY,
    keep_monthly: int = KEEP_MONTHLY,
    keep_yearly: int = KEEP_YEARLY,
    keep_within: Optional[str] = KEEP_WITHIN,
    keep_tag: List[str] = KEEP_TAG,
    group_by: str = GROUP_BY,
    max_unused: str = typer.Option(
        "10%", "--max-unused", help="Repack a pack when more than this percentage of its bytes is unused, such as 10%."
    ),
    no_repack: bool = typer.Option(False, "--no-repack", help="Only delete packs without live data; read no data pack."),
    host: List[str] = HOST,
    path: List[str] = PATH,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print what would be removed and repacked; change nothing."),
) -> None:
    """Forget snapshots by policy (--keep-* options, or the --profile's keep-* keys), then delete unused data."""
    from casbak.operations.prune import PruneOptions, run_gc

    keep = dict(
        keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within, keep_tag=keep_tag,
    )
    policy = _build_policy(**_with_profile_retention(ctx, keep))
    options = PruneOptions(max_unused=parse_percentage(max_unused), repack=not no_repack, dry_run=dry_run)
    state = ctx.obj
    repository = state.open_repository()
    report = run_gc(repository, policy, group_by, options, select=_snapshot_scope(ctx, host, path))
    if state.json:
        state.emit_json(report.to_json())
    elif not state.quiet:
        _print_gc(report)


def unlock(
    ctx: typer.Context,
    remove_all: bool = typer.Option(
        False, "--remove-all", help="Remove every lock, also those of running processes. Use only when nothing uses the repository."
    ),
) -> None:
    """Remove stale locks: no heartbeat for 30 minutes, or their process on this host is gone."""
    from casbak.store.locks import DEFAULT_STALE_SECONDS, remove_stale_locks

    state = ctx.obj
    repository = state.open_repository()
    removed = remove_stale_locks(repository, DEFAULT_STALE_SECONDS, remove_all=remove_all)
    if state.json:
        state.emit_json({"removed": [r.summary(DEFAULT_STALE_SECONDS) for r in removed]})
    elif not state.quiet:
        for record in removed:
            typer.echo(f"removed {record.describe() if record.kind != 'unknown' else 'lock ' + record.lock_id[:12]}")
        typer.echo(f"{len(removed)} locks removed")


def parse_percentage(text: str) -> float:
    """Turn `10%` or `10` into 0.10."""
    cleaned = text.strip().rstrip("%").strip()
    try:
        value = float(cleaned)
    except ValueError as exc:
        raise UsageError(f"--max-unused {text!r}: invalid; give a percentage such as 10%") from exc
    if not 0.0 <= value <= 100.0:
        raise UsageError(f"--max-unused {text!r}: must be between 0% and 100%")
    return value / 100.0


def _print_decision(decision: Decision) -> None:
    manifest = decision.manifest
    verdict = "keep  " if decision.keep else "remove"
    reasons = ", ".join(decision.reasons) if decision.reasons else "no rule keeps it"
    typer.echo(f"{verdict} {manifest.id[:12]}  {manifest.time_iso[:19]}Z  {manifest.hostname}  {', '.join(manifest.sources)}  [{reasons}]")


def _print_forget(result: ForgetResult) -> None:
    group = None
    for decision in result.decisions:
        if decision.group != group and decision.group:
            group = decision.group
            typer.echo(f"group {_group_label(group)}:")
        if decision.group:
            _print_decision(decision)
        else:
            typer.echo(f"forget {decision.manifest.id[:12]}  {decision.manifest.time_iso[:19]}Z  [requested by id]")
    for retained in result.retained:
        typer.echo(f"not removed: {retained['name']}: {retained['detail']}")
    verb = "would remove" if result.dry_run else "removed"
    count = sum(1 for d in result.decisions if not d.keep) if result.dry_run else len(result.removed)
    typer.echo(f"{verb} {count} of {len(result.decisions)} snapshots")


def _group_label(group: tuple) -> str:
    parts = [", ".join(part) if isinstance(part, tuple) else str(part) for part in group]
    return " | ".join(parts)


def _print_gc(report: GcReport) -> None:
    if report.forget is not None:
        _print_forget(report.forget)
    stats = report.prune
    if stats.dry_run:
        typer.echo(
            f"would delete {stats.packs_deleted} unused packs and {stats.unindexed_packs_deleted} unindexed packs, "
            f"and repack {stats.packs_repacked} packs; {stats.live_objects} objects in use"
        )
        return
    typer.echo(
        f"deleted {stats.packs_deleted} unused packs and {stats.unindexed_packs_deleted} unindexed packs, "
        f"repacked {stats.packs_repacked} packs into {stats.packs_written}"
    )
    typer.echo(
        f"freed {format_size(max(0, stats.bytes_freed))} ({format_size(stats.bytes_deleted)} deleted, "
        f"{format_size(stats.bytes_written)} written) in {report.duration_seconds:.1f} s; "
        f"{stats.live_objects} objects in use"
    )
    if stats.temporary_files_deleted:
        typer.echo(f"removed {stats.temporary_files_deleted} temporary files that interrupted runs left behind")
    for retained in stats.retained:
        typer.echo(f"not deleted: {retained['name']}: {retained['detail']}")


def register(app: typer.Typer) -> None:
    app.command("forget")(forget)
    app.command("gc")(gc)
    app.command("unlock")(unlock)
