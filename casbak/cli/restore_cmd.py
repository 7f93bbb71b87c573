"""`casbak restore` and `casbak ls`."""

from __future__ import annotations

import datetime as dt

import typer

from casbak.cli.output import display_path, format_mode, format_size, naming_snapshot
from casbak.tree import DIRECTORY, SYMLINK


def restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, unique id prefix, `latest`, `latest~N`, or a UTC date such as @2026-12-01 or @2026-12-01T12:00."),
    target: str = typer.Option(..., "--target", "-t", help="Directory to restore into (created if missing)."),
    path: str = typer.Option("", "--path", help="Restore only this path of the snapshot (as `casbak ls` shows it)."),
) -> None:
    """Restore a snapshot (or one path of it) into a directory, verifying every byte."""
    from casbak.catalog import resolve_snapshot
    from casbak.operations.restore import restore_snapshot

    state = ctx.obj
    repository = state.open_repository()
    manifest = resolve_snapshot(repository, snapshot)
    with naming_snapshot(manifest):
        stats = restore_snapshot(repository, manifest, target, path)
    if state.json:
        state.emit_json({"snapshot": manifest.id, "target": target, "files": stats.files, "directories": stats.directories,
                         "symlinks": stats.symlinks, "bytes_written": stats.bytes_written, "warnings": stats.warnings})
    elif not state.quiet:
        typer.echo(f"restored snapshot {manifest.id[:12]} to {target}: {stats.files} files, "
                   f"{stats.directories} directories, {format_size(stats.bytes_written)}, all verified")


def ls(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, unique id prefix, `latest`, `latest~N`, or a UTC date such as @2026-12-01 or @2026-12-01T12:00."),
    path: str = typer.Argument("", help="Path inside the snapshot to list (default: everything)."),
    long: bool = typer.Option(False, "--long", "-l", help="Show mode, size and modification time."),
) -> None:
    """List the files of a snapshot."""
    from casbak.catalog import lookup_path, resolve_snapshot, walk

    state = ctx.obj
    repository = state.open_repository()
    manifest = resolve_snapshot(repository, snapshot)
    with naming_snapshot(manifest):
        entry = lookup_path(repository, manifest.tree, path)
    prefix = "/".join(p for p in path.split("/") if p).encode("utf-8", "surrogateescape")
    if entry.type == DIRECTORY:
        items = walk(repository, entry.subtree, prefix)
    else:
        items = iter([(prefix, entry)])
    rows = []
    for raw_path, item in items:
        shown = "/" + display_path(raw_path)
        if state.json:
            rows.append({"path": shown, "type": item.type, "mode": item.mode, "size": item.size,
                         "mtime": _iso(item.mtime_ns), "target": display_path(item.target) if item.target else None})
        elif long:
            size = format_size(item.size) if item.size is not None else "-"
            link = f" -> {display_path(item.target)}" if item.type == SYMLINK else ""
            typer.echo(f"{format_mode(item)}  {size:>10}  {_iso(item.mtime_ns)[:19]}  {shown}{link}")
        else:
            typer.echo(shown)
    if state.json:
        state.emit_json(rows)


def _iso(mtime_ns: int) -> str:
    return dt.datetime.fromtimestamp(mtime_ns / 1e9, tz=dt.timezone.utc).isoformat()


def register(app: typer.Typer) -> None:
    app.command("restore")(restore)
    app.command("ls")(ls)
