"""`casbak copy`: replicate snapshots into another repository.

The target is `--to-repo`, else the global `--repo`, and opens with the usual password
sources (CASBAK_PASSWORD, --password-file, --password-command). The source is
`--from-repo` with its own password sources: CASBAK_FROM_PASSWORD, then
--from-password-file, then --from-password-command, then a prompt on a terminal.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, List, Optional

import typer

from casbak.cli.context import CliState, _read_password_file, _run_password_command, parse_options
from casbak.cli.output import format_size
from casbak.errors import PasswordMissing, UsageError

if TYPE_CHECKING:
    from casbak.operations.copy import CopyResult
    from casbak.store.repository import Repository


def copy(
    ctx: typer.Context,
    snapshots: List[str] = typer.Argument(
        None, help="Source snapshots to copy: ids, unique id prefixes or `latest` (default: every snapshot)."
    ),
    from_repo: Optional[str] = typer.Option(
        None, "--from-repo", envvar="CASBAK_FROM_REPOSITORY", help="Source repository location."
    ),
    from_password_file: Optional[str] = typer.Option(
        None, "--from-password-file", envvar="CASBAK_FROM_PASSWORD_FILE",
        help="Read the source repository's password from this file (CASBAK_FROM_PASSWORD takes precedence).",
    ),
    from_password_command: Optional[str] = typer.Option(
        None, "--from-password-command", envvar="CASBAK_FROM_PASSWORD_COMMAND",
        help="Run this shell command and use its standard output as the source repository's password.",
    ),
    from_option: List[str] = typer.Option(
        [], "--from-option", help="Storage option KEY=VALUE of the source repository, like the global -o."
    ),
    to_repo: Optional[str] = typer.Option(
        None, "--to-repo", help="Target repository location (default: the global --repo)."
    ),
) -> None:
    """Copy snapshots from --from-repo into the target, storing only the objects it lacks."""
    from casbak.audit.signing import signing_key_for
    from casbak.operations.copy import copy_snapshots
    from casbak.store.cache import detach_cache

    state: CliState = ctx.obj
    if not from_repo:
        raise UsageError("no source repository given: pass --from-repo LOCATION or set CASBAK_FROM_REPOSITORY")
    if to_repo:
        state.repo = to_repo
    source = _open_source(from_repo, from_password_file, from_password_command, parse_options(from_option))
    if state.no_cache:
        source.backend = detach_cache(source.backend)
    target = state.open_repository()
    # The target's signing key (--signing-key, or its default path) signs the copies.
    signing_key = signing_key_for(target, state.signing_key)
    result = copy_snapshots(source, target, snapshots or (), signing_key=signing_key)
    if state.json:
        state.emit_json(result.to_json())
    elif not state.quiet:
        _print_result(result)


def _open_source(location: str, password_file: Optional[str], password_command: Optional[str], options: dict) -> Repository:
    from casbak.store.repository import Repository

    try:
        return Repository.open(location, _source_password(password_file, password_command), options)
    except PasswordMissing:
        if not sys.stdin.isatty():
            raise PasswordMissing(
                f"source repository {location} is encrypted: set CASBAK_FROM_PASSWORD or pass "
                "--from-password-file or --from-password-command"
            ) from None
        import getpass

        return Repository.open(location, getpass.getpass("source repository password: ").encode(), options)


def _source_password(password_file: Optional[str], password_command: Optional[str]) -> Optional[bytes]:
    secret = os.environ.get("CASBAK_FROM_PASSWORD")
    if secret is not None:
        return secret.encode()
    if password_file:
        return _read_password_file(password_file)
    if password_command:
        return _run_password_command(password_command)
    return None


def _print_result(result: CopyResult) -> None:
    for snapshot in result.snapshots:
        if snapshot.skipped:
            typer.echo(f"skipped {snapshot.source_id[:12]}: already copied as {snapshot.target_id[:12]}")
            continue
        stats = snapshot.stats
        typer.echo(
            f"copied  {snapshot.source_id[:12]} as {snapshot.target_id[:12]}: {stats.files} files, "
            f"{stats.chunks_new} new chunks, {format_size(stats.bytes_added)} added, "
            f"{stats.objects_verified} objects read back"
        )
    typer.echo(f"copied {len(result.copied)} of {len(result.snapshots)} snapshots")


def register(app: typer.Typer) -> None:
    app.command("copy")(copy)
