"""`casbak tag`: add, remove or replace the tags of existing snapshots.

Manifests are immutable and named by their content hash, so a tag change writes a new
manifest with the same tree, sources, time and statistics, and then removes the old one.
Before the removal, a forget record `forgotten/<BLAKE3 of the stored bytes>` lists the old
id, so `casbak verify` can tell the missing link in the hash chain from tampering. The
record is a sealed msgpack map {"version": 1, "time_ns", "snapshots": [{"id",
"previous", "time_ns"}], "reason"}, the format that `casbak forget` writes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import List

import blake3
import msgpack
import typer

from casbak.catalog import load_manifests, resolve_snapshot
from casbak.errors import UsageError
from casbak.manifest import Manifest
from casbak.store.repository import SNAPSHOTS_PREFIX, Repository

log = logging.getLogger(__name__)

FORGOTTEN_PREFIX = "forgotten"
FORGET_RECORD_VERSION = 1


def new_tags(current: List[str], add: List[str], remove: List[str], replace: List[str]) -> list[str]:
    """Return the sorted tag list after `--set` (replace) or `--add` and `--remove`."""
    tags = set(replace) if replace else set(current)
    tags |= set(add)
    tags -= set(remove)
    return sorted(tags)


def retag(repository: Repository, manifest: Manifest, tags: list[str]) -> str:
    """Write `manifest` again with `tags`, record the old id as forgotten, delete the old one.

    Returns the new snapshot id. The new manifest's `previous` is the newest manifest at
    write time, or that manifest's own `previous` when the newest is the re-tagged one.
    NOTE: this does not take the repository lock yet, so a tag run that overlaps a
    `casbak forget` of the same snapshot can bring the snapshot back under its new id.
    """
    newest = load_manifests(repository)
    previous = newest[-1].id if newest else None
    if previous == manifest.id:
        previous = manifest.previous
    updated = dataclasses.replace(manifest, tags=tags, previous=previous, id="")
    updated.id = repository.write_manifest(updated.encode())
    _write_forget_record(repository, manifest, f"re-tagged as snapshot {updated.id}")
    repository.backend.delete(f"{SNAPSHOTS_PREFIX}/{manifest.id}")
    log.info("snapshot %s re-tagged as %s with tags %s", manifest.id[:12], updated.id[:12], tags)
    return updated.id


def _write_forget_record(repository: Repository, manifest: Manifest, reason: str) -> str:
    body = {
        "version": FORGET_RECORD_VERSION,
        "time_ns": time.time_ns(),
        "snapshots": [{"id": manifest.id, "previous": manifest.previous, "time_ns": manifest.time_ns}],
        "reason": reason,
    }
    sealed = repository.sealer.seal(msgpack.packb(body))
    name = f"{FORGOTTEN_PREFIX}/{blake3.blake3(sealed).hexdigest()}"
    repository.backend.write(name, sealed)
    return name


def tag(
    ctx: typer.Context,
    snapshots: List[str] = typer.Argument(..., help="Snapshot ids, unique id prefixes, or `latest`."),
    add: List[str] = typer.Option([], "--add", help="Add this tag (repeatable)."),
    remove: List[str] = typer.Option([], "--remove", help="Remove this tag (repeatable)."),
    replace: List[str] = typer.Option([], "--set", help="Replace all tags with these (repeatable); --add and --remove apply after it."),
) -> None:
    """Change the tags of snapshots; each changed snapshot gets a new id."""
    state = ctx.obj
    if not (add or remove or replace):
        raise UsageError("tag: give at least one of --add, --remove or --set")
    if any(not t.strip() for t in add + remove + replace):
        raise UsageError("tag: tags must not be empty")
    repository = state.open_repository()
    results = []
    seen: set[str] = set()
    for selector in snapshots:
        manifest = resolve_snapshot(repository, selector)
        if manifest.id in seen:
            continue
        seen.add(manifest.id)
        tags = new_tags(manifest.tags, add, remove, replace)
        if tags == sorted(manifest.tags):
            results.append({"snapshot": manifest.id, "new_snapshot": manifest.id, "tags": tags, "changed": False})
            continue
        new_id = retag(repository, manifest, tags)
        results.append({"snapshot": manifest.id, "new_snapshot": new_id, "tags": tags, "changed": True})
    if state.json:
        state.emit_json({"schema": "casbak.tag/1", "command": "tag", "results": results})
    elif not state.quiet:
        for item in results:
            if item["changed"]:
                typer.echo(f"snapshot {item['snapshot'][:12]} is now {item['new_snapshot'][:12]} with tags [{', '.join(item['tags'])}]")
            else:
                typer.echo(f"snapshot {item['snapshot'][:12]} unchanged: tags [{', '.join(item['tags'])}]")


def register(app: typer.Typer) -> None:
    app.command("tag")(tag)
