"""Finding snapshots and paths: manifest listing, snapshot selectors, tree look-ups."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Iterator, Optional

import msgpack

from casbak.errors import AmbiguousSnapshot, CasbakError, IntegrityError, PathNotFound, SnapshotNotFound, UsageError
from casbak.manifest import Manifest
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, Entry, Tree

log = logging.getLogger(__name__)


def load_manifests(repository: Repository) -> list[Manifest]:
    """Return every readable manifest, oldest first; damaged ones are logged and skipped."""
    manifests = []
    for snapshot_id in repository.list_snapshot_ids():
        try:
            manifests.append(load_manifest(repository, snapshot_id))
        except IntegrityError as exc:
            log.error("snapshot %s: skipped: %s", snapshot_id[:12], exc)
    manifests.sort(key=lambda m: (m.time_ns, m.id))
    return manifests


def load_manifest(repository: Repository, snapshot_id: str) -> Manifest:
    return Manifest.decode(repository.read_manifest(snapshot_id), snapshot_id)


def resolve_snapshot(repository: Repository, selector: str) -> Manifest:
    """Return the snapshot named by a full id, a unique id prefix, `latest`, `latest~N`, or a UTC date."""
    selector = selector.strip()
    if not selector:
        raise UsageError("snapshot selector is empty: give an id, an id prefix or `latest`")
    if selector == "latest" or selector.startswith("latest~"):
        return _resolve_latest(repository, selector)
    if selector.startswith("@"):
        return _resolve_date(repository, selector)
    matches = [i for i in repository.list_snapshot_ids() if i.startswith(selector.lower())]
    if not matches:
        forgotten = _forget_reason(repository, selector.lower())
        if forgotten:
            raise SnapshotNotFound(f"snapshot {selector}: forgotten ({forgotten}); `casbak snapshots` lists the ids")
        raise SnapshotNotFound(f"snapshot {selector}: not found; `casbak snapshots` lists the ids")
    if len(matches) > 1:
        shown = ", ".join(m[:12] for m in matches[:5])
        raise AmbiguousSnapshot(f"snapshot {selector}: prefix matches {len(matches)} snapshots ({shown}); give more digits")
    return load_manifest(repository, matches[0])


def _resolve_latest(repository: Repository, selector: str) -> Manifest:
    """Resolve `latest` (the newest snapshot) or `latest~N` (N snapshots before it)."""
    steps = 0
    if selector != "latest":
        text = selector[len("latest~") :]
        if not re.fullmatch(r"[0-9]{1,9}", text):
            raise UsageError(
                f"snapshot {selector}: invalid; write latest~N with a whole number N, "
                "such as latest~1 for the snapshot before the newest"
            )
        steps = int(text)
    manifests = load_manifests(repository)
    if not manifests:
        raise SnapshotNotFound(f"snapshot {selector}: the repository has no snapshots")
    if steps >= len(manifests):
        raise SnapshotNotFound(f"snapshot {selector}: the repository has only {len(manifests)} snapshot(s)")
    return manifests[-1 - steps]


def _forget_reason(repository: Repository, prefix: str) -> Optional[str]:
    """Return the reason of a forget record that lists a snapshot id starting with `prefix`.

    `casbak tag` gives a snapshot a new id and forgets the old one, so an old id typed from
    earlier output is a common mistake. Only the error path calls this, and a record that
    cannot be read is skipped, because this only adds a hint to an error.
    """
    for name in repository.backend.list("forgotten"):
        try:
            body = msgpack.unpackb(repository.sealer.open(repository.backend.read(name), what=name))
            listed = [item.get("id", "") for item in body.get("snapshots", [])]
        except (CasbakError, ValueError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            log.debug("forget record %s: skipped while looking up a snapshot id: %s", name, exc)
            continue
        if any(isinstance(i, str) and i.startswith(prefix) for i in listed):
            return str(body.get("reason") or "no reason recorded")
    return None


def _resolve_date(repository: Repository, selector: str) -> Manifest:
    """Resolve `@YYYY-MM-DD` (last snapshot of that UTC day) or `@YYYY-MM-DDTHH:MM[:SS]`
    (last snapshot at or before that instant; UTC unless an offset is given)."""
    text = selector[1:]
    try:
        if len(text) == 10:
            start = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
            low, high = _epoch_ns(start), _epoch_ns(start + dt.timedelta(days=1)) - 1
        else:
            moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.timezone.utc)
            low, high = None, _epoch_ns(moment)
    except ValueError as exc:
        raise UsageError(f"snapshot {selector}: invalid date; use @YYYY-MM-DD or @YYYY-MM-DDTHH:MM (UTC)") from exc
    chosen = [m for m in load_manifests(repository) if m.time_ns <= high and (low is None or m.time_ns >= low)]
    if not chosen:
        span = "on that UTC day" if low is not None else "at or before that time"
        raise SnapshotNotFound(f"snapshot {selector}: no snapshot {span}; `casbak snapshots` lists the times")
    return chosen[-1]


def _epoch_ns(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def find_parent(repository: Repository, hostname: str, sources: list[str]) -> Optional[Manifest]:
    """Return the newest complete snapshot of the same host and source set, if any."""
    wanted = sorted(sources)
    candidates = [m for m in load_manifests(repository) if m.hostname == hostname and sorted(m.sources) == wanted]
    complete = [m for m in candidates if not m.partial]
    chosen = complete or candidates
    return chosen[-1] if chosen else None


def load_tree(repository: Repository, digest: bytes) -> Tree:
    return Tree.decode(repository.get(digest), what=f"tree {digest.hex()[:12]}")


def split_path(path: str) -> list[bytes]:
    """Split a snapshot path into raw name components, ignoring empty and '.' parts."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise UsageError(f"path {path!r}: '..' is not allowed in a snapshot path")
    return parts


def lookup_path(repository: Repository, root: bytes, path: str) -> Entry:
    """Return the entry at `path` in the tree `root`; the root itself is a directory entry."""
    entry = Entry(name=b"", type=DIRECTORY, subtree=root, mode=0o755)
    walked: list[bytes] = []
    for part in split_path(path):
        if entry.type != DIRECTORY:
            raise PathNotFound(f"path {path}: {b'/'.join(walked).decode(errors='replace')} is not a directory")
        found = load_tree(repository, entry.subtree).find(part)
        walked.append(part)
        if found is None:
            raise PathNotFound(f"path {path}: not found in the snapshot; `casbak ls` lists its content")
        entry = found
    return entry


def walk(repository: Repository, root: bytes, prefix: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Yield (path, entry) for every entry below the tree `root`, depth first, sorted."""
    for entry in load_tree(repository, root).entries:
        path = prefix + b"/" + entry.name if prefix else entry.name
        yield path, entry
        if entry.type == DIRECTORY:
            yield from walk(repository, entry.subtree, path)
