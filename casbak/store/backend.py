"""Storage backends: a flat namespace of immutable files over fsspec.

Every name is relative to the repository root and uses "/" separators. Writes are
all-or-nothing: on a local disk through a temporary file, fsync and rename (fsspec's
local writes do neither), and on object stores through a single PUT, which is atomic.
Listings bypass fsspec's directory cache, because gc and crash recovery must see the
store as it is now.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import time
from typing import Any, Callable, Optional, Protocol, TypeVar, Union

from casbak.errors import ObjectNotFound, StorageError, UsageError
from casbak.store.objectlock import ObjectLock
from casbak.store.retry import RetryPolicy, call_with_retry, policy_from_environment

log = logging.getLogger(__name__)

T = TypeVar("T")

# Files being written have names with this prefix until they are complete.
TEMPORARY_PREFIX = ".tmp-"


class Backend(Protocol):
    """Storage interface the repository needs: whole-file writes, ranged reads, listing."""

    url: str

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes: ...

    def list(self, prefix: str) -> list[str]: ...

    def size(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def delete(self, name: str) -> None: ...


class LocalBackend:
    """A repository in a local directory, written with durable atomic renames."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.url = self.root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def write(self, name: str, data: bytes) -> None:
        staged = self.stage(posixpath.dirname(name))
        try:
            staged.write(data)
        except BaseException:
            staged.discard()
            raise
        self.publish(staged, name)

    def stage(self, directory_name: str) -> "StagedFile":
        """Start a new file under a temporary name in `directory_name`; see publish()."""
        return StagedFile(self._path(directory_name))

    def publish(self, staged: "StagedFile", name: str) -> None:
        """Make a staged file durable and give it its final `name`; discard it on failure."""
        try:
            staged.publish(self._path(name))
        except BaseException:
            staged.discard()
            raise

    def read(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        try:
            with open(self._path(name), "rb") as handle:
                if start:
                    handle.seek(start)
                if end is None:
                    return handle.read()
                return handle.read(end - (start or 0))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file {name}: not found in repository {self.url}") from exc

    def list(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        names: list[str] = []
        for directory, _subdirs, files in os.walk(top):
            for filename in files:
                if filename.startswith(TEMPORARY_PREFIX):
                    continue
                full = os.path.join(directory, filename)
                names.append(os.path.relpath(full, self.root).replace(os.sep, "/"))
        names.sort()
        return names

    def remove_stale_temporaries(self, older_than: float) -> tuple[int, int]:
        """Delete staged files untouched for `older_than` seconds; return (files, bytes).

        A staged file is written to without pause until it is published, so one this old
        belongs to a process that crashed or was killed. gc calls this under the
        exclusive lock.
        """
        cutoff = time.time() - older_than
        removed = freed = 0
        for directory, _subdirs, files in os.walk(self.root):
            for filename in files:
                if not filename.startswith(TEMPORARY_PREFIX):
                    continue
                path = os.path.join(directory, filename)
                try:
                    st = os.stat(path)
                    if st.st_mtime >= cutoff:
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                log.info("removed stale temporary file %s (%d bytes)", path, st.st_size)
                removed += 1
                freed += st.st_size
        return removed, freed

    def size(self, name: str) -> int:
        try:
            return os.stat(self._path(name)).st_size
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file {name}: not found in repository {self.url}") from exc

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass


class StagedFile:
    """A new file written under a temporary name, then published with fsync and rename.

    LocalBackend.write stages every file this way, and the object writer streams each
    pack into one so that no pack has to be held in memory. Listings skip the temporary
    names, so readers never see a staged file before it is complete.
    """

    def __init__(self, directory: str) -> None:
        _make_directories(directory)
        self.path = os.path.join(directory, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd: Optional[int] = os.open(self.path, flags, 0o600)
        self.size = 0

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(self._require_open(), view[written:])
        self.size += written

    def publish(self, path: str) -> None:
        """Sync the content, rename the file to `path` and sync the new directory entry."""
        fd = self._require_open()
        os.fsync(fd)
        self._fd = None
        os.close(fd)
        directory = os.path.dirname(path)
        _make_directories(directory)
        os.replace(self.path, path)
        _fsync_directory(directory)

    def discard(self) -> None:
        """Close and remove the temporary file; safe to call more than once."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        _remove_quietly(self.path)

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"staged file {self.path} is already published or discarded")
        return self._fd


class FsspecBackend:
    """A repository on any fsspec filesystem (memory://, s3://, gs://, ...).

    Every request goes through call_with_retry, so throttling and transient network
    errors are retried with backoff while access and request errors fail at once.
    """

    def __init__(
        self,
        url: str,
        options: Optional[dict[str, Any]] = None,
        retry_policy: Optional[RetryPolicy] = None,
    ) -> None:
        # Imported here because fsspec, with asyncio behind it, takes about 40 ms to import
        # (python -X importtime), and local repositories never need it.
        import fsspec.core

        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        self.root = root.rstrip("/")
        self.retry_policy = retry_policy or policy_from_environment()
        # Set by the repository when its config sets S3 Object Lock retention.
        self.object_lock: Optional[ObjectLock] = None

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _retry(self, operation: str, name: str, function: Callable[[], T]) -> T:
        return call_with_retry(function, operation, name, self.url, self.retry_policy)

    def write(self, name: str, data: bytes) -> None:
        # One PUT of the whole object: object stores never expose half of it. s3fs
        # switches to a multipart upload above 100 MiB, which S3 also makes visible
        # only when the upload completes.
        arguments = self.object_lock.put_arguments(name) if self.object_lock else {}
        payload = bytes(data)
        try:
            self._retry("write", name, lambda: self.fs.pipe_file(self._path(name), payload, **arguments))
        except FileNotFoundError as exc:
            # Object stores reject a write with "not found" when the bucket is missing.
            raise StorageError(
                f"write of {name} in {self.url} failed: {exc}; create the bucket (or parent location) first"
            ) from exc

    def read(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        try:
            return self._retry("read", name, lambda: self.fs.cat_file(self._path(name), start=start, end=end))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file {name}: not found in repository {self.url}") from exc

    def list(self, prefix: str) -> list[str]:
        top = self._path(prefix)
        start = len(self.root) + 1
        return sorted(path[start:] for path in self._retry("list", prefix, lambda: self._find(top)))

    def _find(self, top: str) -> list[str]:
        self.fs.invalidate_cache(top)
        try:
            return list(self.fs.find(top))
        except FileNotFoundError:
            return []

    def size(self, name: str) -> int:
        path = self._path(name)
        try:
            return int(self._retry("size", name, lambda: self._uncached(path, self.fs.size)))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file {name}: not found in repository {self.url}") from exc

    def exists(self, name: str) -> bool:
        path = self._path(name)
        return bool(self._retry("exists", name, lambda: self._uncached(path, self.fs.exists)))

    def delete(self, name: str) -> None:
        try:
            self._retry("delete", name, lambda: self.fs.rm_file(self._path(name)))
        except FileNotFoundError:
            pass

    def _uncached(self, path: str, function: Callable[[str], T]) -> T:
        self.fs.invalidate_cache(path)
        return function(path)


def open_backend(url: str, options: Optional[dict[str, Any]] = None) -> Backend:
    """Return the backend for a repository URL or local path."""
    if not url:
        raise UsageError("repository location is empty: pass --repo or set CASBAK_REPOSITORY")
    protocol = url_protocol(url)
    if protocol in (None, "file", "local"):
        path = url.split("://", 1)[1] if protocol else url
        return LocalBackend(path)
    backend = FsspecBackend(url, options)
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(backend.fs, LocalFileSystem):
        return LocalBackend(backend.root)
    return backend


def url_protocol(url: str) -> Optional[str]:
    """Return the protocol of `url` as fsspec.core.split_protocol does, or None for a plain path.

    Reimplemented so that telling a local path from a URL does not import fsspec. A
    one-letter protocol is a Windows drive, and `data:` URLs have no slashes.
    """
    if "://" in url:
        protocol = url.split("://", 1)[0]
        if len(protocol) > 1:
            return protocol
    if url.startswith("data:"):
        return "data"
    return None


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _make_directories(directory: str) -> None:
    """Create `directory` and its missing parents, syncing each new entry to disk.

    Without the sync, a power loss could drop a new `data/xx` directory together with
    the packs in it, while an index file naming those packs was already durable.
    """
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    _make_directories(parent)
    try:
        os.mkdir(directory)
    except FileExistsError:
        # A concurrent writer created it; syncing the parent again is cheap and makes
        # sure the entry is durable before this writer relies on it.
        pass
    _fsync_directory(parent)


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory entry itself reaches the disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
