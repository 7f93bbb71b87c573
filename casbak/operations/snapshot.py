"""Create a snapshot: walk sources, chunk changed files, write trees, then the manifest.

The walker runs in the calling thread. It reads files up to INLINE_READ_LIMIT itself and
hands larger ones to a small pool of reader threads. Both chunk, hash and queue new chunks
with the ObjectWriter, whose own pool compresses, encrypts and uploads. Directories are
finished in post-order as soon as all their files are done, and a finished directory
keeps only its digest. So at most `window` files are in flight, and memory grows with the
entries of the directories still open, not with the size of the tree or of any file.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Optional, Sequence, Union

from casbak import __version__
from casbak.audit.pii import PiiScan
from casbak.audit.signing import SigningKey, sign_manifest
from casbak.catalog import find_parent, load_manifests, load_tree, resolve_snapshot
from casbak.chunking import Chunker, ChunkerParams
from casbak.errors import UsageError
from casbak.manifest import Manifest
from casbak.operations.local_files import (
    list_directory,
    lstat_or_none,
    open_and_stat,
    open_for_reading,
    read_small,
    same_version,
    stat_or_none,
)
from casbak.operations.progress import Progress
from casbak.operations.stream_hash import HashFeeder
from casbak.operations.remote_sources import RemoteSource, archive_remote, check_remote_paths, split_sources
from casbak.operations.sources import PathFilter, StreamSource, check_stream_paths
from casbak.store.packs import KIND_DATA, KIND_TREE
from casbak.store.locks import SHARED, LockSettings, RepositoryLock
from casbak.store.repository import Repository
from casbak.store.writer import ObjectWriter
from casbak.tree import BLOCK_DEVICE, CHAR_DEVICE, DIRECTORY, FIFO, FILE, SYMLINK, Entry, Tree

log = logging.getLogger(__name__)

# Files up to this size are read by the walker itself, in one read call, because a task
# for a reader thread would cost more than the read (a Future, a lock and two thread
# switches). Compression still runs in the writer's pool.
INLINE_READ_LIMIT = 64 * 1024

# Files get their whole-file hashes computed in a second thread once this much of them
# has been read (see casbak.operations.stream_hash).
BACKGROUND_HASH_AFTER = 8 * 1024 * 1024

# How often a file that changes while it is read is read again before it is stored as is.
READ_ATTEMPTS = 3


@dataclass
class SnapshotStats:
    """Counters of one snapshot run; sizes in bytes."""

    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    directories: int = 0
    other_entries: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    data_added: int = 0
    data_added_stored: int = 0
    chunks_new: int = 0
    trees_new: int = 0
    errors: int = 0
    warnings: int = 0
    excluded: int = 0
    duration_seconds: float = 0.0


@dataclass
class SnapshotResult:
    manifest: Manifest
    stats: SnapshotStats
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)


# A child slot of a _DirNode: an entry, a subdirectory, None while a reader thread reads
# the file or once its error is recorded, or the exception that stopped the reader.
_Child = Union[Entry, "_DirNode", None, BaseException]


@dataclass
class _DirNode:
    """A directory whose tree is written once all its children are finished.

    Reader threads fill their slots in `children` and decrement `reading` under the
    archiver's lock. Once the tree is written, only `digest` is kept.
    """

    name: bytes
    stat: Optional[os.stat_result]
    children: list[_Child] = field(default_factory=list)
    digest: Optional[bytes] = None
    reading: int = 0

    def ready(self) -> bool:
        return self.reading == 0


@dataclass
class _Frame:
    """A directory being walked: its node, its path, the names still to visit.

    `not_regular` contains the names that the directory listing did not report as regular
    files; all other names are opened without an lstat first.
    """

    node: _DirNode
    path: bytes
    names: Iterator[bytes]
    parent_tree: dict[bytes, Entry]
    not_regular: set[bytes]


def create_snapshot(
    repository: Repository,
    sources: Sequence[str],
    *,
    lock_settings: Optional[LockSettings] = None,
    **options: Any,
) -> SnapshotResult:
    """Snapshot `sources` while holding a shared repository lock; see _create_snapshot_locked.

    The lock keeps gc from deleting packs whose objects this run reuses. It raises
    RepositoryLocked (exit code 4) while a forget or gc holds an exclusive lock.
    """
    with RepositoryLock(repository, SHARED, "snapshot", lock_settings) as lock:
        # An index loaded before the lock may name packs that a gc has deleted since;
        # deduplicating against it would store a snapshot with missing data.
        repository._index = None
        return _create_snapshot_locked(repository, sources, lock=lock, **options)


def _create_snapshot_locked(
    repository: Repository,
    sources: Sequence[str],
    *,
    lock: RepositoryLock,
    tags: Sequence[str] = (),
    parent: Optional[str] = None,
    use_parent: bool = True,
    full_read: bool = False,
    hostname: Optional[str] = None,
    progress: Optional[Progress] = None,
    reader_threads: int = 2,
    exclude: Optional[PathFilter] = None,
    one_file_system: bool = False,
    streams: Sequence[StreamSource] = (),
    signing_key: Optional[SigningKey] = None,
    pii_scan: Optional[PiiScan] = None,
    source_options: Optional[dict[str, Any]] = None,
) -> SnapshotResult:
    """Snapshot `sources` (local paths or fsspec URLs) and return the written manifest with statistics.

    The parent snapshot (`parent`, else the newest of the same host and sources) lets
    files with unchanged (size, mtime_ns, inode, ctime_ns) skip reading; `full_read`
    reads every file anyway. Unreadable entries are left out, listed in the manifest's
    `errors`, and mark the snapshot partial. Entries that `exclude` matches (or that lie
    on another file system, with `one_file_system`) are left out and counted. Each of
    `streams` becomes one file; a stream whose producer fails aborts the whole snapshot.
    With `signing_key`, the manifest carries an Ed25519 signature (see casbak.audit.signing).
    With `pii_scan`, text-like files are scanned as they are chunked and the manifest gets
    a `pii` record; in fail mode, findings raise PiiFound before the manifest is written.
    Sources with a URL scheme are read through fsspec with `source_options` (see
    casbak.operations.remote_sources).
    """
    started = time.monotonic()
    hostname = hostname or socket.gethostname()
    local_sources, remotes = split_sources(sources, source_options)
    roots = _absolute_sources(local_sources) if local_sources or not (streams or remotes) else []
    check_stream_paths(roots, streams)
    check_remote_paths(roots, remotes)
    source_names = [_path_text(r) for r in roots] + [r.source_name for r in remotes] + [s.source_name for s in streams]
    path_filter = replace(exclude or PathFilter(), roots=roots)
    path_filter.one_file_system = path_filter.one_file_system or one_file_system

    parent_manifest = None
    if parent:
        parent_manifest = resolve_snapshot(repository, parent)
    elif use_parent:
        parent_manifest = find_parent(repository, hostname, source_names)
    if parent_manifest:
        log.info("using parent snapshot %s", parent_manifest.id[:12])
    if pii_scan is not None and parent_manifest is not None and not pii_scan.use_parent(parent_manifest.pii):
        # Unchanged files are not read, and the parent has no scan result to take over.
        log.info("parent snapshot %s has no PII scan record; reading every file", parent_manifest.id[:12])
        full_read = True

    with repository.writer() as writer:
        archiver = _Archiver(repository, writer, progress or Progress(), full_read, reader_threads)
        archiver.path_filter = path_filter if path_filter.active else None
        archiver.pii_scan = pii_scan
        try:
            root = archiver.archive_sources(roots, parent_manifest.tree if parent_manifest else None, streams, remotes)
            writer.flush()
        except BaseException:
            archiver.abort()
            _save_progress(writer)
            raise
        archiver.stats.data_added = writer.stats.bytes_new_raw
        archiver.stats.data_added_stored = writer.stats.bytes_new_stored
        archiver.stats.chunks_new = writer.stats.per_kind_new[KIND_DATA]
        archiver.stats.trees_new = writer.stats.per_kind_new[KIND_TREE]

    archiver.stats.duration_seconds = round(time.monotonic() - started, 3)
    if pii_scan is not None:
        # Raises in fail mode. The packs written so far are indexed, so a later run reuses
        # them, and gc removes them if no snapshot ever does.
        pii_scan.check()
    existing = load_manifests(repository)
    manifest = Manifest(
        time_ns=time.time_ns(),
        hostname=hostname,
        username=getpass.getuser(),
        sources=source_names,
        tree=root,
        program_version=__version__,
        tags=sorted(set(tags)),
        parent=parent_manifest.id if parent_manifest else None,
        previous=existing[-1].id if existing else None,
        partial=bool(archiver.errors),
        errors=archiver.errors,
        stats=asdict(archiver.stats),
        pii=pii_scan.record_map() if pii_scan is not None else None,
    )
    if signing_key is not None:
        sign_manifest(manifest, signing_key)
    # The manifest is written last: every object it references is already indexed.
    lock.ensure_held()
    manifest.id = repository.write_manifest(manifest.encode())
    log.info("snapshot %s saved (%d new files, %d bytes added)", manifest.id[:12], archiver.stats.files_new, archiver.stats.data_added)
    return SnapshotResult(manifest, archiver.stats, archiver.errors, archiver.warnings)


def _save_progress(writer: ObjectWriter) -> None:
    # Index what was already uploaded, so the next run reuses it instead of uploading again.
    try:
        writer.flush()
    except Exception as exc:  # the original error is the one to report
        log.warning("could not index the packs of the interrupted snapshot: %s", exc)


def _absolute_sources(sources: Sequence[str]) -> list[bytes]:
    if not sources:
        raise UsageError("no source path given: name at least one file or directory to snapshot")
    roots = []
    for source in sources:
        path = os.path.abspath(os.fsencode(os.path.expanduser(source)))
        if not os.path.lexists(path):
            raise UsageError(f"source {source}: no such file or directory; check the path (no snapshot was written)")
        roots.append(path)
    roots = sorted(set(roots))
    for outer in roots:
        for inner in roots:
            if inner != outer and (inner.startswith(outer.rstrip(b"/") + b"/") or outer == b"/"):
                raise UsageError(f"source {os.fsdecode(inner)} is inside source {os.fsdecode(outer)}; give only the outer one")
    return roots


class _Archiver:
    """One snapshot run's walk; not reusable."""

    def __init__(self, repository: Repository, writer: ObjectWriter, progress: Progress, full_read: bool, reader_threads: int) -> None:
        self.repository = repository
        self.writer = writer
        self.progress = progress
        self.full_read = full_read
        self.stats = SnapshotStats()
        self.errors: list[dict] = []
        self.warnings: list[dict] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=reader_threads, thread_name_prefix="casbak-read")
        self._window: deque[Future] = deque()
        self._max_window = 8 * reader_threads
        self._pending: deque[_DirNode] = deque()
        self.path_filter: Optional[PathFilter] = None
        self.pii_scan: Optional[PiiScan] = None

    # Walking

    def archive_sources(
        self,
        roots: list[bytes],
        parent_root: Optional[bytes],
        streams: Sequence[StreamSource] = (),
        remotes: Sequence[RemoteSource] = (),
    ) -> bytes:
        """Archive the sources under a root tree that mirrors their absolute paths."""
        if roots == [b"/"] and not streams and not remotes:
            top = self._archive_directory(b"", b"/", os.lstat(b"/"), parent_root)
            if top is None:
                raise UsageError("source /: cannot be listed")
            self._drain(block=True)
            self._pool.shutdown(wait=True)
            return top.digest
        trie: dict = {}
        for root in roots:
            node = trie
            parts = [p for p in root.split(b"/") if p]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1] if parts else b""] = root
        for stream in streams:
            node = trie
            parts = [os.fsencode(p) for p in stream.path.split("/") if p]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = stream
        for remote in remotes:
            node = trie
            for part in remote.tree_parts[:-1]:
                node = node.setdefault(part, {})
            node[remote.tree_parts[-1]] = remote
        top = self._archive_virtual(b"", b"/", trie, parent_root)
        self._drain(block=True)
        self._pool.shutdown(wait=True)
        return top.digest

    def abort(self) -> None:
        for future in self._window:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _archive_virtual(self, name: bytes, path: bytes, trie: dict, parent_subtree: Optional[bytes]) -> _DirNode:
        # stat, not lstat: a symlink above a source is stored as the directory it leads to,
        # and the link's own mode (0o777) would restore as a world-writable directory.
        node = _DirNode(name, stat_or_none(path) if name else None)
        parent_tree = self._parent_tree(parent_subtree)
        for child_name in sorted(trie):
            child = trie[child_name]
            parent_entry = parent_tree.get(child_name)
            if isinstance(child, dict):
                child_path = os.path.join(path, child_name)
                subtree = parent_entry.subtree if parent_entry and parent_entry.type == DIRECTORY else None
                node.children.append(self._archive_virtual(child_name, child_path, child, subtree))
            elif isinstance(child, StreamSource):
                node.children.append(self._read_stream(child_name, child))
            elif isinstance(child, RemoteSource):
                remote_entry = archive_remote(self, child_name, child, parent_entry)
                if remote_entry is not None:
                    node.children.append(remote_entry)
            else:
                frame = self._add_path(node, child, os.path.basename(child) or b"/", parent_entry)
                if frame is not None:
                    self._walk(frame)
        self._pending.append(node)
        return node

    def _archive_directory(
        self, name: bytes, path: bytes, st: os.stat_result, parent_subtree: Optional[bytes]
    ) -> Optional[_DirNode]:
        frame = self._open_directory(name, path, st, parent_subtree)
        if frame is None:
            return None
        self._walk(frame)
        return frame.node

    def _walk(self, top: "_Frame") -> None:
        """Archive everything below `top` depth first, with an explicit stack.

        An explicit stack instead of recursion lets trees of any depth be walked under
        Python's recursion limit. A directory joins `_pending` when its last child has
        been visited, so children always come before their parents there.
        """
        stack = [top]
        while stack:
            frame = stack[-1]
            child_name = next(frame.names, None)
            if child_name is None:
                stack.pop()
                self._pending.append(frame.node)
                self._drain(block=False)
                continue
            child_path = os.path.join(frame.path, child_name)
            parent_entry = frame.parent_tree.get(child_name)
            if child_name not in frame.not_regular and self._reads_without_lstat(parent_entry):
                if self._add_listed_file(frame.node, child_path, child_name, parent_entry is not None):
                    continue
            subdirectory = self._add_path(frame.node, child_path, child_name, parent_entry)
            if subdirectory is not None:
                stack.append(subdirectory)

    def _open_directory(
        self, name: bytes, path: bytes, st: os.stat_result, parent_subtree: Optional[bytes]
    ) -> Optional["_Frame"]:
        try:
            names, not_regular = list_directory(path)
        except OSError as exc:
            self._record_error(path, f"cannot list directory: {exc.strerror or exc}")
            return None
        return _Frame(_DirNode(name, st), path, iter(names), self._parent_tree(parent_subtree), not_regular)

    def _add_path(self, node: _DirNode, path: bytes, name: bytes, parent_entry: Optional[Entry]) -> Optional["_Frame"]:
        """Add one entry to `node`; return the frame of a directory still to be walked."""
        try:
            st = os.lstat(path)
        except OSError as exc:
            self._record_error(path, f"cannot stat: {exc.strerror or exc}")
            return None
        if self.path_filter is not None and self._excluded(path, st):
            return None
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            subtree = parent_entry.subtree if parent_entry and parent_entry.type == DIRECTORY else None
            frame = self._open_directory(name, path, st, subtree)
            if frame is not None:
                node.children.append(frame.node)
            return frame
        if stat.S_ISREG(mode):
            child = self._file_entry(node, path, name, st, parent_entry)
            if child is not None:
                node.children.append(child)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self._record_error(path, f"cannot read symlink: {exc.strerror or exc}")
                return None
            node.children.append(_metadata_entry(name, SYMLINK, st, target=target))
            self._count_other()
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = BLOCK_DEVICE
            if stat.S_ISFIFO(mode):
                kind = FIFO
            elif stat.S_ISCHR(mode):
                kind = CHAR_DEVICE
            rdev = st.st_rdev if kind != FIFO else None
            node.children.append(_metadata_entry(name, kind, st, rdev=rdev))
            self._count_other()
        else:
            self._record_warning(path, "skipped: sockets and other special files are not stored")
        return None

    def _file_entry(
        self, node: _DirNode, path: bytes, name: bytes, st: os.stat_result, parent_entry: Optional[Entry]
    ) -> Optional[Entry]:
        """Return the entry of a regular file, or None when it was queued for a reader or failed."""
        if not self.full_read and self._unchanged(parent_entry, st):
            entry = _metadata_entry(name, FILE, st)
            entry.size, entry.chunks, entry.content = parent_entry.size, parent_entry.chunks, parent_entry.content
            entry.sha256 = parent_entry.sha256
            if self.pii_scan is not None:
                self.pii_scan.carry_unchanged(_path_text(path))
            with self._lock:
                self.stats.files_unmodified += 1
                self.stats.bytes_total += entry.size
            self.progress.file_done(path, entry.size, read=False)
            return entry
        existed = parent_entry is not None
        if st.st_size > INLINE_READ_LIMIT:
            self._queue_read(node, path, name, existed)
            return None
        try:
            fd, before = open_and_stat(path)
        except OSError as exc:
            self._record_error(path, f"cannot read: {exc.strerror or exc}")
            return None
        try:
            if not stat.S_ISREG(before.st_mode):
                self._record_error(path, "cannot read: no longer a regular file")
                return None
            if before.st_size > INLINE_READ_LIMIT:
                # It grew since the lstat. _read_file streams it, so memory stays bounded.
                return self._read_file(path, name, existed)
            return self._read_small_file(fd, path, name, before, existed)
        finally:
            os.close(fd)

    def _reads_without_lstat(self, parent_entry: Optional[Entry]) -> bool:
        # An exclude filter needs the lstat result, and so does the comparison with a
        # parent entry that may let the file be skipped.
        return self.path_filter is None and (parent_entry is None or self.full_read)

    def _add_listed_file(self, node: _DirNode, path: bytes, name: bytes, existed: bool) -> bool:
        """Store a file that the directory listing reported as regular; False to use _add_path.

        fstat on the open descriptor gives the metadata that an lstat would, so this
        path saves one system call per file. It returns False, having stored nothing,
        when the name cannot be opened or is no longer a regular file. _add_path then
        stats it again and stores it by its type or records why it failed.
        """
        try:
            fd, st = open_and_stat(path)
        except OSError:
            return False
        try:
            if not stat.S_ISREG(st.st_mode):
                return False
            if st.st_size > INLINE_READ_LIMIT:
                self._queue_read(node, path, name, existed)
                return True
            entry = self._read_small_file(fd, path, name, st, existed)
        finally:
            os.close(fd)
        if entry is not None:
            node.children.append(entry)
        return True

    def _queue_read(self, node: _DirNode, path: bytes, name: bytes, existed: bool) -> None:
        """Have a reader thread read the file into a new slot of `node`."""
        if len(self._window) >= self._max_window:
            self._window.popleft().result()
            self._drain(block=False)
        slot = len(node.children)
        node.children.append(None)
        with self._lock:
            node.reading += 1
        self._window.append(self._pool.submit(self._read_into_slot, node, slot, path, name, existed))
        # Results are in their slots already; result() only raises what a reader raised.
        while self._window and self._window[0].done():
            self._window.popleft().result()

    def _excluded(self, path: bytes, st: os.stat_result) -> bool:
        reason = self.path_filter.reason(path, st)
        if reason is None:
            return False
        log.debug("excluded %s: %s", os.fsdecode(path), reason)
        with self._lock:
            self.stats.excluded += 1
        return True

    def _unchanged(self, parent_entry: Optional[Entry], st: os.stat_result) -> bool:
        if parent_entry is None or parent_entry.type != FILE:
            return False
        same = (
            parent_entry.size == st.st_size
            and parent_entry.mtime_ns == st.st_mtime_ns
            and parent_entry.inode == st.st_ino
            and parent_entry.ctime_ns == st.st_ctime_ns
        )
        # A parent entry without the SHA-256 that this repository records forces a re-read,
        # so that a snapshot never has gaps in its per-file hashes.
        if self.repository.config.file_sha256 and parent_entry.sha256 is None:
            return False
        # A chunk missing from the index (pruned since) forces a re-read.
        return same and all(self.writer.has(c) for c in parent_entry.chunks)

    def _parent_tree(self, digest: Optional[bytes]) -> dict[bytes, Entry]:
        if digest is None:
            return {}
        try:
            return {e.name: e for e in load_tree(self.repository, digest).entries}
        except Exception as exc:  # a damaged parent only costs a full read of this directory
            log.warning("parent tree %s unreadable, reading the directory in full: %s", digest.hex()[:12], exc)
            return {}

    # Reading files

    def _read_into_slot(self, node: _DirNode, slot: int, path: bytes, name: bytes, existed: bool) -> None:
        # The slot is filled before the task ends, so a caller that waited for the task
        # finds it filled. Dropping the Future then frees it, whatever its directory.
        result: _Child = None
        try:
            result = self._read_file(path, name, existed)
        except BaseException as exc:
            result = exc
            raise
        finally:
            with self._lock:
                node.children[slot] = result
                node.reading -= 1

    def _read_small_file(self, fd: int, path: bytes, name: bytes, before: os.stat_result, existed: bool) -> Optional[Entry]:
        """Read and store an open file of at most INLINE_READ_LIMIT bytes in one read call.

        A file that changes while it is read goes to _read_file, which reads it again.
        """
        try:
            data = read_small(fd, before.st_size)
            # Reported before the check below, like the chunks of larger files, so a
            # change that a progress receiver makes during the read is detected.
            self.progress.bytes_done(len(data))
            after = os.fstat(fd)
        except OSError as exc:
            self._record_error(path, f"cannot read: {exc.strerror or exc}")
            return None
        if not same_version(before, after) or len(data) != after.st_size or before.st_nlink != after.st_nlink:
            # Unlinking or replacing the file by rename changes st_nlink (and st_ctime),
            # so reading again then picks up the file that now has the name.
            log.info("file %s changed while it was read; reading it again", os.fsdecode(path))
            with self._lock:
                self.stats.bytes_read += len(data)
            return self._read_file(path, name, existed, first_attempt=min(2, READ_ATTEMPTS))
        return self._small_file_entry(data, path, name, before, existed)

    def _small_file_entry(self, data: bytes, path: bytes, name: bytes, st: os.stat_result, existed: bool) -> Entry:
        hasher = self.repository.hasher
        digests = []
        for chunk in self._chunker().chunk_bytes(data):
            digest = hasher.digest(chunk)
            self.writer.put(KIND_DATA, chunk, digest)
            digests.append(digest)
        # The content hash is the object digest function over the whole file (see
        # docs/format.md), so a file of one chunk has that chunk's digest as its hash.
        content = digests[0] if len(digests) == 1 else hasher.digest(data)
        sha256 = hashlib.sha256(data).digest() if self.repository.config.file_sha256 else None
        if self.pii_scan is not None:
            scanner = self.pii_scan.scanner_for(_path_text(path))
            if scanner is not None:
                scanner.feed(data)
                self.pii_scan.record(scanner.finish())
        entry = _metadata_entry(name, FILE, st, size=len(data), chunks=digests, content=content, sha256=sha256)
        self.count_read_file(path, len(data), existed, bytes_read=len(data))
        return entry

    def _read_file(self, path: bytes, name: bytes, existed: bool, first_attempt: int = 1) -> Optional[Entry]:
        try:
            return self._read_file_stable(path, name, existed, first_attempt)
        except OSError as exc:
            self._record_error(path, f"cannot read: {exc.strerror or exc}")
            return None

    def _read_file_stable(self, path: bytes, name: bytes, existed: bool, first_attempt: int) -> Optional[Entry]:
        for attempt in range(first_attempt, READ_ATTEMPTS + 1):
            fd = open_for_reading(path)
            with os.fdopen(fd, "rb", buffering=0) as handle:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    self._record_error(path, "cannot read: no longer a regular file")
                    return None
                chunks, size, content = self._chunk(handle, path)
                after = os.fstat(fd)
            current = lstat_or_none(path)
            stable = same_version(before, after) and size == after.st_size
            if stable and current is not None and current.st_ino == before.st_ino:
                break
            if attempt < READ_ATTEMPTS:
                log.info("file %s changed while it was read; reading it again", os.fsdecode(path))
        else:
            self._record_warning(path, f"changed while it was read, {READ_ATTEMPTS} times; stored the last read, which may be inconsistent")
        # Metadata from before the read: if the file changed, the next run finds a new
        # mtime or ctime and reads it again.
        entry = _metadata_entry(name, FILE, before)
        entry.size, entry.chunks, entry.content = size, chunks, content
        entry.sha256 = self._local.sha256
        self.count_read_file(path, size, existed)
        return entry

    def _read_stream(self, name: bytes, source: StreamSource) -> Entry:
        """Chunk a stream source in this thread; raises when its producer failed."""
        path = os.fsencode(source.path)
        chunks, size, content = self._chunk(source.stream, path)
        source.finish()
        # Owner-only mode: database dumps and similar streams often hold private data.
        entry = Entry(name=name, type=FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(), mtime_ns=time.time_ns())
        entry.size, entry.chunks, entry.content = size, chunks, content
        entry.sha256 = self._local.sha256
        self.count_read_file(path, size, existed=False)
        return entry

    def count_read_file(self, path: bytes, size: int, existed: bool, bytes_read: int = 0) -> None:
        """Count a file whose content was read: new, or changed when the parent had it."""
        with self._lock:
            if existed:
                self.stats.files_changed += 1
            else:
                self.stats.files_new += 1
            self.stats.bytes_total += size
            self.stats.bytes_read += bytes_read
        self.progress.file_done(path, size, read=True)

    def _chunk(self, handle, path: bytes) -> tuple[list[bytes], int, bytes]:
        chunker = self._chunker()
        hasher = self.repository.hasher
        content = hasher.stream()
        sha256 = hashlib.sha256() if self.repository.config.file_sha256 else None
        self._local.sha256 = None
        scanner = self.pii_scan.scanner_for(_path_text(path)) if self.pii_scan is not None else None
        whole_file = [content] if sha256 is None else [content, sha256]
        feeder: Optional[HashFeeder] = None
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in chunker.chunks(handle):
                digest = hasher.digest(chunk)
                if feeder is None and size >= BACKGROUND_HASH_AFTER:
                    # From here on a second thread computes the whole-file hashes.
                    feeder = HashFeeder(whole_file)
                if feeder is None:
                    for stream in whole_file:
                        stream.update(chunk)
                else:
                    feeder.feed(chunk)
                if scanner is not None:
                    scanner.feed(chunk)
                self.writer.put(KIND_DATA, chunk, digest)
                chunks.append(digest)
                size += len(chunk)
                self.progress.bytes_done(len(chunk))
            if feeder is not None:
                feeder.finish()
        finally:
            if feeder is not None:
                feeder.close()
        with self._lock:
            self.stats.bytes_read += size
        if scanner is not None:
            self.pii_scan.record(scanner.finish())
        # The SHA-256 goes back through the thread-local, so the return value stays the same
        # for every caller. Each caller reads it right after this call, in the same thread.
        self._local.sha256 = sha256.digest() if sha256 is not None else None
        return chunks, size, content.digest()

    def _chunker(self) -> Chunker:
        chunker = getattr(self._local, "chunker", None)
        if chunker is None:
            params: ChunkerParams = self.repository.config.chunker
            chunker = self._local.chunker = Chunker(params)
        return chunker

    # Finishing directories

    def _drain(self, block: bool) -> None:
        """Write the trees of finished directories, children before parents.

        With `block`, wait for every queued read first, so that all directories are ready.
        """
        if block:
            while self._window:
                self._window.popleft().result()
        while self._pending and (block or self._pending[0].ready()):
            self._finish_directory(self._pending.popleft())

    def _finish_directory(self, node: _DirNode) -> None:
        entries = []
        for child in node.children:
            if child is None:
                continue  # its error is recorded
            if isinstance(child, BaseException):
                raise child
            if isinstance(child, _DirNode):
                child = _directory_entry(child)
            entries.append(child)
        digest, _new = self.writer.put(KIND_TREE, Tree(entries).encode())
        node.digest = digest
        # The parent needs only the digest; dropping the entries now keeps memory to
        # the directories still open instead of the whole tree walked so far.
        node.children = []
        with self._lock:
            self.stats.directories += 1

    # Reporting

    def _record_error(self, path: bytes, message: str) -> None:
        log.error("%s: %s", os.fsdecode(path), message)
        with self._lock:
            self.errors.append({"path": _path_text(path), "error": message})
            self.stats.errors += 1
        self.progress.error(path, message)

    def _record_warning(self, path: bytes, message: str) -> None:
        log.warning("%s: %s", os.fsdecode(path), message)
        with self._lock:
            self.warnings.append({"path": _path_text(path), "warning": message})
            self.stats.warnings += 1
        self.progress.warning(path, message)

    def _count_other(self) -> None:
        with self._lock:
            self.stats.other_entries += 1


def _metadata_entry(name: bytes, kind: str, st: os.stat_result, **fields) -> Entry:
    return Entry(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        **fields,
    )


def _directory_entry(node: _DirNode) -> Entry:
    if node.stat is None:
        return Entry(name=node.name, type=DIRECTORY, mode=0o755, subtree=node.digest)
    return _metadata_entry(node.name, DIRECTORY, node.stat, subtree=node.digest)


def _path_text(path: bytes) -> str:
    """Return a path as manifest text; bytes that are not UTF-8 become backslash escapes.

    os.fsdecode would keep them as lone surrogates, which msgpack cannot encode, so a
    snapshot with such a source or error path could not be saved.
    """
    return path.decode("utf-8", "backslashreplace")
