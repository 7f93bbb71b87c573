"""Compare two snapshots: walk both Merkle trees and skip every subtree whose digest is equal.

Equal digests mean equal content, so the work grows with the number of changed
entries (and the directories above them), not with the size of the trees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

from casbak.catalog import load_tree, lookup_path, resolve_snapshot, split_path
from casbak.errors import PathNotFound
from casbak.manifest import Manifest
from casbak.records import diff_content
from casbak.records.model import ContentDiff, RecordLimits
from casbak.records.reader import chunk_sizes
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FILE, SYMLINK, Entry

log = logging.getLogger(__name__)

ADDED = "+"
REMOVED = "-"
MODIFIED = "M"
TYPE_CHANGED = "T"
METADATA_CHANGED = "U"

# Entry fields whose change makes an entry "metadata changed". The ctime and inode are
# left out, because every copy or restore changes them while the user changed nothing.
METADATA_FIELDS = (("mode", "mode"), ("uid", "uid"), ("gid", "gid"), ("mtime_ns", "mtime"))


@dataclass
class Change:
    """One path that differs; `old` is None for added paths and `new` for removed ones.

    `fields` names what differs: "content" (file content, symlink target or device
    number), "type", or metadata ("mode", "uid", "gid", "mtime").
    """

    path: bytes
    status: str
    old: Optional[Entry]
    new: Optional[Entry]
    fields: tuple[str, ...] = ()
    content: Optional[ContentDiff] = None


@dataclass
class DiffSummary:
    """Counts of changed paths by status, and content bytes.

    `bytes_added` is the size of the distinct chunks that the new side of the changed
    files references and their old side does not. `bytes_removed` is the reverse, and a
    renamed or copied file adds no bytes.
    """

    added: int = 0
    removed: int = 0
    modified: int = 0
    type_changed: int = 0
    metadata_changed: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0
    trees_read: int = 0

    @property
    def total(self) -> int:
        return self.added + self.removed + self.modified + self.type_changed + self.metadata_changed


@dataclass
class DiffResult:
    """The changes from snapshot `old` to snapshot `new`, below `path` when one was given."""

    old: Manifest
    new: Manifest
    path: Optional[str]
    changes: list[Change] = field(default_factory=list)
    summary: DiffSummary = field(default_factory=DiffSummary)


# Work items of TreeDiffer's explicit stack.
_PAIR = "pair"  # compare two entries at one path (either may be None)
_TREES = "trees"  # compare the children of two directory trees
_BELOW = "below"  # report every entry below one tree with one status
_ONE = "one"  # report one entry, then everything below it


class TreeDiffer:
    """Walk two trees in step; `trees_read` counts the tree objects loaded.

    The walk keeps its own stack instead of recursing, because Python's recursion limit
    would otherwise stop it at a few hundred directory levels.
    """

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.trees_read = 0

    def diff_trees(self, old_root: bytes, new_root: bytes, prefix: bytes = b"") -> Iterator[Change]:
        """Yield the changes between two directory trees, parents before their children."""
        return self._run([(_TREES, prefix, old_root, new_root)])

    def diff_entries(self, path: bytes, old: Optional[Entry], new: Optional[Entry]) -> Iterator[Change]:
        """Yield the changes between two entries at the same path (either may be None)."""
        return self._run([(_PAIR, path, old, new)])

    def _run(self, stack: list[tuple]) -> Iterator[Change]:
        # Items are popped last-in first-out, so children are pushed in reverse name
        # order and each directory's content is reported before its next sibling.
        while stack:
            kind, path, first, second = stack.pop()
            if kind == _TREES:
                self._push_children(stack, path, first, second)
            elif kind == _BELOW:
                for name, entry in reversed(list(self._entries(first).items())):
                    stack.append((_ONE, _join(path, name), entry, second))
            elif kind == _ONE:
                yield Change(path, second, None if second == ADDED else first, first if second == ADDED else None)
                if first.type == DIRECTORY:
                    stack.append((_BELOW, path, first.subtree, second))
            else:
                yield from self._compare(stack, path, first, second)

    def _push_children(self, stack: list[tuple], prefix: bytes, old_root: bytes, new_root: bytes) -> None:
        if old_root == new_root:
            return
        old_entries = self._entries(old_root)
        new_entries = self._entries(new_root)
        for name in sorted(set(old_entries) | set(new_entries), reverse=True):
            stack.append((_PAIR, _join(prefix, name), old_entries.get(name), new_entries.get(name)))

    def _compare(self, stack: list[tuple], path: bytes, old: Optional[Entry], new: Optional[Entry]) -> Iterator[Change]:
        """Yield the change of one path itself and push the work for what lies below it."""
        if old is None and new is None:
            return
        if old is None:
            stack.append((_ONE, path, new, ADDED))
        elif new is None:
            stack.append((_ONE, path, old, REMOVED))
        elif old.type != new.type:
            yield Change(path, TYPE_CHANGED, old, new, ("type",))
            # Pushed in reverse: the old directory's entries are reported first.
            if new.type == DIRECTORY:
                stack.append((_BELOW, path, new.subtree, ADDED))
            if old.type == DIRECTORY:
                stack.append((_BELOW, path, old.subtree, REMOVED))
        elif old.type == DIRECTORY:
            metadata = _metadata_changes(old, new)
            if old.subtree != new.subtree:
                # Adding or removing a child sets the directory's mtime, so with changed
                # content only mode and owner changes are worth a line of their own.
                metadata = tuple(name for name in metadata if name != "mtime")
                stack.append((_TREES, path, old.subtree, new.subtree))
            if metadata:
                yield Change(path, METADATA_CHANGED, old, new, metadata)
        else:
            metadata = _metadata_changes(old, new)
            if _content_differs(old, new):
                yield Change(path, MODIFIED, old, new, ("content",) + metadata)
            elif metadata:
                yield Change(path, METADATA_CHANGED, old, new, metadata)

    def _entries(self, digest: bytes) -> dict[bytes, Entry]:
        self.trees_read += 1
        return {entry.name: entry for entry in load_tree(self.repository, digest).entries}


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix + b"/" + name if prefix else name


def _metadata_changes(old: Entry, new: Entry) -> tuple[str, ...]:
    return tuple(label for attribute, label in METADATA_FIELDS if getattr(old, attribute) != getattr(new, attribute))


def _content_differs(old: Entry, new: Entry) -> bool:
    if old.type == FILE:
        return old.content != new.content
    if old.type == SYMLINK:
        return old.target != new.target
    return old.rdev != new.rdev


def diff_trees(repository: Repository, old_root: bytes, new_root: bytes) -> list[Change]:
    """Return the changes between two root trees of one repository."""
    return list(TreeDiffer(repository).diff_trees(old_root, new_root))


def diff_snapshots(
    repository: Repository,
    old: Manifest,
    new: Manifest,
    path: Optional[str] = None,
    *,
    records: Optional[bool] = None,
    key: Optional[str] = None,
    limits: RecordLimits = RecordLimits(),
) -> DiffResult:
    """Compare two snapshots, optionally only below `path`.

    With `records` True, every modified file is also compared inside (records, config
    keys or chunk ranges). With None, that happens when a `key` is given or `path` names
    a file in either snapshot. False turns it off.
    """
    differ = TreeDiffer(repository)
    result = DiffResult(old, new, path)
    automatic = records is None
    records = bool(records) or (automatic and key is not None)
    if path and split_path(path):
        old_entry = _lookup_or_none(repository, old.tree, path)
        new_entry = _lookup_or_none(repository, new.tree, path)
        if old_entry is None and new_entry is None:
            raise PathNotFound(f"path {path}: not found in snapshot {old.id[:12]} nor in {new.id[:12]}")
        names_file = FILE in (getattr(old_entry, "type", None), getattr(new_entry, "type", None))
        records = records or (automatic and names_file)
        changes = differ.diff_entries(b"/".join(split_path(path)), old_entry, new_entry)
    else:
        changes = differ.diff_trees(old.tree, new.tree)
    for change in changes:
        if records and change.status == MODIFIED and change.old.type == FILE:
            name = change.path.rsplit(b"/", 1)[-1]
            change.content = diff_content(repository, change.old, change.new, name, key, limits)
        result.changes.append(change)
    result.summary = summarize(repository, result.changes)
    result.summary.trees_read = differ.trees_read
    log.info("diff %s..%s: %d changes, %d trees read", old.id[:12], new.id[:12], len(result.changes), differ.trees_read)
    return result


def _lookup_or_none(repository: Repository, root: bytes, path: str) -> Optional[Entry]:
    try:
        return lookup_path(repository, root, path)
    except PathNotFound:
        return None


def summarize(repository: Repository, changes: list[Change]) -> DiffSummary:
    """Count changes by status and measure the content bytes they add and remove."""
    summary = DiffSummary()
    counters = {
        ADDED: "added", REMOVED: "removed", MODIFIED: "modified",
        TYPE_CHANGED: "type_changed", METADATA_CHANGED: "metadata_changed",
    }
    old_chunks: set[bytes] = set()
    new_chunks: set[bytes] = set()
    for change in changes:
        name = counters[change.status]
        setattr(summary, name, getattr(summary, name) + 1)
        if change.status == METADATA_CHANGED:
            continue
        if change.old is not None and change.old.type == FILE:
            old_chunks.update(change.old.chunks)
        if change.new is not None and change.new.type == FILE:
            new_chunks.update(change.new.chunks)
    added, removed = list(new_chunks - old_chunks), list(old_chunks - new_chunks)
    summary.bytes_added = sum(chunk_sizes(repository, added))
    summary.bytes_removed = sum(chunk_sizes(repository, removed))
    return summary


SnapshotSelector = Union[str, Manifest]


def diff(
    repository: Repository,
    a: SnapshotSelector,
    b: SnapshotSelector,
    path: Optional[str] = None,
    records: Optional[bool] = None,
    key: Optional[str] = None,
    limits: RecordLimits = RecordLimits(),
) -> DiffResult:
    """Compare snapshot `a` (older) with `b` (newer); each is a Manifest or a selector.

    `records` works as in `diff_snapshots`: None compares inside files when a `key` is
    given or `path` names a file, True always, False never.

    Selectors are those of `casbak.catalog.resolve_snapshot`: an id, a unique id
    prefix, `latest`, `@YYYY-MM-DD` or `@YYYY-MM-DDTHH:MM`.
    """
    old = a if isinstance(a, Manifest) else resolve_snapshot(repository, a)
    new = b if isinstance(b, Manifest) else resolve_snapshot(repository, b)
    return diff_snapshots(repository, old, new, path, records=records, key=key, limits=limits)
