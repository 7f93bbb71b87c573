"""Restore a snapshot, or one path of it, into a target directory.

Every entry is created relative to an open directory descriptor (openat-style) with
O_NOFOLLOW. Names are validated when trees are decoded. So no name in a snapshot and no
symlink already in the target can make a restore write outside the target.
Files, symlinks and special files are created exclusively (O_EXCL, or symlink(2) and
mknod(2), which never replace a name). When that fails because the name exists, the
existing entry is unlinked and the creation is tried once more, so neither a symlink nor
a hard link in the target can carry the write elsewhere.

The main thread walks the trees, creates directories, symlinks and special files, and
queues regular files in batches. Writer threads create, write, verify and close the
files. A directory descriptor stays open while the walker is inside the directory or a
queued batch still writes into it. The thread that drops its last use sets the
directory's mode and mtime, after all of its entries exist.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from dataclasses import dataclass, field
from typing import Iterator, Optional

from casbak.catalog import load_tree, lookup_path
from casbak.errors import CorruptObject, RestoreError
from casbak.manifest import Manifest
from casbak.operations.progress import Progress
from casbak.operations.restore_fs import (
    CREATE_FLAGS,
    DIRECTORY_FLAGS,
    apply_metadata,
    create_exclusively,
    open_target,
    write_all,
)
from casbak.store.repository import PackFiles, Repository
from casbak.tree import BLOCK_DEVICE, CHAR_DEVICE, DIRECTORY, FIFO, FILE, SYMLINK, Entry

log = logging.getLogger(__name__)

# A batch of small files goes to one writer thread, so a tree of many small files costs
# one queue handoff per batch, not per file. A file of BATCH_BYTES or more is a batch alone.
BATCH_FILES = 64
BATCH_BYTES = 1024 * 1024
# A batch may span directories, and each one stays open until the batch is done. This
# bounds the open descriptors to about BATCH_DIRECTORIES per queued batch plus the depth.
BATCH_DIRECTORIES = 8
# Batches queued ahead of the writer threads, per thread. The walker blocks only when all
# of them wait, never on one slow file. A deep queue lets the walker get through folders
# of small files while the writer threads are busy with large files.
QUEUED_BATCHES_PER_THREAD = 8


@dataclass
class RestoreStats:
    """Counters of one restore; sizes in bytes."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    other_entries: int = 0
    bytes_written: int = 0
    warnings: list[str] = field(default_factory=list)


def restore_snapshot(
    repository: Repository,
    manifest: Manifest,
    target: str,
    path: str = "",
    *,
    progress: Optional[Progress] = None,
    writer_threads: int = 2,
    restore_owner: Optional[bool] = None,
) -> RestoreStats:
    """Restore `path` of a snapshot (the whole snapshot by default) into `target`.

    A directory's content lands directly in `target`; a single file lands as
    `target/<name>`. Ownership is restored when running as root unless
    `restore_owner` is False. Raises CorruptObject when any content fails verification.
    """
    entry = lookup_path(repository, manifest.tree, path)
    target_fd = open_target(target)
    restorer = _Restorer(repository, progress or Progress(), writer_threads, _default_owner(restore_owner))
    try:
        # The target gets no metadata of its own and stays open until the end.
        root = _Directory(target_fd, None, owns_fd=False)
        if entry.type == DIRECTORY:
            restorer.restore_children(root, entry.subtree, b"")
        else:
            restorer.restore_entry(root, entry, entry.name)
        restorer.finish()
    except OSError as exc:
        # A full disk, a missing permission or an over-long name in the target: report it
        # as a casbak error naming the file, not as a traceback.
        raise RestoreError(
            f"restore into {target} failed: {exc}; the target may be incomplete, fix the cause and restore again"
        ) from exc
    finally:
        restorer.close()
        os.close(target_fd)
    return restorer.stats


def _default_owner(restore_owner: Optional[bool]) -> bool:
    if restore_owner is not None:
        return restore_owner
    return hasattr(os, "geteuid") and os.geteuid() == 0


class _Directory:
    """An open directory descriptor shared by the walker and the batches that write into it.

    `uses` counts the walker (while it is inside the directory) and each queued file.
    """

    __slots__ = ("fd", "entry", "owns_fd", "uses")

    def __init__(self, fd: int, entry: Optional[Entry], owns_fd: bool = True) -> None:
        self.fd = fd
        self.entry = entry
        self.owns_fd = owns_fd
        self.uses = 1


