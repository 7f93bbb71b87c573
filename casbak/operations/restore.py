"""Restore a snapshot, or one path of it, into a target directory.

Every entry is created relative to an open directory descriptor (openat-style) with
O_NOFOLLOW. Names are validated when trees are decoded. So no name in a snapshot and no
symlink already in the target can make a restore write outside the target.
An existing file in the way is unlinked first, never written through, so a hard link
in the target cannot carry the write elsewhere either.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Optional

from casbak.catalog import load_tree, lookup_path
from casbak.errors import CorruptObject, RestoreError
from casbak.manifest import Manifest
from casbak.operations.progress import Progress
from casbak.store.repository import Repository
from casbak.tree import BLOCK_DEVICE, CHAR_DEVICE, DIRECTORY, FIFO, FILE, SYMLINK, Entry

log = logging.getLogger(__name__)


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
    target_fd = _open_target(target)
    restorer = _Restorer(repository, progress or Progress(), writer_threads, _default_owner(restore_owner))
    try:
        if entry.type == DIRECTORY:
            restorer.restore_children(target_fd, entry.subtree, b"")
        else:
            restorer.restore_entry(target_fd, entry, entry.name)
        restorer.finish(target_fd)
    except OSError as exc:
        # A full disk, a missing permission or an over-long name in the target: report it
        # as a casbak error naming the file, not as a traceback.
        raise RestoreError(
            f"restore into {target} failed: {exc}; the target may be incomplete, fix the cause and restore again"
        ) from exc
    finally:
        os.close(target_fd)
        restorer.close()
    return restorer.stats


def _open_target(target: str) -> int:
    try:
        os.makedirs(target, exist_ok=True)
        return os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if os.path.lexists(target) and not os.path.isdir(target):
            # makedirs reports "File exists" here, which hides that the target is not a directory.
            raise RestoreError(f"target {target}: exists and is not a directory; choose another --target") from exc
        raise RestoreError(
            f"target {target}: cannot be created or opened as a directory ({exc.strerror}); choose another --target"
        ) from exc


def _default_owner(restore_owner: Optional[bool]) -> bool:
    if restore_owner is not None:
        return restore_owner
    return hasattr(os, "geteuid") and os.geteuid() == 0


class _Restorer:
    def __init__(self, repository: Repository, progress: Progress, threads: int, restore_owner: bool) -> None:
        self.repository = repository
        self.progress = progress
        self.restore_owner = restore_owner
        self.stats = RestoreStats()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="casbak-restore")
        self._window: deque[Future] = deque()
        self._max_window = 8 * threads
        # Directories get their mode and mtime after their content is written. They are
        # reopened by path then, so no directory descriptor stays open until the end.
        self._directories: list[tuple[bytes, Entry]] = []

    def restore_children(self, directory_fd: int, subtree: bytes, path: bytes) -> None:
        """Restore the entries of `subtree` into `directory_fd`, depth first.

        An explicit stack instead of recursion lets trees deeper than Python's recursion
        limit restore. Each level on the stack keeps its directory descriptor open.
        """
        entries = iter(load_tree(self.repository, subtree).entries)
        stack: list[tuple[int, Iterator[Entry], bytes]] = [(directory_fd, entries, path)]
        try:
            while stack:
                parent_fd, entries, prefix = stack[-1]
                entry = next(entries, None)
                if entry is None:
                    stack.pop()
                    if parent_fd != directory_fd:
                        os.close(parent_fd)
                    continue
                child_path = prefix + b"/" + entry.name if prefix else entry.name
                if entry.type != DIRECTORY:
                    self.restore_entry(parent_fd, entry, child_path)
                    continue
                child_fd = self._open_directory(parent_fd, entry, child_path)
                try:
                    child_entries = iter(load_tree(self.repository, entry.subtree).entries)
                except BaseException:
                    os.close(child_fd)
                    raise
                stack.append((child_fd, child_entries, child_path))
        finally:
            for parent_fd, _entries, _prefix in stack:
                if parent_fd != directory_fd:
                    os.close(parent_fd)

    def restore_entry(self, directory_fd: int, entry: Entry, path: bytes) -> None:
        if entry.type == DIRECTORY:
            self._restore_directory(directory_fd, entry, path)
        elif entry.type == FILE:
            self._clear(directory_fd, entry.name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(entry.name, flags, 0o600, dir_fd=directory_fd)
            try:
                self._submit(self._restore_file, fd, entry, path)
            except BaseException:
                os.close(fd)
                raise
        elif entry.type == SYMLINK:
            self._clear(directory_fd, entry.name)
            os.symlink(entry.target, entry.name, dir_fd=directory_fd)
            self._set_times(directory_fd, entry)
            if self.restore_owner:
                os.chown(entry.name, entry.uid, entry.gid, dir_fd=directory_fd, follow_symlinks=False)
            self._count("symlinks")
        elif entry.type in (FIFO, CHAR_DEVICE, BLOCK_DEVICE):
            self._restore_special(directory_fd, entry, path)

    def finish(self, target_fd: int) -> None:
        while self._window:
            self._window.popleft().result()
        # Children before parents: a parent's mtime would change if set before its children.
        for path, entry in reversed(self._directories):
            directory_fd = _open_below(target_fd, path)
            try:
                _apply_metadata(directory_fd, entry, self.restore_owner)
            finally:
                os.close(directory_fd)
        self._directories.clear()

    def close(self) -> None:
        for future in self._window:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _restore_directory(self, parent_fd: int, entry: Entry, path: bytes) -> None:
        directory_fd = self._open_directory(parent_fd, entry, path)
        try:
            self.restore_children(directory_fd, entry.subtree, path)
        finally:
            os.close(directory_fd)

    def _open_directory(self, parent_fd: int, entry: Entry, path: bytes) -> int:
        """Create (or reuse) the directory `entry` and return a descriptor of it.

        Its mode and mtime are applied by finish(), after its content is written.
        """
        try:
            os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            existing = os.stat(entry.name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(existing.st_mode):
                os.unlink(entry.name, dir_fd=parent_fd)
                os.mkdir(entry.name, 0o700, dir_fd=parent_fd)
        directory_fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        self._directories.append((path, entry))
        self._count("directories")
        return directory_fd

    def _restore_file(self, fd: int, entry: Entry, path: bytes) -> None:
        try:
            content = self.repository.hasher.stream()
            written = 0
            for chunk in self.repository.iter_objects(entry.chunks):
                _write_all(fd, chunk)
                content.update(chunk)
                written += len(chunk)
                self.progress.bytes_done(len(chunk))
            shown = path.decode(errors="replace")
            if written != entry.size:
                raise CorruptObject(f"file {shown}: restored {written} bytes, snapshot records {entry.size}")
            if content.digest() != entry.content:
                raise CorruptObject(f"file {shown}: content hash does not match the snapshot")
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

    def _restore_special(self, directory_fd: int, entry: Entry, path: bytes) -> None:
        self._clear(directory_fd, entry.name)
        kind = {FIFO: stat.S_IFIFO, CHAR_DEVICE: stat.S_IFCHR, BLOCK_DEVICE: stat.S_IFBLK}[entry.type]
        try:
            os.mknod(entry.name, kind | entry.mode, entry.rdev or 0, dir_fd=directory_fd)
        except PermissionError:
            message = f"{path.decode(errors='replace')}: {entry.type} not restored (creating it needs root)"
            log.warning(message)
            self.stats.warnings.append(message)
            return
        self._set_times(directory_fd, entry)
        self._count("other_entries")

    def _submit(self, function, *args) -> None:
        if len(self._window) >= self._max_window:
            self._window.popleft().result()
        self._window.append(self._pool.submit(function, *args))

    def _clear(self, directory_fd: int, name: bytes) -> None:
        """Remove whatever is at `name` unless it is a directory (which is an error)."""
        try:
            existing = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(existing.st_mode):
            raise RestoreError(f"cannot restore {name.decode(errors='replace')}: a directory is in the way in the target")
        os.unlink(name, dir_fd=directory_fd)

    def _set_times(self, directory_fd: int, entry: Entry) -> None:
        os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=directory_fd, follow_symlinks=False)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)


def _open_below(root_fd: int, path: bytes) -> int:
    """Open the directory `path` below `root_fd` without following any symlink."""
    fd = os.dup(root_fd)
    for part in path.split(b"/"):
        try:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _apply_metadata(directory_fd: int, entry: Entry, restore_owner: bool) -> None:
    if restore_owner:
        os.fchown(directory_fd, entry.uid, entry.gid)
    os.fchmod(directory_fd, entry.mode)
    os.utime(directory_fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]

