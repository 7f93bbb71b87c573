"""Copy snapshots from one repository to another, re-encrypting and re-hashing on the way.

Two repositories normally have different master keys, so one plaintext has different
digests in each (object digests are keyed BLAKE3 in encrypted repositories). Copying
therefore walks the source snapshot's trees, reads each file's chunks from the source,
hashes them with the target's hasher, stores those the target lacks, and writes
rebuilt trees and a new manifest whose `copied_from` names the source snapshot.

Chunks keep the source's boundaries even when the target's chunker parameters or seed
differ. Restores only need the chunk list of each file, so the copy is correct, but the
copied chunks deduplicate against the target's own snapshots only where boundaries
happen to agree.

Before a snapshot's manifest is written, every object that this run added is read back
from the target through a freshly loaded index and checked against its digest. Every
chunk that the rebuilt trees name must be indexed as well.
"""

from __future__ import annotations

import logging
import time
from copy import copy as shallow_copy
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Optional, Sequence

from casbak import __version__
from casbak.audit.signing import SigningKey, sign_manifest
from casbak.catalog import load_manifests, load_tree, resolve_snapshot
from casbak.errors import CorruptObject, ObjectNotFound, UsageError
from casbak.manifest import Manifest
from casbak.store.cache import detach_cache
from casbak.store.locks import SHARED, LockSettings, RepositoryLock
from casbak.store.packs import KIND_DATA, KIND_TREE
from casbak.store.repository import Repository
from casbak.store.writer import ObjectWriter
from casbak.tree import DIRECTORY, FILE, Entry, Tree

log = logging.getLogger(__name__)

# Hashed by both repositories to find out whether they produce the same digests.
_DIGEST_PROBE = b"casbak copy: do both repositories produce the same digests?"


@dataclass
class CopyStats:
    """Counters of one copied snapshot; sizes are plaintext bytes."""

    files: int = 0
    directories: int = 0
    bytes_read: int = 0
    chunks_new: int = 0
    trees_new: int = 0
    bytes_added: int = 0
    bytes_uploaded: int = 0
    objects_verified: int = 0
    duration_seconds: float = 0.0


@dataclass
class CopiedSnapshot:
    """One source snapshot and what became of it: `target_id` is None for a skipped one."""

    source_id: str
    target_id: Optional[str]
    skipped: bool = False
    stats: CopyStats = field(default_factory=CopyStats)

    def to_json(self) -> dict:
        return {
            "source": self.source_id,
            "target": self.target_id,
            "skipped": self.skipped,
            "stats": asdict(self.stats),
        }


@dataclass
class CopyResult:
    """Every selected snapshot, oldest first."""

    snapshots: list[CopiedSnapshot] = field(default_factory=list)

    @property
    def copied(self) -> list[CopiedSnapshot]:
        return [s for s in self.snapshots if not s.skipped]

    def to_json(self) -> dict:
        return {"snapshots": [s.to_json() for s in self.snapshots]}


def copy_snapshots(
    source: Repository,
    target: Repository,
    selectors: Sequence[str] = (),
    *,
    lock_settings: Optional[LockSettings] = None,
    signing_key: Optional[SigningKey] = None,
) -> CopyResult:
    """Copy the snapshots that `selectors` name (every snapshot when empty) from `source` to `target`.

    Snapshots that already have a copy in `target` (a manifest whose `copied_from` is
    their id) are skipped. Both repositories are held under shared locks, so a gc on
    either side cannot delete packs while they are read or reused. Raises
    IntegrityError when source data is damaged: the snapshot being copied then gets
    no manifest in `target`, while snapshots copied before it stay. With `signing_key`
    (a key of the target), every new manifest is signed with it.
    """
    if source.config.repository_id == target.config.repository_id:
        raise UsageError(
            f"copy: source and target are the same repository (id {source.config.repository_id[:12]}); "
            "give a different --to-repo"
        )
    if source.encrypted and not target.encrypted:
        log.warning("copying from an encrypted repository into an unencrypted one: the copies are stored in plaintext")
    with RepositoryLock(source, SHARED, "copy (source)", lock_settings):
        with RepositoryLock(target, SHARED, "copy (target)", lock_settings) as target_lock:
            # Indexes loaded before the locks may name packs that a gc has deleted since.
            source._index = None
            target._index = None
            return _copy_locked(source, target, selectors, target_lock, signing_key)


