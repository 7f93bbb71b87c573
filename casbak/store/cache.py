"""A local cache of a remote repository's metadata: index files, tree packs, manifests.

A daily snapshot reads every index file, the parent snapshot's trees and the
manifests. On an object store each of those is a billed request, so copies are kept
under $XDG_CACHE_HOME/casbak/<repository id>/ (~/.cache when the variable is unset).
Stored names never change content (index files and packs are named by the BLAKE3
of their bytes, manifests by the hash of their plaintext), so an entry never goes
stale: it is only dropped when the repository deletes the file.

Each cache file is the stored bytes followed by their 32-byte BLAKE3 digest. A file
that fails that check (disk damage, a cut-off write) is logged, deleted and fetched
again. Listings are never cached. Set CASBAK_NO_CACHE=1 to turn the cache off, or
CASBAK_CACHE_DIR to put it elsewhere.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Optional

import blake3

from casbak.store.backend import Backend, LocalBackend

log = logging.getLogger(__name__)

CACHED_PREFIXES = ("index/", "tree/", "snapshots/")
# Names whose last part is the unkeyed BLAKE3 of the stored bytes, checked before caching.
CONTENT_ADDRESSED_PREFIXES = ("index/", "tree/")
DIGEST_SIZE = 32


def default_cache_root() -> Path:
    explicit = os.environ.get("CASBAK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "casbak"


def cache_disabled() -> bool:
    return os.environ.get("CASBAK_NO_CACHE", "").lower() in ("1", "true", "yes")


class MetadataCache:
    """Verified copies of repository files in one local directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        # Set after the first failed write, so a full or read-only disk logs one line.
        self.write_failed = False

    def _path(self, name: str) -> Path:
        return self.directory.joinpath(*name.split("/"))

    def get(self, name: str) -> Optional[bytes]:
        """Return the cached bytes of `name`, or None when absent or damaged."""
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except OSError as exc:
            log.warning("cache entry %s at %s could not be read (%s); fetching it from the store", name, path, exc)
            self.misses += 1
            return None
        data, digest = blob[:-DIGEST_SIZE], blob[-DIGEST_SIZE:]
        if len(blob) < DIGEST_SIZE or blake3.blake3(data).digest() != digest:
            log.warning("cache entry %s at %s is damaged (digest mismatch); deleting it and fetching again", name, path)
            self.discard(name)
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, name: str, data: bytes) -> None:
        """Store a copy; a failure only costs a later download, so it is logged, not raised."""
        if self.write_failed:
            return
        path = self._path(name)
        temporary = path.with_name(f".tmp-{secrets.token_hex(8)}")
        try:
            # Owner-only, like the rest of a user's cache: manifests of an unencrypted
            # repository are plaintext.
            os.makedirs(path.parent, mode=0o700, exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.write(blake3.blake3(data).digest())
            # Rename so that a concurrent reader never sees a half-written entry.
            os.replace(temporary, path)
        except OSError as exc:
            self.write_failed = True
            log.warning(
                "cache entry %s could not be written to %s (%s); not caching for the rest of this run",
                name, path, exc,
            )
            _unlink_quietly(temporary)

    def discard(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cache entry %s could not be deleted: %s", name, exc)

    def names(self, prefix: str) -> list[str]:
        """Return the cached names under `prefix` (such as "index")."""
        top = self._path(prefix)
        found = []
        for directory, _subdirs, files in os.walk(top):
            for filename in files:
                if not filename.startswith(".tmp-"):
                    found.append(os.path.relpath(os.path.join(directory, filename), self.directory).replace(os.sep, "/"))
        return sorted(found)

    def prune(self, prefix: str, keep: set[str]) -> int:
        """Delete cached entries under `prefix` that are not in `keep`; return how many.

        NOTE: only index files and manifests are pruned. Tree packs that gc deleted
        stay cached until the cache directory is removed.
        """
        removed = 0
        for name in self.names(prefix):
            if name not in keep:
                self.discard(name)
                removed += 1
        if removed:
            log.debug("cache: dropped %d entries under %s that the repository no longer has", removed, prefix)
        return removed


class CachedBackend:
    """A backend whose metadata reads can be served from a MetadataCache.

    Only read_cached() uses the cache. read() and every other method go to the store,
    so verification and garbage collection always see the store as it is. Writes and
    deletes of cacheable names update the cache too.
    """

    def __init__(self, backend: Backend, cache: MetadataCache) -> None:
        self.inner = backend
        self.cache = cache
        self.url = backend.url

    def write(self, name: str, data: bytes) -> None:
        self.inner.write(name, data)
        if name.startswith(CACHED_PREFIXES):
            self.cache.put(name, bytes(data))

    def read(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        return self.inner.read(name, start, end)

    def read_cached(self, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
        """Read from the cache, downloading and caching the whole file on a miss."""
        if not name.startswith(CACHED_PREFIXES):
            return self.inner.read(name, start, end)
        data = self.cache.get(name)
        if data is None:
            data = self.inner.read(name)
            if _matches_name(name, data):
                self.cache.put(name, data)
            else:
                log.warning("file %s in %s does not match its name; not caching it", name, self.url)
        if start is None and end is None:
            return data
        return data[start or 0 : end]

    def list(self, prefix: str) -> list[str]:
        return self.inner.list(prefix)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
        self.cache.discard(name)

    def __getattr__(self, attribute: str) -> Any:
        # Backend-specific attributes (fs, root, object_lock) stay reachable.
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _matches_name(name: str, data: bytes) -> bool:
    if not name.startswith(CONTENT_ADDRESSED_PREFIXES):
        return True
    return blake3.blake3(data).hexdigest() == name.rsplit("/", 1)[-1]


def attach_cache(backend: Backend, repository_id: str) -> Backend:
    """Wrap a remote backend in a CachedBackend; local repositories are not cached."""
    if isinstance(backend, (CachedBackend, LocalBackend)) or cache_disabled():
        return backend
    if not repository_id or "/" in repository_id or repository_id.startswith("."):
        log.warning("repository id %r cannot name a cache directory; running without a cache", repository_id)
        return backend
    return CachedBackend(backend, MetadataCache(default_cache_root() / repository_id))


def read_metadata(backend: Backend, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    """Read an index file, tree pack range or manifest, through the cache when there is one."""
    if isinstance(backend, CachedBackend):
        return backend.read_cached(name, start, end)
    return backend.read(name, start, end)


def prune_cache(backend: Backend, prefix: str, names: list[str]) -> None:
    """Drop cached entries under `prefix` that a fresh listing no longer contains."""
    if isinstance(backend, CachedBackend):
        backend.cache.prune(prefix, set(names))


def detach_cache(backend: Backend) -> Backend:
    """Return the store behind a CachedBackend (for --no-cache); other backends unchanged."""
    return backend.inner if isinstance(backend, CachedBackend) else backend
