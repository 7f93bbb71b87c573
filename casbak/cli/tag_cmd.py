"""`casbak tag`: add, remove or replace the tags of existing snapshots.

Manifests are immutable and named by their content hash, so a tag change writes a new
manifest with the same tree, sources, time and statistics. It then removes the old one
the way `casbak forget` does. A forget record that lists the old id is stored first, so
`casbak verify` can tell the missing link in the hash chain from tampering. The whole
change runs under an exclusive repository lock, so it cannot interleave with a forget,
a gc or another tag run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import typer

from casbak.errors import UsageError

if TYPE_CHECKING:
    from casbak.audit.signing import SigningKey
    from casbak.manifest import Manifest
    from casbak.store.locks import RepositoryLock
    from casbak.store.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class RetagResult:
    """The new snapshot id, and why the old manifest is still stored (None when removed)."""

    new_id: str
    old_retained: Optional[str] = None


def new_tags(current: List[str], add: List[str], remove: List[str], replace: List[str]) -> list[str]:
    """Return the sorted tag list after `--set` (replace) or `--add` and `--remove`."""
    tags = set(replace) if replace else set(current)
    tags |= set(add)
    tags -= set(remove)
    return sorted(tags)


def retag(
    repository: Repository,
    manifest: Manifest,
    tags: list[str],
    lock: RepositoryLock,
    signing_key: Optional[SigningKey] = None,
) -> RetagResult:
    """Write `manifest` again with `tags`, then forget the old manifest under the caller's `lock`.

    The new manifest's `previous` is the newest manifest at write time, or that manifest's
    own `previous` when the newest is the re-tagged one. The old signature covers the old
    tags, so it is dropped, and the new manifest is signed with `signing_key` when one is
    given. Storage with retention (such as S3 Object Lock) may keep the old manifest,
    which then stays listed with its old tags.
    """
    from casbak.audit.signing import sign_manifest
    from casbak.catalog import load_manifests
    from casbak.operations.forget import remove_manifests

    newest = load_manifests(repository)
    previous = newest[-1].id if newest else None
    if previous == manifest.id:
        previous = manifest.previous
    updated = dataclasses.replace(manifest, tags=tags, previous=previous, id="", signer=None, signature=None)
    if signing_key is not None:
        sign_manifest(updated, signing_key)
    lock.ensure_held()
    updated.id = repository.write_manifest(updated.encode())
    removal = remove_manifests(repository, [manifest], f"re-tagged as snapshot {updated.id}", lock)
    retained = removal.retained[0]["detail"] if removal.retained else None
    log.info("snapshot %s re-tagged as %s with tags %s", manifest.id[:12], updated.id[:12], tags)
    return RetagResult(updated.id, retained)


def tag(
    ctx: typer.Context,
    snapshots: List[str] = typer.Argument(..., help="Snapshot ids, unique id prefixes, or `latest`."),
    add: List[str] = typer.Option([], "--add", help="Add this tag (repeatable)."),
    remove: List[str] = typer.Option([], "--remove", help="Remove this tag (repeatable)."),
    replace: List[str] = typer.Option([], "--set", help="Replace all tags with these (repeatable); --add and --remove apply after it."),
) -> None:
    """Change the tags of snapshots; each changed snapshot gets a new id."""
    from casbak.audit.signing import signing_key_for
    from casbak.catalog import resolve_snapshot
    from casbak.store.locks import EXCLUSIVE, RepositoryLock

    state = ctx.obj
    if not (add or remove or replace):
        raise UsageError("tag: give at least one of --add, --remove or --set")
    if any(not t.strip() for t in add + remove + replace):
        raise UsageError("tag: tags must not be empty")
    repository = state.open_repository()
    signing_key = signing_key_for(repository, state.signing_key)
    results = []
    seen: set[str] = set()
    with RepositoryLock(repository, EXCLUSIVE, "tag") as lock:
        for selector in snapshots:
            manifest = resolve_snapshot(repository, selector)
            if manifest.id in seen:
                continue
            seen.add(manifest.id)
            tags = new_tags(manifest.tags, add, remove, replace)
            item = {"snapshot": manifest.id, "new_snapshot": manifest.id, "tags": tags, "changed": False, "old_retained": None}
            if tags != sorted(manifest.tags):
                outcome = retag(repository, manifest, tags, lock, signing_key)
                item.update(new_snapshot=outcome.new_id, changed=True, old_retained=outcome.old_retained)
            results.append(item)
    if state.json:
        state.emit_json({"schema": "casbak.tag/1", "command": "tag", "results": results})
    elif not state.quiet:
        for item in results:
            if item["changed"]:
                typer.echo(f"snapshot {item['snapshot'][:12]} is now {item['new_snapshot'][:12]} with tags [{', '.join(item['tags'])}]")
                if item["old_retained"]:
                    typer.echo(f"casbak: old manifest {item['snapshot'][:12]} kept: {item['old_retained']}", err=True)
            else:
                typer.echo(f"snapshot {item['snapshot'][:12]} unchanged: tags [{', '.join(item['tags'])}]")


def register(app: typer.Typer) -> None:
    app.command("tag")(tag)