@dataclass
class _Batch:
    """Regular files, with the directories they go to, that one writer thread restores in order."""

    files: list[tuple[_Directory, Entry, bytes]] = field(default_factory=list)
    size: int = 0
    directories: int = 0


class _Restorer:
    def __init__(self, repository: Repository, progress: Progress, threads: int, restore_owner: bool) -> None:
        self.repository = repository
        self.progress = progress
        self.restore_owner = restore_owner
        self.stats = RestoreStats()
        self._packs = PackFiles(repository)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Optional[_Batch]] = queue.Queue(maxsize=QUEUED_BATCHES_PER_THREAD * threads)
        self._pending: Optional[_Batch] = None
        # The first error of any writer thread; the walker raises it at its next step.
        self._failure: Optional[BaseException] = None
        # Set when the restore stops early, so writer threads skip the rest of the queue.
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"casbak-restore-{number}", daemon=True)
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def restore_children(self, root: _Directory, subtree: bytes, path: bytes) -> None:
        """Restore the entries of `subtree` into `root`, depth first, and release `root`.

        An explicit stack instead of recursion lets trees deeper than Python's recursion
        limit restore. Each level on the stack keeps its directory descriptor open.
        """
        try:
            entries = iter(load_tree(self.repository, subtree).entries)
        except BaseException:
            self._abandon([root])
            raise
        stack: list[tuple[_Directory, Iterator[Entry], bytes]] = [(root, entries, path)]
        try:
            while stack:
                self._raise_failure()
                directory, entries, prefix = stack[-1]
                entry = next(entries, None)
                if entry is None:
                    stack.pop()
                    self.release(directory)
                    continue
                child_path = prefix + b"/" + entry.name if prefix else entry.name
                if entry.type != DIRECTORY:
                    self.restore_entry(directory, entry, child_path)
                    continue
                child = self._open_directory(directory.fd, entry)
                try:
                    child_entries = iter(load_tree(self.repository, entry.subtree).entries)
                except BaseException:
                    self._abandon([child])
                    raise
                stack.append((child, child_entries, child_path))
        except BaseException:
            self._abandon([directory for directory, _entries, _prefix in stack])
            raise

    def restore_entry(self, directory: _Directory, entry: Entry, path: bytes) -> None:
        """Restore one entry that is not a directory into `directory`."""
        if entry.type == FILE:
            self._queue_file(directory, entry, path)
        elif entry.type == SYMLINK:
            create_exclusively(directory.fd, entry.name, lambda: os.symlink(entry.target, entry.name, dir_fd=directory.fd))
            self._set_times(directory.fd, entry)
            if self.restore_owner:
                os.chown(entry.name, entry.uid, entry.gid, dir_fd=directory.fd, follow_symlinks=False)
            self._count("symlinks")
        elif entry.type in (FIFO, CHAR_DEVICE, BLOCK_DEVICE):
            self._restore_special(directory.fd, entry, path)

    def finish(self) -> None:
        """Wait for the writer threads and raise the first error any of them met."""
        self._flush()
        self._stop_threads()
        self._raise_failure()

    def close(self) -> None:
        """Stop the writer threads if they still run (after an error) and close the packs."""
        if any(thread.is_alive() for thread in self._threads):
            self._stopping = True
            self._stop_threads()
        self._packs.close()

    def release(self, directory: _Directory) -> None:
        """Drop one use of `directory`. The last use sets its metadata and closes it."""
        with self._lock:
            directory.uses -= 1
            if directory.uses > 0:
                return
        try:
            if directory.entry is not None and not self._stopping and self._failure is None:
                apply_metadata(directory.fd, directory.entry, self.restore_owner)
        finally:
            if directory.owns_fd:
                os.close(directory.fd)

    # Walker side

    def _open_directory(self, parent_fd: int, entry: Entry) -> _Directory:
        """Create (or reuse) the directory `entry` and return it open.

        Its mode and mtime are applied by release(), after its content is written.
        """
        try:
            os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            existing = os.stat(entry.name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(existing.st_mode):
                os.unlink(entry.name, dir_fd=parent_fd)
                os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
        directory = _Directory(os.open(entry.name, DIRECTORY_FLAGS, dir_fd=parent_fd), entry)
        self._count("directories")
        return directory

    def _queue_file(self, directory: _Directory, entry: Entry, path: bytes) -> None:
        with self._lock:
            directory.uses += 1
        if entry.size >= BATCH_BYTES:
            self._queue.put(_Batch([(directory, entry, path)], entry.size, 1))
            return
        batch = self._pending
        if batch is None:
            batch = self._pending = _Batch()
        if not batch.files or batch.files[-1][0] is not directory:
            # Each change of directory counts, so a directory that the walker returns to
            # after a subdirectory counts twice, and the count is an upper bound.
            batch.directories += 1
        batch.files.append((directory, entry, path))
        batch.size += entry.size
        if len(batch.files) >= BATCH_FILES or batch.size >= BATCH_BYTES or batch.directories >= BATCH_DIRECTORIES:
            self._flush()

    def _flush(self) -> None:
        batch, self._pending = self._pending, None
        if batch is not None:
            self._queue.put(batch)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _abandon(self, directories: list[_Directory]) -> None:
        """Release the walker's and the pending batch's directories after an error, without setting metadata."""
        self._stopping = True
        pending, self._pending = self._pending, None
        if pending is not None:
            directories = [directory for directory, _entry, _path in pending.files] + directories
        for directory in directories:
            try:
                self.release(directory)
            except OSError as exc:
                log.debug("failed to close a directory after a failed restore: %s", exc)

    def _stop_threads(self) -> None:
        for _thread in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _restore_special(self, directory_fd: int, entry: Entry, path: bytes) -> None:
        kind = {FIFO: stat.S_IFIFO, CHAR_DEVICE: stat.S_IFCHR, BLOCK_DEVICE: stat.S_IFBLK}[entry.type]
        try:
            create_exclusively(
                directory_fd, entry.name, lambda: os.mknod(entry.name, kind | entry.mode, entry.rdev or 0, dir_fd=directory_fd)
            )
        except PermissionError:
            message = f"{path.decode(errors='replace')}: {entry.type} not restored (creating it needs root)"
            log.warning(message)
            self.stats.warnings.append(message)
            return
        self._set_times(directory_fd, entry)
        self._count("other_entries")

    def _set_times(self, directory_fd: int, entry: Entry) -> None:
        os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=directory_fd, follow_symlinks=False)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    # Writer threads

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            try:
                self._restore_batch(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the walker, which raises it
                with self._lock:
                    if self._failure is None:
                        self._failure = exc

    def _restore_batch(self, batch: _Batch) -> None:
        files = iter(batch.files)
        try:
            for directory, entry, path in files:
                try:
                    if not self._stopping and self._failure is None:
                        self._restore_file(directory.fd, entry, path)
                finally:
                    self.release(directory)
        finally:
            # After an error, the files not reached still hold their directories.
            for directory, _entry, _path in files:
                self.release(directory)

    def _restore_file(self, directory_fd: int, entry: Entry, path: bytes) -> None:
        fd = create_exclusively(directory_fd, entry.name, lambda: os.open(entry.name, CREATE_FLAGS, 0o600, dir_fd=directory_fd))
        try:
            written = self._write_content(fd, entry, path)
            if written is None:
                return
            if self.restore_owner:
                os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        with self._lock:
            self.stats.files += 1
            self.stats.bytes_written += written
        self.progress.file_done(path, written, read=True)

    def _write_content(self, fd: int, entry: Entry, path: bytes) -> Optional[int]:
        """Write and verify a file's content. Return its size, or None when the restore stopped."""
        # The content hash uses the object digest function, so a file of one chunk has its
        # chunk's digest as content hash, and iter_objects already checked that digest.
        content = None if len(entry.chunks) == 1 else self.repository.hasher.stream()
        written = 0
        for chunk in self.repository.iter_objects(entry.chunks, packs=self._packs):
            if self._stopping or self._failure is not None:
                return None
            write_all(fd, chunk)
            if content is not None:
                content.update(chunk)
            written += len(chunk)
            self.progress.bytes_done(len(chunk))
        shown = path.decode(errors="replace")
        if written != entry.size:
            raise CorruptObject(f"file {shown}: restored {written} bytes, snapshot records {entry.size}")
        digest = entry.chunks[0] if content is None else content.digest()
        if digest != entry.content:
            raise CorruptObject(f"file {shown}: content hash does not match the snapshot")
        return written
