"""`casbak verify` (alias `casbak check`): integrity checks and the restore drill."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import typer

from casbak.cli.output import count_of, format_size
from casbak.errors import EXIT_INTEGRITY, UsageError

if TYPE_CHECKING:
    from casbak.operations.verify import Finding, VerifyResult

# Affected paths printed per finding in the text output; --json lists up to the API's cap.
SHOWN_AFFECTED = 10


def verify(
    ctx: typer.Context,
    snapshot: Optional[str] = typer.Argument(
        None, help="Snapshot for --restore-drill: an id, a unique id prefix, or `latest` (the default)."
    ),
    read_data: bool = typer.Option(
        False, "--read-data", help="Download every pack and re-check every object against its digest."
    ),
    read_data_subset: Optional[str] = typer.Option(
        None, "--read-data-subset", metavar="n/m|P%",
        help="Read only the n-th of m groups of packs (grouped by pack id), or a random P percent of them.",
    ),
    restore_drill: bool = typer.Option(
        False, "--restore-drill",
        help="Also restore SNAPSHOT into a temporary directory and compare every file's size and content hash.",
    ),
    workers: int = typer.Option(4, "--workers", min=1, max=64, help="Parallel pack reads and size queries."),
    no_lock: bool = typer.Option(
        False, "--no-lock",
        help="Take no shared lock (for read-only storage); a gc running meanwhile can then cause false errors.",
    ),
    ledger: bool = typer.Option(
        False, "--ledger", help="Also check every manifest signature and name the first broken link of the chain.",
    ),
    signer: List[str] = typer.Option(
        [], "--signer", metavar="FINGERPRINT",
        help="With --ledger, trust only this signer (hex SHA-256 of its public key; repeatable).",
    ),
) -> None:
    """Check that the repository is complete and undamaged; exit 5 when it is not."""
    from casbak.operations.verify import VerifyOptions, parse_subset, verify_repository

    if snapshot is not None and not restore_drill:
        raise UsageError(f"snapshot {snapshot!r} given without --restore-drill; verify always checks every snapshot")
    if signer and not ledger:
        raise UsageError("--signer given without --ledger; signatures are checked only with --ledger")
    options = VerifyOptions(
        read_data=read_data,
        subset=parse_subset(read_data_subset) if read_data_subset is not None else None,
        restore_drill=(snapshot or "latest") if restore_drill else None,
        workers=workers,
        lock=not no_lock,
        ledger=ledger,
        signers=frozenset(s.strip().lower() for s in signer) or None,
    )
    state = ctx.obj
    repository = state.open_repository()
    result = verify_repository(repository, options)
    if state.json:
        state.emit_json(result.to_dict())
    else:
        _print_text(result, state.quiet)
    if not result.ok:
        raise typer.Exit(EXIT_INTEGRITY)


def _print_text(result: VerifyResult, quiet: bool) -> None:
    for finding in result.errors:
        _print_finding("error", finding)
    if not quiet:
        for finding in result.warnings:
            _print_finding("warning", finding)
    if quiet and result.ok:
        return
    stats = result.stats
    summary = (
        f"{count_of(stats.snapshots, 'snapshot')}, {count_of(stats.index_files, 'index file')}, "
        f"{count_of(stats.packs_indexed, 'pack')}, {count_of(stats.trees_checked, 'tree')} checked"
    )
    if stats.packs_read:
        summary += (
            f", {count_of(stats.packs_read, 'pack')} read ({format_size(stats.bytes_read)}, "
            f"{count_of(stats.objects_read, 'object')})"
        )
    typer.echo(summary)
    if result.first_broken_link is not None:
        typer.echo(f"first broken link: {result.first_broken_link.message}", err=True)
    if result.drill is not None:
        drill = result.drill
        typer.echo(
            f"restore drill of snapshot {drill.snapshot[:12]}: {drill.files_checked} files, "
            f"{format_size(drill.bytes_checked)} compared in {drill.duration_seconds:.1f} s"
        )
    if result.ok:
        typer.echo(f"no errors found ({len(result.warnings)} warnings) in {stats.duration_seconds:.1f} s")
    else:
        typer.echo(f"{len(result.errors)} errors found; the repository is damaged", err=True)


def _print_finding(level: str, finding: Finding) -> None:
    typer.echo(f"{level}: {finding.kind}: {finding.message}", err=True)
    for item in finding.affected[:SHOWN_AFFECTED]:
        typer.echo(f"    affects snapshot {item.snapshot[:12]} {item.path}", err=True)
    hidden = finding.affected_total - min(len(finding.affected), SHOWN_AFFECTED)
    if hidden > 0:
        typer.echo(f"    ... and {hidden} more paths (--json lists up to 1000)", err=True)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("check", help="Alias of `verify`.")(verify)