def _copy_locked(
    source: Repository,
    target: Repository,
    selectors: Sequence[str],
    lock: RepositoryLock,
    signing_key: Optional[SigningKey],
) -> CopyResult:
    chosen = _select(source, selectors)
    copies = _snapshots_in_target(target)
    result = CopyResult()
    for manifest in chosen:
        present = copies.get(manifest.id) or (copies.get(manifest.copied_from) if manifest.copied_from else None)
        if present is not None:
            log.info("snapshot %s: already in the target as %s; skipped", manifest.id[:12], present[:12])
            result.snapshots.append(CopiedSnapshot(manifest.id, present, skipped=True))
            continue
        copied = _copy_snapshot(source, target, manifest, copies, lock, signing_key)
        copies[manifest.id] = copied.target_id
        result.snapshots.append(copied)
    return result


def _snapshots_in_target(target: Repository) -> dict[str, str]:
    """Map snapshot ids to the target snapshot that is them or a copy of them.

    A target manifest counts for its own id and for its `copied_from`, so a snapshot
    copied A -> B -> A is found again instead of being copied back a second time.
    """
    present: dict[str, str] = {}
    for manifest in load_manifests(target):
        present.setdefault(manifest.id, manifest.id)
        if manifest.copied_from:
            present.setdefault(manifest.copied_from, manifest.id)
    return present


def _select(source: Repository, selectors: Sequence[str]) -> list[Manifest]:
    if not selectors:
        return load_manifests(source)
    chosen = {m.id: m for m in (resolve_snapshot(source, s) for s in selectors)}
    return sorted(chosen.values(), key=lambda m: (m.time_ns, m.id))


def _copy_snapshot(
    source: Repository,
    target: Repository,
    manifest: Manifest,
    copies: dict[str, str],
    lock: RepositoryLock,
    signing_key: Optional[SigningKey],
) -> CopiedSnapshot:
    started = time.monotonic()
    with target.writer() as writer:
        copier = _TreeCopier(source, target, writer)
        try:
            root = copier.copy_tree(manifest.tree)
            writer.flush()
        except BaseException:
            _index_uploaded(writer)
            raise
        stats = copier.stats
        stats.chunks_new = writer.stats.per_kind_new[KIND_DATA]
        stats.trees_new = writer.stats.per_kind_new[KIND_TREE]
        stats.bytes_added = writer.stats.bytes_new_raw
        stats.bytes_uploaded = writer.stats.bytes_uploaded

    stats.objects_verified = _read_back(target, root, copier.new_objects)
    existing = load_manifests(target)
    # Built field by field, not with replace(): fields that describe the source's own
    # manifest, such as its signature, must not carry over. The PII record describes
    # the files, which are unchanged, so it does.
    # NOTE: a manifest field added later is dropped from copies until it is listed here.
    copy = Manifest(
        time_ns=manifest.time_ns,
        hostname=manifest.hostname,
        username=manifest.username,
        sources=list(manifest.sources),
        tree=root,
        program_version=__version__,
        tags=list(manifest.tags),
        parent=copies.get(manifest.parent) if manifest.parent else None,
        previous=existing[-1].id if existing else None,
        partial=manifest.partial,
        errors=list(manifest.errors),
        stats=dict(manifest.stats),
        pii=manifest.pii,
        copied_from=manifest.id,
    )
    if signing_key is not None:
        sign_manifest(copy, signing_key)
    # The manifest comes last, so a failed copy never leaves a snapshot with missing data.
    lock.ensure_held()
    copy.id = target.write_manifest(copy.encode())
    stats.duration_seconds = round(time.monotonic() - started, 3)
    log.info(
        "snapshot %s copied as %s (%d new chunks, %d bytes added)",
        manifest.id[:12], copy.id[:12], stats.chunks_new, stats.bytes_added,
    )
    return CopiedSnapshot(manifest.id, copy.id, stats=stats)


def _index_uploaded(writer: ObjectWriter) -> None:
    # Index the packs that did upload, so the next copy reuses them instead of uploading again.
    try:
        writer.flush()
    except Exception as exc:  # the error that stopped the copy is the one to report
        log.warning("could not index the packs of the interrupted copy: %s", exc)


