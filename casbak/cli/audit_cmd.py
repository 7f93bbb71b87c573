"""`casbak audit export|ledger`: evidence for auditors, and the signing key set-up of `key signing-init`.

Further audit subcommands register on `audit_app`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Iterator, Optional

import typer

from casbak.cli.context import CliState
from casbak.errors import EXIT_PARTIAL, PasswordMissing, UsageError

if TYPE_CHECKING:
    from casbak.audit.signing import SigningKey
    from casbak.store.repository import Repository

log = logging.getLogger(__name__)

# Files without a recorded SHA-256 named one by one on standard error before a summary.
SHOWN_MISSING = 20

audit_app = typer.Typer(
    name="audit",
    help="Export evidence for auditors: per-file SHA-256 lists and the signed snapshot ledger.",
    no_args_is_help=True,
)


@contextmanager
def _output(path: Optional[str]) -> Iterator[BinaryIO]:
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(os.path.expanduser(path), "wb") as handle:
        yield handle


@audit_app.command("export")
def export_command(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, unique id prefix, or `latest`."),
    path: str = typer.Option("", "--path", help="Export only this path, as `casbak restore --path` restores it."),
    output: Optional[str] = typer.Option(
        None, "--output", metavar="FILE", help="Write to FILE instead of standard output."
    ),
    compute_missing: bool = typer.Option(
        False, "--compute-missing",
        help="Hash files whose snapshot has no recorded SHA-256 by reading their content from the repository.",
    ),
) -> None:
    """Write a SHA256SUMS file for `sha256sum -c` (or JSON with --json); exit 3 when some files have no SHA-256."""
    from casbak.audit.checksums import iter_file_digests, json_record, sums_line
    from casbak.catalog import resolve_snapshot

    state: CliState = ctx.obj
    repository = state.open_repository()
    manifest = resolve_snapshot(repository, snapshot)
    missing: list[bytes] = []
    count = 0
    with _output(output) as handle:
        records = []
        for item in iter_file_digests(repository, manifest, path, compute_missing):
            count += 1
            if item.sha256 is None:
                missing.append(item.path)
            if state.json:
                records.append(json_record(item, repository.encrypted))
            elif item.sha256 is not None:
                handle.write(sums_line(item))
        if state.json:
            document = {"snapshot": manifest.id, "path": path, "files": records, "files_without_sha256": len(missing)}
            handle.write(json.dumps(document, indent=2).encode("utf-8") + b"\n")
    log.info("exported %d files of snapshot %s", count, manifest.id[:12])
    if missing:
        _report_missing(manifest.id, missing)
        raise typer.Exit(EXIT_PARTIAL)


def _report_missing(snapshot_id: str, missing: list[bytes]) -> None:
    for name in missing[:SHOWN_MISSING]:
        typer.echo(f"casbak: warning: no SHA-256 recorded: {name.decode('utf-8', 'backslashreplace')}", err=True)
    typer.echo(
        f"casbak: {len(missing)} files of snapshot {snapshot_id[:12]} have no recorded SHA-256 (the snapshot was "
        "taken without the file_sha256 setting) and are not in the list; pass --compute-missing to hash them "
        "from the stored content",
        err=True,
    )


@audit_app.command("ledger")
def ledger_command(
    ctx: typer.Context,
    output: Optional[str] = typer.Option(
        None, "--output", metavar="FILE", help="Write to FILE instead of standard output."
    ),
) -> None:
    """Export the snapshot chain as JSON lines, oldest first, with signer, signature and signed bytes."""
    from casbak.audit.ledger import ledger_entries
    from casbak.audit.signing import load_public_keys
    from casbak.catalog import load_manifests

    state: CliState = ctx.obj
    repository = state.open_repository()
    manifests = load_manifests(repository)
    listed = len(repository.list_snapshot_ids())
    keys, _damaged = load_public_keys(repository)
    with _output(output) as handle:
        for entry in ledger_entries(manifests, keys):
            handle.write(json.dumps(entry, separators=(",", ":")).encode("utf-8") + b"\n")
    if listed != len(manifests):
        # load_manifests skips manifests that fail to open; the ledger must not hide them.
        typer.echo(
            f"casbak: warning: {listed - len(manifests)} of {listed} manifests could not be read and are not in the "
            "ledger; run `casbak verify --ledger` to name them",
            err=True,
        )
        raise typer.Exit(EXIT_PARTIAL)


@audit_app.command("pii")
def pii_command(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, unique id prefix, or `latest`."),
) -> None:
    """Show the PII scan record of a snapshot: counts per detector, files and line numbers (never values)."""
    from casbak.audit.pii import summarize_by_file
    from casbak.catalog import resolve_snapshot

    state: CliState = ctx.obj
    repository = state.open_repository()
    manifest = resolve_snapshot(repository, snapshot)
    record = manifest.pii
    if state.json:
        state.emit_json({"snapshot": manifest.id, "scanned": record is not None, "pii": record})
        return
    if record is None:
        typer.echo(f"snapshot {manifest.id[:12]} was taken without a PII scan (snapshot --pii-scan warn or fail)")
        return
    total = sum(record["counts"].values())
    typer.echo(
        f"snapshot {manifest.id[:12]}: PII scan ({record['mode']}) of {record['files_scanned']} files, "
        f"{record['files_carried']} taken over from the parent: {total} matches"
    )
    for name, number in record["counts"].items():
        typer.echo(f"  {name}: {number}")
    for name, number in record["suppressed"].items():
        typer.echo(f"  {name}: {number} suppressed by the allow-list")
    for path, summary in summarize_by_file(record["findings"]).items():
        typer.echo(f"{path}: {summary}")
    for item in record["incomplete"]:
        typer.echo(f"casbak: warning: {item['path']}: {item['reason']}", err=True)


def init_signing_key(state: CliState, repository: Repository) -> SigningKey:
    """Create (or reuse) the signing key file for `repository` and store its public key there."""
    from casbak.audit.signing import create_key_file, load_key_file, publish_public_key, resolve_key_path, signing_password

    path, _named = resolve_key_path(state.signing_key, repository.config.repository_id)
    if path.exists():
        key = load_key_file(path, signing_password(prompt=True))
        action = "reused existing"
    else:
        key = create_key_file(path, _new_password())
        action = "created"
    publish_public_key(repository, key.public_key)
    if state.json:
        state.emit_json({"signing_key": str(path), "fingerprint": key.fingerprint, "created": action == "created"})
    elif not state.quiet:
        typer.echo(f"{action} signing key {path}")
        typer.echo(f"fingerprint {key.fingerprint}")
        typer.echo("give this fingerprint to auditors through a channel other than the repository")
    return key


def _new_password() -> bytes:
    from casbak.audit.signing import SIGNING_PASSWORD_ENV

    secret = os.environ.get(SIGNING_PASSWORD_ENV)
    if secret is not None:
        return secret.encode()
    if not sys.stdin.isatty():
        raise PasswordMissing(
            f"no password for the new signing key: set {SIGNING_PASSWORD_ENV} "
            "(standard input is not a terminal, so casbak cannot prompt)"
        )
    first = getpass.getpass("new signing key password: ")
    if first != getpass.getpass("new signing key password again: "):
        raise UsageError("the two signing key passwords differ; no key was created")
    return first.encode()


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
