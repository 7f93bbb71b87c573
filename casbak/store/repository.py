"""A repository: config, keys, index and verified reads over a storage backend.

Store layout (every name relative to the repository root):

    config                      sealed repository config
    keys/<key id>               key files (encrypted repositories only)
    data/<xx>/<pack id>         packs of file chunks
    tree/<xx>/<pack id>         packs of tree objects
    index/<index id>            index files
    snapshots/<snapshot id>     sealed snapshot manifests
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, Sequence, Union

from casbak.crypto import Cipher, Hasher, KdfParams, MasterKeys
from casbak.errors import (
    CorruptObject,
    IntegrityError,
    ObjectNotFound,
    PasswordMissing,
    RepositoryExists,
    RepositoryNotFound,
)
from casbak.store.backend import Backend, LocalBackend, open_backend
from casbak.store.cache import attach_cache, prune_cache, read_metadata
from casbak.store.config import ENCRYPTION_AES, ENCRYPTION_NONE, RepositoryConfig, open_config, seal_config
from casbak.store.index import Index, Location, decode_index
from casbak.store.keys import check_keyless_store, list_key_ids, unlock, write_key
from casbak.store.objectlock import apply_object_lock
from casbak.store.objects import Sealer
from casbak.store.packs import pack_path
from casbak.store.writer import ObjectWriter

log = logging.getLogger(__name__)

CONFIG_NAME = "config"
SNAPSHOTS_PREFIX = "snapshots"


class Repository:
    """An opened repository. Reads verify every object; writes go through an ObjectWriter."""

    def __init__(
        self,
        backend: Backend,
        config: RepositoryConfig,
        sealer: Sealer,
        hasher: Hasher,
        master_keys: Optional[MasterKeys] = None,
        key_id: Optional[str] = None,
    ) -> None:
        # Remote repositories read index files, tree packs and manifests through a
        # local cache; packs, index files and manifests get the config's retention.
        self.backend = attach_cache(backend, config.repository_id)
        apply_object_lock(self.backend, config.object_lock_days, config.object_lock_mode)
        self.config = config
        self.sealer = sealer
        self.hasher = hasher
        self.master_keys = master_keys
        self.key_id = key_id
        self._index: Optional[Index] = None

    @property
    def encrypted(self) -> bool:
        return self.master_keys is not None

    @classmethod
    def init(
        cls,
        location: Union[str, Backend],
        password: Optional[bytes],
        *,
        config: Optional[RepositoryConfig] = None,
        kdf: Optional[KdfParams] = None,
        options: Optional[dict[str, Any]] = None,
    ) -> "Repository":
        """Create a repository; encrypted unless `config.encryption` is "none"."""
        backend = open_backend(location, options) if isinstance(location, str) else location
        if backend.exists(CONFIG_NAME):
            raise RepositoryExists(f"repository {backend.url}: already initialized (a config file exists)")
        config = config or RepositoryConfig()
        config.chunker.validate()
        if config.encryption == ENCRYPTION_NONE:
            repository = cls(backend, config, _object_sealer(config, None), Hasher(None))
        elif config.encryption == ENCRYPTION_AES:
            if not password:
                raise PasswordMissing(
                    "a password is required to create an encrypted repository: set CASBAK_PASSWORD, "
                    "pass --password-file or --password-command, or use --insecure-no-encryption"
                )
            master_keys = MasterKeys.generate()
            key_id = write_key(backend, master_keys, password, kdf or KdfParams())
            repository = cls._with_keys(backend, config, master_keys, key_id)
        else:
            raise CorruptObject(f"config: unknown encryption {config.encryption!r}")
        # The config comes last: until it exists, the location is not a repository.
        backend.write(CONFIG_NAME, seal_config(config, repository.sealer))
        log.info("initialized repository %s (id %s)", backend.url, config.repository_id[:12])
        return repository

    @classmethod
    def open(
        cls,
        location: Union[str, Backend],
        password: Optional[bytes] = None,
        options: Optional[dict[str, Any]] = None,
    ) -> "Repository":
        backend = open_backend(location, options) if isinstance(location, str) else location
        try:
            sealed_config = backend.read(CONFIG_NAME)
        except ObjectNotFound as exc:
            raise RepositoryNotFound(
                f"repository {backend.url}: not found (no config file); check --repo or CASBAK_REPOSITORY, "
                "or create a repository there with `casbak init`"
            ) from exc
        key_ids = list_key_ids(backend)
        if not key_ids:
            check_keyless_store(backend, sealed_config)
            config = open_config(sealed_config, Sealer(None))
            return cls(backend, config, _object_sealer(config, None), Hasher(None))
        if sealed_config[2:3] == b"\x00":
            # An attacker who replaced the config with a plaintext one must not make us
            # write unencrypted data into an encrypted repository.
            raise CorruptObject("config: is unencrypted, but the repository has key files; refusing to open")
        if not password:
            raise PasswordMissing(
                f"repository {backend.url} is encrypted: set CASBAK_PASSWORD or pass "
                "--password-file or --password-command"
            )
        key_id, master_keys = unlock(backend, password)
        config = open_config(sealed_config, Sealer(Cipher(master_keys.encryption_key)))
        return cls._with_keys(backend, config, master_keys, key_id)

    @classmethod
    def _with_keys(cls, backend: Backend, config: RepositoryConfig, keys: MasterKeys, key_id: str) -> "Repository":
        sealer = _object_sealer(config, Cipher(keys.encryption_key))
        return cls(backend, config, sealer, Hasher(keys.hash_key), keys, key_id)

    # Index

    @property
    def index(self) -> Index:
        if self._index is None:
            self._index = self.load_index()
        return self._index

    def load_index(self, strict: bool = False) -> Index:
        """Read every index file. Damaged ones are logged and skipped unless `strict`."""
        index = Index()
        names = self.backend.list("index")
        prune_cache(self.backend, "index", names)
        with ThreadPoolExecutor(max_workers=8) as pool:
            blobs = pool.map(self._read_quietly, names)
            for name, blob in zip(names, blobs):
                index_id = name.split("/", 1)[1]
                try:
                    if isinstance(blob, BaseException):
                        raise blob
                    for pack in decode_index(index_id, blob, self.sealer):
                        index.add_pack(pack)
                except IntegrityError as exc:
                    if strict:
                        raise
                    log.error("index %s: skipped: %s", index_id[:12], exc)
        log.debug("loaded %d index files with %d objects", len(names), len(index))
        return index

    def _read_quietly(self, name: str) -> Union[bytes, BaseException]:
        try:
            return read_metadata(self.backend, name)
        except IntegrityError as exc:
            return exc

    # Objects

    def writer(self, **kwargs: Any) -> ObjectWriter:
        return ObjectWriter(self, **kwargs)

    def get(self, digest: bytes) -> bytes:
        """Return an object's plaintext after checking it against its digest."""
        location = self.index.lookup(digest)
        if location is None:
            raise ObjectNotFound(f"object {digest.hex()[:12]}: not in any index")
        sealed = read_metadata(
            self.backend,
            pack_path(location.kind, location.pack_id), location.offset, location.offset + location.length
        )
        return self._open_object(digest, location, sealed)

    def iter_objects(
        self, digests: Sequence[bytes], max_read: int = 8 * 1024 * 1024, packs: Optional["PackFiles"] = None
    ) -> Iterator[bytes]:
        """Yield the verified plaintexts of `digests` in order.

        Objects stored next to each other in one pack are fetched with one ranged read
        of up to `max_read` bytes, which matters on object stores where every read is a
        request. `packs` keeps local pack files open across calls.
        """
        locations = []
        for digest in digests:
            location = self.index.lookup(digest)
            if location is None:
                raise ObjectNotFound(f"object {digest.hex()[:12]}: not in any index")
            locations.append(location)
        position = 0
        while position < len(locations):
            first = locations[position]
            end = position + 1
            stop = first.offset + first.length
            while (
                end < len(locations)
                and locations[end].pack_id == first.pack_id
                and locations[end].offset == stop
                and stop - first.offset < max_read
            ):
                stop += locations[end].length
                end += 1
            name = pack_path(first.kind, first.pack_id)
            if packs is None:
                blob = read_metadata(self.backend, name, first.offset, stop)
            else:
                blob = packs.read(name, first.offset, stop)
            # Slices of a memoryview share the blob instead of copying each sealed object.
            view = memoryview(blob)
            for number in range(position, end):
                location = locations[number]
                start = location.offset - first.offset
                yield self._open_object(digests[number], location, view[start : start + location.length])
            position = end

    def _open_object(self, digest: bytes, location: Location, sealed: Union[bytes, memoryview]) -> bytes:
        what = f"object {digest.hex()[:12]} in pack {location.pack_id[:12]}"
        if len(sealed) != location.length:
            log.error("%s: pack is truncated", what)
            raise CorruptObject(f"{what}: pack is truncated")
        plaintext = self.sealer.open(sealed, expected_size=location.raw_length, what=what)
        if self.hasher.digest(plaintext) != digest:
            log.error("%s: digest mismatch", what)
            raise CorruptObject(f"{what}: digest mismatch")
        return plaintext

    # Snapshot manifests

    def write_manifest(self, plaintext: bytes) -> str:
        """Store a manifest; its id is the (keyed) BLAKE3 digest of its plaintext."""
        snapshot_id = self.hasher.digest(plaintext).hex()
        self.backend.write(f"{SNAPSHOTS_PREFIX}/{snapshot_id}", self.sealer.seal(plaintext))
        return snapshot_id

    def read_manifest(self, snapshot_id: str) -> bytes:
        what = f"snapshot {snapshot_id[:12]}"
        plaintext = self.sealer.open(read_metadata(self.backend, f"{SNAPSHOTS_PREFIX}/{snapshot_id}"), what=what)
        if self.hasher.digest(plaintext).hex() != snapshot_id:
            raise CorruptObject(f"{what}: manifest content does not match its id")
        return plaintext

    def list_snapshot_ids(self) -> list[str]:
        names = self.backend.list(SNAPSHOTS_PREFIX)
        prune_cache(self.backend, SNAPSHOTS_PREFIX, names)
        return [name.split("/", 1)[1] for name in names]


