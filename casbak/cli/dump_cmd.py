"""`casbak dump`: write one stored file, or a tar stream of a directory, to standard output.

Every chunk is checked against its digest as it is read and every file against its
whole-content hash, so `casbak dump latest /prefs.dump | pg_restore ...` never feeds
damaged data on without failing (exit code 5) at the end of the damaged file.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
import sys
from typing import TYPE_CHECKING, BinaryIO, Iterator, Optional

import typer

from casbak.cli.output import naming_snapshot
from casbak.errors import CasbakError, CorruptObject, UsageError
from casbak.tree import BLOCK_DEVICE, CHAR_DEVICE, DIRECTORY, FIFO, FILE, SYMLINK, Entry

if TYPE_CHECKING:
    import tarfile

    from casbak.store.repository import Repository

COPY_BLOCK = 1024 * 1024


class OutputClosed(CasbakError):
    """The reader of the dump (a pipe) closed its end before the dump finished."""


class ContentReader(io.RawIOBase):
    """A file-like view of one stored file whose chunks are fetched and verified lazily."""

    def __init__(self, repository: Repository, entry: Entry, display_path: str) -> None:
        super().__init__()
        self._entry = entry
        self._display_path = display_path
        self._chunks: Iterator[bytes] = repository.iter_objects(entry.chunks or [])
        self._content = repository.hasher.stream()
        self._buffer = memoryview(b"")
        self._size = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer and not self._ended:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._ended = True
                break
            self._content.update(chunk)
            self._size += len(chunk)
            self._buffer = memoryview(chunk)
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def verify(self) -> None:
        """Read what is left and raise CorruptObject unless size and content hash match."""
        while self.readinto(bytearray(COPY_BLOCK)):
            continue
        if self._size != self._entry.size:
            raise CorruptObject(f"file {self._display_path}: read {self._size} bytes, the snapshot records {self._entry.size}")
        if self._content.digest() != self._entry.content:
            raise CorruptObject(f"file {self._display_path}: content hash does not match the snapshot")


def dump(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="Snapshot id, unique id prefix, `latest`, `latest~N`, or a UTC date such as @2026-12-01 or @2026-12-01T12:00."),
    path: str = typer.Argument("/", help="Path inside the snapshot, as `casbak ls` shows it (default: the whole snapshot, with --tar)."),
    as_tar: bool = typer.Option(False, "--tar", help="Write a tar stream (POSIX pax format) of the path, which may be a directory."),
    output: Optional[str] = typer.Option(None, "--output", help="Write to this file instead of standard output."),
) -> None:
    """Write a stored file, or with --tar a directory, to standard output."""
    from casbak.catalog import lookup_path, resolve_snapshot

    state = ctx.obj
    repository = state.open_repository()
    manifest = resolve_snapshot(repository, snapshot)
    with naming_snapshot(manifest):
        entry = lookup_path(repository, manifest.tree, path)
    if entry.type == DIRECTORY and not as_tar:
        raise UsageError(f"path {path}: is a directory; add --tar to dump it as a tar stream")
    if entry.type != FILE and not as_tar:
        raise UsageError(f"path {path}: is a {entry.type}, not a file; add --tar to dump it as a tar stream")
    handle = open(output, "wb") if output else sys.stdout.buffer
    try:
        if as_tar:
            counts = _write_tar(repository, entry, path, handle)
        else:
            counts = {"files": 1, "bytes": _write_file(repository, entry, path, handle)}
        handle.flush()
    except BrokenPipeError as exc:
        # Point stdout at /dev/null, so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosed(
            "dump: the reading command closed the pipe before the dump finished, so it received only part "
            "of the data; this is expected after `head`, otherwise check why the reading command stopped"
        ) from exc
    finally:
        if output:
            handle.close()
    if state.json:
        summary = {"schema": "casbak.dump/1", "command": "dump", "snapshot": manifest.id, "path": path,
                   "format": "tar" if as_tar else "file", "output": output, **counts}
        # Standard output carries the data unless --output was given.
        stream = sys.stdout if output else sys.stderr
        stream.write(json.dumps(summary, indent=2) + "\n")


def _write_file(repository: Repository, entry: Entry, path: str, handle: BinaryIO) -> int:
    reader = ContentReader(repository, entry, path)
    written = 0
    while True:
        block = reader.read(COPY_BLOCK)
        if not block:
            break
        handle.write(block)
        written += len(block)
    reader.verify()
    return written


def _write_tar(repository: Repository, top: Entry, path: str, handle: BinaryIO) -> dict[str, int]:
    import tarfile

    from casbak.catalog import walk

    counts = {"files": 0, "directories": 0, "other": 0, "bytes": 0}
    prefix = "/".join(p for p in path.split("/") if p).encode("utf-8", "surrogateescape")
    if top.type == DIRECTORY:
        items = walk(repository, top.subtree, prefix)
        if prefix:
            items = itertools.chain([(prefix, top)], items)
    else:
        items = iter([(prefix, top)])
    with tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as archive:
        for raw_path, entry in items:
            info = _tar_info(raw_path, entry)
            if entry.type == FILE:
                reader = ContentReader(repository, entry, "/" + info.name)
                # tarfile treats a short read as the end of the data, and the raw reader
                # returns at most one chunk per call, so a buffered reader fills each read.
                archive.addfile(info, io.BufferedReader(reader, COPY_BLOCK))
                reader.verify()
                counts["files"] += 1
                counts["bytes"] += entry.size or 0
            else:
                archive.addfile(info)
                counts["directories" if entry.type == DIRECTORY else "other"] += 1
    return counts


def _tar_info(raw_path: bytes, entry: Entry) -> tarfile.TarInfo:
    import tarfile

    info = tarfile.TarInfo(raw_path.decode("utf-8", "surrogateescape"))
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.mtime = entry.mtime_ns / 1e9
    if entry.type == FILE:
        info.type, info.size = tarfile.REGTYPE, entry.size or 0
    elif entry.type == DIRECTORY:
        info.type = tarfile.DIRTYPE
    elif entry.type == SYMLINK:
        info.type, info.linkname = tarfile.SYMTYPE, (entry.target or b"").decode("utf-8", "surrogateescape")
    elif entry.type == FIFO:
        info.type = tarfile.FIFOTYPE
    elif entry.type in (CHAR_DEVICE, BLOCK_DEVICE):
        info.type = tarfile.CHRTYPE if entry.type == CHAR_DEVICE else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(entry.rdev or 0), os.minor(entry.rdev or 0)
    info.mode = stat.S_IMODE(info.mode)
    return info


def register(app: typer.Typer) -> None:
    app.command("dump")(dump)
