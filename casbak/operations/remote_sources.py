"""Snapshot sources given as fsspec URLs (s3://, gs://, memory://, ...).

A remote source is stored in the root tree under `<scheme>/<bucket>/<key parts>`, for
example `s3://training-logs/rlhf/` under `s3/training-logs/rlhf`, so it cannot be
mistaken for a local path of the same snapshot and keeps its place from run to run.
Object stores have no directories: each key prefix becomes a directory entry with mode
0o755 and mtime 0, so an unchanged prefix gives the same tree digest on every run.
Files get mode 0o644, owner 0:0 and the store's modification time.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from casbak.errors import UsageError
from casbak.store.backend import url_protocol
from casbak.store.packs import KIND_TREE
from casbak.tree import DIRECTORY, FILE, Entry, Tree

if TYPE_CHECKING:
    from casbak.operations.snapshot import _Archiver

log = logging.getLogger(__name__)

REMOTE_FILE_MODE = 0o644
REMOTE_DIRECTORY_MODE = 0o755

# Info keys that hold an object's modification time, by backend: s3fs, local and
# sftp-like file systems, gcsfs. memory:// only has `created`, which is the time of the
# last write there because its files are replaced as a whole.
MTIME_KEYS = ("LastModified", "mtime", "updated", "created")
ETAG_KEYS = ("ETag", "etag")


@dataclass
class RemoteSource:
    """One fsspec URL to snapshot, with its file system and place in the root tree."""

    url: str
    fs: Any
    path: str
    tree_parts: list[bytes]
    is_directory: bool

    @property
    def source_name(self) -> str:
        return self.url

    @property
    def tree_path(self) -> str:
        return "/" + "/".join(os.fsdecode(p) for p in self.tree_parts)


@dataclass
class _RemoteDirectory:
    children: dict[str, "_RemoteDirectory | dict"] = field(default_factory=dict)


def is_remote_url(source: str) -> bool:
    """Return whether `source` names an fsspec URL rather than a local path."""
    protocol = url_protocol(source)
    return protocol is not None and protocol != "file" and "://" in source


def split_sources(sources: Sequence[str], options: Optional[Mapping[str, Any]] = None) -> tuple[list[str], list[RemoteSource]]:
    """Split `sources` into local paths and remote sources, and check that each remote exists.

    Raises UsageError for an unknown scheme, a missing bucket or prefix, or two remote
    sources of which one contains the other, before anything is read or written.
    """
    local = [s for s in sources if not is_remote_url(s)]
    remotes = [open_remote_source(s, options or {}) for s in sources if is_remote_url(s)]
    remotes.sort(key=lambda r: r.tree_parts)
    for outer in remotes:
        for inner in remotes:
            if inner is not outer and inner.tree_parts[: len(outer.tree_parts)] == outer.tree_parts:
                raise UsageError(f"source {inner.url} is inside source {outer.url}; give only the outer one")
    return local, remotes


def open_remote_source(url: str, options: Mapping[str, Any]) -> RemoteSource:
    # Imported here so that snapshots of local paths never load fsspec and asyncio.
    import fsspec.core

    scheme = url_protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise UsageError(f"source {url}: cannot open this URL ({exc}); install the fsspec backend for {scheme}://") from exc
    # fsspec reuses file system instances and their cached listings. A listing cached by
    # an earlier run in this process would hide objects changed since.
    fs.invalidate_cache()
    path = path.rstrip("/")
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"source {url}: name a bucket and an optional prefix, such as {scheme}://bucket/prefix/")
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise UsageError(f"source {url}: no such bucket, prefix or object; check the URL (no snapshot was written)") from exc
    except OSError as exc:
        raise UsageError(f"source {url}: cannot be read ({exc}); check the URL and --source-option settings") from exc
    tree_parts = [os.fsencode(scheme)] + [os.fsencode(p) for p in parts]
    return RemoteSource(url, fs, path, tree_parts, info.get("type") == "directory")


def check_remote_paths(roots: Sequence[bytes], remotes: Sequence[RemoteSource]) -> None:
    """Reject a local source that contains a remote source's tree path or lies inside it."""
    for remote in remotes:
        tree_path = os.fsencode(remote.tree_path)
        for root in roots:
            outer = root.rstrip(b"/") + b"/"
            if tree_path.startswith(outer) or root.startswith(tree_path + b"/") or root == tree_path:
                raise UsageError(
                    f"source {os.fsdecode(root)} overlaps the path {remote.tree_path} where {remote.url} is stored; "
                    "snapshot them separately"
                )


def archive_remote(archiver: "_Archiver", name: bytes, source: RemoteSource, parent_entry: Optional[Entry]) -> Optional[Entry]:
    """Archive one remote source and return its entry for the parent tree.

    Files are read one at a time in the walker's thread.
    NOTE: remote files do not use the reader pool, so one slow object stalls the walk.
    """
    if not source.is_directory:
        info = source.fs.info(source.path)
        return _remote_file(archiver, name, source, source.path, info, parent_entry)
    listing = _list_files(archiver, source)
    return _remote_directory(archiver, name, source, listing, parent_entry)