class _TreeCopier:
    """Rebuild one snapshot's trees in the target, storing the objects it lacks.

    `_tree_map` remembers the subtrees already rebuilt in this run, so a subtree that
    occurs twice is read from the source once. `_chunk_map` saves hashing and queueing
    a chunk again when several files share it.
    NOTE: both maps live in memory, about 100 bytes per distinct chunk of the snapshot.
    """

    def __init__(self, source: Repository, target: Repository, writer: ObjectWriter) -> None:
        self.source = source
        self.target = target
        self.writer = writer
        self.stats = CopyStats()
        self.new_objects: list[tuple[str, bytes]] = []
        self._same_digests = source.hasher.digest(_DIGEST_PROBE) == target.hasher.digest(_DIGEST_PROBE)
        self._chunk_map: dict[bytes, bytes] = {}
        self._tree_map: dict[bytes, bytes] = {}

    def copy_tree(self, root: bytes) -> bytes:
        """Store the target version of the source tree `root` and of all below it; return its digest.

        Subtrees are finished before their parents with an explicit stack rather than
        recursion, so trees nested deeper than Python's recursion limit copy too.
        """
        stack: list[tuple[bytes, Optional[list[Entry]]]] = [(root, None)]
        while stack:
            digest, entries = stack[-1]
            if digest in self._tree_map:
                stack.pop()
                continue
            if entries is None:
                entries = load_tree(self.source, digest).entries
                stack[-1] = (digest, entries)
                pending = [e.subtree for e in entries if e.type == DIRECTORY and e.subtree not in self._tree_map]
                if pending:
                    stack.extend((subtree, None) for subtree in pending)
                    continue
            # Every subtree of this directory is in _tree_map now.
            copied = [self._copy_entry(entry) for entry in entries]
            self._tree_map[digest] = self._put(KIND_TREE, Tree(copied).encode())
            stack.pop()
        return self._tree_map[root]

    def _copy_entry(self, entry: Entry) -> Entry:
        if entry.type == DIRECTORY:
            self.stats.directories += 1
            return replace(entry, subtree=self._tree_map[entry.subtree])
        if entry.type == FILE:
            self.stats.files += 1
            return self._copy_file(entry)
        return entry

    def _copy_file(self, entry: Entry) -> Entry:
        if self._same_digests and all(self.writer.has(c) for c in entry.chunks):
            # Same digests and every chunk present: the entry is valid in the target as is.
            return entry
        what = f"file {entry.name!r} (content {entry.content.hex()[:12]})"
        source_content = self.source.hasher.stream()
        target_content = self.target.hasher.stream()
        chunks: list[bytes] = []
        size = 0
        for source_digest, plaintext in self._read_chunks(entry.chunks):
            source_content.update(plaintext)
            target_content.update(plaintext)
            size += len(plaintext)
            chunks.append(self._copy_chunk(source_digest, plaintext))
        if size != entry.size or source_content.digest() != entry.content:
            raise CorruptObject(
                f"{what}: its chunks in the source repository do not add up to the recorded size and "
                "content hash; run `casbak verify --read-data` on the source"
            )
        return replace(entry, chunks=chunks, content=target_content.digest())

    def _read_chunks(self, digests: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """Yield (source digest, plaintext) for every chunk of a file, in order.

        Chunks translated earlier in this run are read again, because the content
        hashes need every byte of the file.
        """
        for digest, plaintext in zip(digests, self.source.iter_objects(digests)):
            self.stats.bytes_read += len(plaintext)
            yield digest, plaintext

    def _copy_chunk(self, source_digest: bytes, plaintext: bytes) -> bytes:
        known = self._chunk_map.get(source_digest)
        if known is not None:
            return known
        copied = self._put(KIND_DATA, plaintext)
        self._chunk_map[source_digest] = copied
        return copied

    def _put(self, kind: str, plaintext: bytes) -> bytes:
        digest, added = self.writer.put(kind, plaintext)
        if added:
            self.new_objects.append((kind, digest))
        return digest


def _read_back(target: Repository, root: bytes, new_objects: list[tuple[str, bytes]]) -> int:
    """Re-read every object this copy added, and check that the rebuilt trees are complete.

    The index is loaded again from storage, so the check also proves that the index
    files naming the new packs were written. Returns the number of objects read back.
    """
    stored = _uncached_view(target)
    digests = [digest for _, digest in new_objects]
    verified = 0
    # iter_objects() decrypts each object and raises CorruptObject unless its plaintext
    # hashes to the requested digest.
    for _plaintext in stored.iter_objects(digests):
        verified += 1
    _check_complete(stored, root)
    return verified


def _uncached_view(repository: Repository) -> Repository:
    """Return a view of `repository` that reads the store itself and loads its index afresh.

    Writes fill the local metadata cache of a remote repository, so reads through it
    would check the cached copies of index files and tree packs instead of the uploads.
    """
    view = shallow_copy(repository)
    view.backend = detach_cache(repository.backend)
    view._index = None
    return view


def _check_complete(target: Repository, root: bytes) -> None:
    pending = [root]
    seen: set[bytes] = set()
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        for entry in load_tree(target, digest).entries:
            if entry.type == DIRECTORY:
                pending.append(entry.subtree)
            elif entry.type == FILE:
                missing = [c for c in entry.chunks if c not in target.index]
                if missing:
                    raise ObjectNotFound(
                        f"copy: chunk {missing[0].hex()[:12]} of {entry.name!r} is not indexed in the target "
                        "after the copy; run the copy again"
                    )
