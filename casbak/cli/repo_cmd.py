"""`casbak init` and `casbak snapshots`."""

from __future__ import annotations

from typing import List, Optional

import typer

from casbak.cli.output import format_size
from casbak.errors import UsageError

# casbak.store.config.DEFAULT_PACK_SIZE in MiB, written out because importing the storage
# layer for a default would slow down `--help` and every command that needs no repository.
# A test compares the two.
DEFAULT_PACK_SIZE_MIB = 16


def init(
    ctx: typer.Context,
    insecure_no_encryption: bool = typer.Option(
        False, "--insecure-no-encryption", help="Store data unencrypted (anyone with storage access can read it)."
    ),
    chunk_avg: int = typer.Option(128, help="Target average chunk size in KiB (fixed for the repository's life)."),
    chunk_min: Optional[int] = typer.Option(None, help="Minimum chunk size in KiB (default: average / 4)."),
    chunk_max: Optional[int] = typer.Option(None, help="Maximum chunk size in KiB (default: average x 4)."),
    pack_size: int = typer.Option(DEFAULT_PACK_SIZE_MIB, help="Target pack size in MiB."),
    compression_level: int = typer.Option(3, help="zstd compression level, 1 (fast) to 19 (small)."),
    kdf_n: int = typer.Option(2**15, hidden=True, help="scrypt cost N of the first key (a power of two)."),
    object_lock_days: int = typer.Option(
        0, help="S3 Object Lock: keep each new pack, index file and snapshot undeletable for this many days "
        "(0 = off; the bucket must have Object Lock enabled).",
    ),
    object_lock_mode: str = typer.Option(
        "governance", help="S3 Object Lock mode: governance (removable with a bypass permission) or compliance.",
    ),
    no_file_sha256: bool = typer.Option(
        False, "--no-file-sha256",
        help="Do not record a SHA-256 of every file (saves CPU; `casbak audit export` then cannot list them).",
    ),
    no_byte_planes: bool = typer.Option(
        False, "--no-byte-planes",
        help="Do not compress model weights as byte planes (codec 2), so that casbak 0.1 can still read the repository.",
    ),
) -> None:
    """Create a new repository (encrypted unless --insecure-no-encryption)."""
    from casbak.chunking import ChunkerParams
    from casbak.crypto import KdfParams
    from casbak.store.backend import open_backend
    from casbak.store.config import ENCRYPTION_AES, ENCRYPTION_NONE, RepositoryConfig
    from casbak.store.objectlock import ObjectLock, check_bucket_object_lock
    from casbak.store.repository import Repository

    state = ctx.obj
    location = state.require_repo()
    if pack_size < 1:
        raise UsageError(f"--pack-size {pack_size}: must be at least 1 MiB")
    if not 1 <= compression_level <= 22:
        raise UsageError(f"--compression-level {compression_level}: must be between 1 and 22")
    encryption = ENCRYPTION_NONE if insecure_no_encryption else ENCRYPTION_AES
    chunker = ChunkerParams(
        min_size=(chunk_min or chunk_avg // 4) * 1024,
        avg_size=chunk_avg * 1024,
        max_size=(chunk_max or chunk_avg * 4) * 1024,
        seed=0 if insecure_no_encryption else ChunkerParams.random_seed(),
    )
    config = RepositoryConfig(
        encryption=encryption,
        chunker=chunker,
        compression_level=compression_level,
        pack_size=pack_size * 1024 * 1024,
        object_lock_days=object_lock_days,
        object_lock_mode=object_lock_mode,
        file_sha256=not no_file_sha256,
        byte_planes=not no_byte_planes,
    )
    backend = open_backend(location, state.options)
    if object_lock_days:
        ObjectLock(object_lock_days, object_lock_mode)  # validates both values
        check_bucket_object_lock(backend)
    password = None if insecure_no_encryption else state.password(required=True)
    repository = Repository.init(backend, password, config=config, kdf=KdfParams(n=kdf_n))
    if state.json:
        state.emit_json({"repository": repository.backend.url, "id": config.repository_id, "encryption": encryption})
    elif not state.quiet:
        typer.echo(f"created repository {config.repository_id[:12]} at {repository.backend.url} (encryption: {encryption})")


def snapshots(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="Only snapshots of this host."),
    tag: List[str] = typer.Option([], help="Only snapshots with this tag (repeatable; all must match)."),
) -> None:
    """List snapshots, oldest first."""
    from casbak.catalog import load_manifests

    state = ctx.obj
    repository = state.open_repository()
    manifests = [m for m in load_manifests(repository) if (host is None or m.hostname == host) and set(tag) <= set(m.tags)]
    if state.json:
        state.emit_json([m.summary() for m in manifests])
        return
    if not manifests:
        if not state.quiet:
            typer.echo("no snapshots")
        return
    typer.echo(f"{'ID':<12}  {'TIME (UTC)':<19}  {'HOST':<16}  {'SIZE':>10}  {'ADDED':>10}  SOURCES")
    for m in manifests:
        marker = " (partial)" if m.partial else ""
        tags = f" [{', '.join(m.tags)}]" if m.tags else ""
        typer.echo(
            f"{m.id[:12]:<12}  {m.time_iso[:19].replace('T', ' '):<19}  {m.hostname[:16]:<16}  "
            f"{format_size(m.stats.get('bytes_total', 0)):>10}  {format_size(m.stats.get('data_added', 0)):>10}  "
            f"{' '.join(m.sources)}{tags}{marker}"
        )


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("snapshots")(snapshots)