def _list_files(archiver: "_Archiver", source: RemoteSource) -> _RemoteDirectory:
    top = _RemoteDirectory()
    found = source.fs.find(source.path, withdirs=False, detail=True)
    for path, info in sorted(found.items()):
        relative = path[len(source.path):].strip("/") if path.startswith(source.path) else ""
        parts = relative.split("/") if relative else []
        if not parts or any(p in ("", ".", "..") for p in parts) or info.get("type") == "directory":
            # Keys such as "a//b" or directory markers ("a/") have no place in a tree.
            if not path.endswith("/"):
                archiver._record_warning(os.fsencode(_url_of(source, path)), "skipped: key cannot be stored as a path")
            continue
        node = top
        for part in parts[:-1]:
            child = node.children.setdefault(part, _RemoteDirectory())
            if not isinstance(child, _RemoteDirectory):
                archiver._record_warning(os.fsencode(_url_of(source, path)), f"skipped: {part} is both an object and a prefix")
                break
            node = child
        else:
            if parts[-1] in node.children:
                archiver._record_warning(os.fsencode(_url_of(source, path)), "skipped: name is both an object and a prefix")
                continue
            node.children[parts[-1]] = dict(info, name=path)
    return top


def _remote_directory(
    archiver: "_Archiver", name: bytes, source: RemoteSource, directory: _RemoteDirectory, parent_entry: Optional[Entry]
) -> Entry:
    parent_subtree = parent_entry.subtree if parent_entry and parent_entry.type == DIRECTORY else None
    parent_tree = archiver._parent_tree(parent_subtree)
    entries = []
    for child_name, child in sorted(directory.children.items()):
        encoded = os.fsencode(child_name)
        previous = parent_tree.get(encoded)
        if isinstance(child, _RemoteDirectory):
            entry = _remote_directory(archiver, encoded, source, child, previous)
        else:
            entry = _remote_file(archiver, encoded, source, child["name"], child, previous)
        if entry is not None:
            entries.append(entry)
    digest, _new = archiver.writer.put(KIND_TREE, Tree(entries).encode())
    with archiver._lock:
        archiver.stats.directories += 1
    return Entry(name=name, type=DIRECTORY, mode=REMOTE_DIRECTORY_MODE, subtree=digest)


def _remote_file(
    archiver: "_Archiver", name: bytes, source: RemoteSource, path: str, info: Mapping[str, Any], parent_entry: Optional[Entry]
) -> Optional[Entry]:
    url_bytes = os.fsencode(_url_of(source, path))
    size = int(info.get("size") or 0)
    etag = _etag(info)
    mtime_ns = _mtime_ns(info)

    entry = Entry(name=name, type=FILE, mode=REMOTE_FILE_MODE, mtime_ns=mtime_ns, etag=etag)
    if not archiver.full_read and _unchanged(archiver, parent_entry, size, etag, mtime_ns):
        entry.size, entry.chunks, entry.content = parent_entry.size, parent_entry.chunks, parent_entry.content
        entry.sha256 = parent_entry.sha256
        with archiver._lock:
            archiver.stats.files_unmodified += 1
            archiver.stats.bytes_total += entry.size
        archiver.progress.file_done(url_bytes, entry.size, read=False)
        return entry

    try:
        with source.fs.open(path, "rb") as handle:
            chunks, read_size, content = archiver._chunk(handle, url_bytes)
    except OSError as exc:
        archiver._record_error(url_bytes, f"cannot read: {exc}")
        return None

    if read_size != size:
        # The object was replaced between the listing and the read; the next run reads it again.
        archiver._record_warning(url_bytes, f"size changed while it was read ({size} listed, {read_size} read)")
        entry.etag = None
        entry.mtime_ns = 0

    entry.size, entry.chunks, entry.content = read_size, chunks, content
    entry.sha256 = archiver._local.sha256
    archiver.count_read_file(url_bytes, read_size, existed=parent_entry is not None)
    return entry


def _unchanged(archiver: "_Archiver", parent_entry: Optional[Entry], size: int, etag: Optional[str], mtime_ns: int) -> bool:
    if parent_entry is None or parent_entry.type != FILE or parent_entry.size != size:
        return False
    if etag is not None:
        same = parent_entry.etag == etag
    else:
        # Without an ETag the modification time decides; a missing time (0) never matches.
        same = mtime_ns != 0 and parent_entry.mtime_ns == mtime_ns
    if archiver.repository.config.file_sha256 and parent_entry.sha256 is None:
        return False
    return same and all(archiver.writer.has(c) for c in parent_entry.chunks)


def _etag(info: Mapping[str, Any]) -> Optional[str]:
    for key in ETAG_KEYS:
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _mtime_ns(info: Mapping[str, Any]) -> int:
    """Return the object's modification time in ns since the epoch, or 0 when unknown."""
    for key in MTIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            seconds = int(value.timestamp())
            return seconds * 1_000_000_000 + value.microsecond * 1000
        if isinstance(value, (int, float)):
            return int(value * 1_000_000_000) if value < 1e12 else int(value)
    return 0


def _url_of(source: RemoteSource, path: str) -> str:
    scheme = os.fsdecode(source.tree_parts[0])
    return f"{scheme}://{path.lstrip('/')}"
