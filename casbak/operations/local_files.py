"""System calls of the snapshot walker: list directories, open, read and stat local files.

Every function raises OSError as the system call does, except where its name ends in
`_or_none`.
"""

from __future__ import annotations

import os
from typing import Optional

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


def list_directory(path: bytes) -> tuple[list[bytes], set[bytes]]:
    """Return the sorted names in a directory and the subset not listed as regular files.

    The file type comes from the directory listing (d_type) where the file system
    provides it, and DirEntry.is_file() falls back to an lstat where it does not.
    """
    names = []
    not_regular = set()
    with os.scandir(path) as scan:
        for item in scan:
            names.append(item.name)
            try:
                regular = item.is_file(follow_symlinks=False)
            except OSError:
                regular = False
            if not regular:
                not_regular.add(item.name)
    names.sort()
    return names, not_regular


def open_for_reading(path: bytes, blocking: bool = True) -> int:
    """Open a file to read it, without following a symlink or waiting on a FIFO.

    O_NONBLOCK keeps a file replaced by a FIFO after the walk from blocking open() until
    some writer appears. It is cleared again unless `blocking` is False, for callers
    that fstat the file and read it with read_small.
    """
    try:
        # O_NOATIME keeps backups from touching access times; only the owner or root may use it.
        fd = os.open(path, _OPEN_FLAGS | _NOATIME)
    except PermissionError:
        fd = os.open(path, _OPEN_FLAGS)
    if blocking:
        os.set_blocking(fd, True)
    return fd


def open_and_stat(path: bytes) -> tuple[int, os.stat_result]:
    """Open a file with O_NONBLOCK still set, for read_small, and fstat it."""
    fd = open_for_reading(path, blocking=False)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def read_small(fd: int, size: int) -> bytes:
    """Read a regular file that fstat reported as `size` bytes long, in one call if it is.

    It requests one byte more than `size`, so a result of `size + 1` bytes shows the file
    grew. A result of exactly `size` bytes is taken as the end of the file, without a
    second read that returns nothing. If the file changed after the fstat instead, the
    caller's fstat after the read finds a new size or mtime.
    """
    requested = size + 1
    data = read_blocking(fd, requested)
    if len(data) >= size:
        return data
    parts = [data]
    total = len(data)
    while total < requested:
        more = read_blocking(fd, requested - total)
        if not more:
            break
        parts.append(more)
        total += len(more)
    return b"".join(parts)


def read_blocking(fd: int, count: int) -> bytes:
    try:
        return os.read(fd, count)
    except BlockingIOError:
        # The Linux open(2) manual page states that O_NONBLOCK has no effect on regular
        # files, but that this may change in the future.
        os.set_blocking(fd, True)
        return os.read(fd, count)


def same_version(before: os.stat_result, after: os.stat_result) -> bool:
    return (
        before.st_size == after.st_size
        and before.st_mtime_ns == after.st_mtime_ns
        and before.st_ctime_ns == after.st_ctime_ns
    )


def lstat_or_none(path: bytes) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except OSError:
        return None


def stat_or_none(path: bytes) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except OSError:
        return None
