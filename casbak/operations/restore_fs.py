"""File system steps of a restore in its target: opening it, creating entries, metadata.

Below the target, every step works relative to an open directory descriptor and follows
no symlink, so nothing already in the target can redirect a write outside it.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, TypeVar

from casbak.errors import RestoreError
from casbak.tree import Entry

_Created = TypeVar("_Created")

CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_target(target: str) -> int:
    """Create the directory `target` if it is missing and return a descriptor of it."""
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


def create_exclusively(directory_fd: int, name: bytes, create: Callable[[], _Created]) -> _Created:
    """Run `create`, which fails on an existing name. If it does, clear the name and run it once more.

    Creation never follows or reuses what is there, so trying it first costs nothing in a
    new directory and keeps the guarantee in an old one.
    """
    try:
        return create()
    except FileExistsError:
        _clear(directory_fd, name)
        return create()


def _clear(directory_fd: int, name: bytes) -> None:
    """Remove whatever is at `name` unless it is a directory (which is an error)."""
    try:
        existing = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise RestoreError(f"cannot restore {name.decode(errors='replace')}: a directory is in the way in the target")
    os.unlink(name, dir_fd=directory_fd)


def apply_metadata(directory_fd: int, entry: Entry, restore_owner: bool) -> None:
    """Set the mode and mtime of `entry` on an open directory, and its owner if `restore_owner`."""
    if restore_owner:
        os.fchown(directory_fd, entry.uid, entry.gid)
    os.fchmod(directory_fd, entry.mode)
    os.utime(directory_fd, ns=(entry.mtime_ns, entry.mtime_ns))


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]