class PackFiles:
    """Pack files of a local repository, kept open for many ranged reads.

    A restore reads once or more per file. In a py-spy profile of a 423 MB restore,
    opening and closing the pack for each read took about a fifth of the writer threads'
    samples that held the GIL, and the read itself about 1%. Each thread keeps its own
    descriptors (at most `max_open`), so no thread closes a descriptor that another one
    is reading. Other backends are read as Repository.iter_objects reads them without it.
    """

    def __init__(self, repository: Repository, max_open: int = 16) -> None:
        self._repository = repository
        self._local = repository.backend if isinstance(repository.backend, LocalBackend) else None
        self._max_open = max_open
        self._threads = threading.local()
        self._lock = threading.Lock()
        self._all: list[OrderedDict[str, int]] = []

    def read(self, name: str, start: int, end: int) -> bytes:
        """Return bytes `start` to `end` of the pack `name`, fewer if the pack ends before `end`."""
        if self._local is None:
            return read_metadata(self._repository.backend, name, start, end)
        fd = self._descriptor(name)
        data = os.pread(fd, end - start, start)
        # pread(2) may return less than requested before the end of the file.
        while len(data) < end - start:
            more = os.pread(fd, end - start - len(data), start + len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        """Close every descriptor. Call it once no thread reads any more."""
        with self._lock:
            for descriptors in self._all:
                for fd in descriptors.values():
                    os.close(fd)
                descriptors.clear()

    def _descriptor(self, name: str) -> int:
        descriptors: Optional[OrderedDict[str, int]] = getattr(self._threads, "descriptors", None)
        if descriptors is None:
            descriptors = self._threads.descriptors = OrderedDict()
            with self._lock:
                self._all.append(descriptors)
        fd = descriptors.get(name)
        if fd is not None:
            descriptors.move_to_end(name)
            return fd
        assert self._local is not None
        try:
            fd = os.open(self._local._path(name), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"file {name}: not found in repository {self._local.url}") from exc
        with self._lock:
            descriptors[name] = fd
            if len(descriptors) > self._max_open:
                _oldest, evicted = descriptors.popitem(last=False)
                os.close(evicted)
        return fd


def _object_sealer(config: RepositoryConfig, cipher: Optional[Cipher]) -> Sealer:
    """Return the sealer for the objects of a repository with `config`."""
    return Sealer(cipher, config.compression_level, byte_planes=config.byte_planes)
