"""Prune: delete the packs no snapshot needs and rewrite packs that are mostly garbage.

Steps, all under an exclusive lock (docs/gc.md argues why each crash point is safe):

1. Read every index file (strictly: a damaged index stops prune, because its packs
   would look unreferenced) and list the packs in the store.
2. Mark: walk the trees of every remaining snapshot, reading only tree packs. A
   manifest or tree that cannot be read stops prune before anything is deleted.
3. Plan: per pack, the bytes of live objects it holds. When an object sits in several
   packs, the pack with the most live bytes per stored byte keeps it. Packs without live
   objects are deleted; packs whose unused fraction exceeds `max_unused` are repacked.
4. Repack: copy the live objects of those packs into new packs through the
   ObjectWriter, which uploads each pack before the index file that names it.
5. Write new index files naming every remaining pack, then delete the old index
   files, so no live pack is ever unindexed.
6. Delete the packs that no index names any more.

Before step 4, staged files that crashed writers left behind (names starting with
`.tmp-`, untouched for an hour) are removed from local repositories.

`repack=False` reads index files and tree packs only, never a data pack.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from casbak.catalog import load_manifest
from casbak.errors import IntegrityError, ObjectNotFound, UsageError
from casbak.manifest import Manifest
from casbak.operations.forget import ForgetResult, delete_or_retain, forget_by_policy
from casbak.operations.retention import RetentionPolicy
from casbak.store.backend import LocalBackend
from casbak.store.index import Index, PackInfo, decode_index, encode_index
from casbak.store.locks import EXCLUSIVE, LockSettings, RepositoryLock
from casbak.store.packs import KINDS, pack_path
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FILE, Tree

log = logging.getLogger(__name__)

INDEX_PREFIX = "index"
# Objects per new index file; keeps each file a few MiB so loading stays parallel.
OBJECTS_PER_INDEX_FILE = 50_000

# Staged files (packs being written) untouched for this long belong to dead processes.
STALE_TEMPORARY_SECONDS = 3600


@dataclass(frozen=True)
class PruneOptions:
    """`max_unused` is the fraction (0..1) of a pack's object bytes that may be garbage."""

    max_unused: float = 0.10
    repack: bool = True
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_unused <= 1.0:
            raise UsageError(f"--max-unused {self.max_unused:.0%}: must be between 0% and 100%")


@dataclass
class PruneStats:
    """Outcome of one prune; sizes in bytes."""

    snapshots: int = 0
    live_objects: int = 0
    packs_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    unindexed_packs_deleted: int = 0
    temporary_files_deleted: int = 0
    index_files_written: int = 0
    index_files_deleted: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    bytes_freed: int = 0
    retained: list[dict] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class PrunePlan:
    """The decisions of one prune, computed without changing the store."""

    index_files: dict[str, list[PackInfo]]
    packs: dict[str, PackInfo]
    live: set[bytes]
    holder: dict[bytes, str]
    snapshots: int = 0
    keep: set[str] = field(default_factory=set)
    delete: set[str] = field(default_factory=set)
    repack: set[str] = field(default_factory=set)
    unindexed: dict[str, int] = field(default_factory=dict)  # store name -> size
    missing: set[str] = field(default_factory=set)


@dataclass
class GcReport:
    forget: Optional[ForgetResult]
    prune: PruneStats
    duration_seconds: float

    def to_json(self) -> dict:
        return {
            "forget": self.forget.to_json() if self.forget else None,
            "prune": asdict(self.prune),
            "duration_seconds": self.duration_seconds,
        }


def run_gc(
    repository: Repository,
    policy: Optional[RetentionPolicy] = None,
    group_by: str = "host,sources",
    options: Optional[PruneOptions] = None,
    lock_settings: Optional[LockSettings] = None,
    select: Optional[Callable[[Manifest], bool]] = None,
) -> GcReport:
    """Forget snapshots by `policy` (when given and not empty), then prune, under one exclusive lock.

    The policy judges only the snapshots for which `select` returns True; pruning always
    keeps the data of every remaining snapshot.
    """
    started = time.monotonic()
    options = options or PruneOptions()
    forget_result = None
    if options.dry_run:
        if policy is not None and not policy.is_empty():
            forget_result = forget_by_policy(repository, policy, group_by, dry_run=True, select=select)
        stats = prune(repository, options, None, assume_forgotten=_forgotten_ids(forget_result))
        return GcReport(forget_result, stats, round(time.monotonic() - started, 3))
    with RepositoryLock(repository, EXCLUSIVE, "gc", lock_settings, remove_stale=True) as lock:
        if policy is not None and not policy.is_empty():
            forget_result = forget_by_policy(repository, policy, group_by, lock=lock, select=select)
        stats = prune(repository, options, lock)
    return GcReport(forget_result, stats, round(time.monotonic() - started, 3))


def prune(
    repository: Repository,
    options: PruneOptions,
    lock: Optional[RepositoryLock],
    assume_forgotten: frozenset[str] = frozenset(),
) -> PruneStats:
    """Prune the repository; the caller must own the exclusive `lock` unless this is a dry run."""
    if lock is None and not options.dry_run:
        raise UsageError("prune needs an exclusive repository lock unless it is a dry run")
    plan = plan_prune(repository, options, assume_forgotten)
    stats = _planned_stats(plan)
    if options.dry_run:
        stats.dry_run = True
        return stats
    assert lock is not None
    _remove_stale_temporaries(repository, stats)
    if not (plan.delete or plan.repack or plan.unindexed or plan.missing):
        log.info("prune: nothing to delete or repack; %d objects in use", len(plan.live))
        return stats
    try:
        new_index_files = _repack(repository, plan, stats, lock)
        _rewrite_index(repository, plan, new_index_files, stats, lock)
    finally:
        # The cached index names packs that are about to go; the next use reloads it.
        repository._index = None
    log.info(
        "prune: deleted %d packs, repacked %d into %d, freed %d bytes",
        stats.packs_deleted + stats.unindexed_packs_deleted, stats.packs_repacked, stats.packs_written, stats.bytes_freed,
    )
    return stats


def _remove_stale_temporaries(repository: Repository, stats: PruneStats) -> None:
    # Staged files of a killed snapshot are invisible to listings, so only this finds
    # them. An hour without a write is far beyond any pause of a live writer.
    backend = repository.backend
    if isinstance(backend, LocalBackend):
        removed, freed = backend.remove_stale_temporaries(STALE_TEMPORARY_SECONDS)
        stats.temporary_files_deleted = removed
        stats.bytes_freed += freed


def plan_prune(repository: Repository, options: PruneOptions, assume_forgotten: frozenset[str] = frozenset()) -> PrunePlan:
    """Read indexes and trees and decide the fate of every pack; changes nothing."""
    index_files = read_index_files(repository)
    packs: dict[str, PackInfo] = {}
    for infos in index_files.values():
        for info in infos:
            packs.setdefault(info.pack_id, info)
    stored = _list_stored_packs(repository)
    index = Index()
    for info in packs.values():
        index.add_pack(info)
    # Marking reads trees through the repository, so it must see every indexed pack.
    repository._index = index
    snapshot_ids = [i for i in repository.list_snapshot_ids() if i not in assume_forgotten]
    live = mark_live_objects(repository, snapshot_ids)
    plan = PrunePlan(index_files, packs, live, {}, snapshots=len(snapshot_ids))
    plan.missing = {pack_id for pack_id in packs if pack_id not in stored}
    plan.unindexed = {name: size for pack_id, (name, size) in stored.items() if pack_id not in packs}
    _choose_holders(plan)
    _classify(plan, options)
    return plan


def read_index_files(repository: Repository) -> dict[str, list[PackInfo]]:
    """Decode every index file; raise IntegrityError naming the first damaged one."""
    found = {}
    names = repository.backend.list(INDEX_PREFIX)
    # Reads bypass the metadata cache: gc must see the store as it is now.
    with ThreadPoolExecutor(max_workers=8) as pool:
        blobs = list(pool.map(repository.backend.read, names))
    for name, blob in zip(names, blobs):
        index_id = name.split("/", 1)[1]
        try:
            found[name] = decode_index(index_id, blob, repository.sealer)
        except IntegrityError as exc:
            raise IntegrityError(
                f"prune stopped before deleting anything: {exc}; its packs would look unused. "
                "Check the repository with `casbak verify`"
            ) from exc
    return found


def mark_live_objects(repository: Repository, snapshot_ids: list[str]) -> set[bytes]:
    """Return the digests of every tree and chunk that the snapshots reference."""
    live: set[bytes] = set()
    pending: list[bytes] = []
    for snapshot_id in snapshot_ids:
        try:
            manifest = load_manifest(repository, snapshot_id)
        except ObjectNotFound:
            continue  # removed since it was listed
        except IntegrityError as exc:
            raise IntegrityError(
                f"prune stopped before deleting anything: {exc}; prune cannot tell which data this "
                "snapshot needs. Check the repository with `casbak verify`"
            ) from exc
        pending.append(manifest.tree)
    while pending:
        digest = pending.pop()
        if digest in live:
            continue
        live.add(digest)
        try:
            tree = Tree.decode(repository.get(digest), what=f"tree {digest.hex()[:12]}")
        except IntegrityError as exc:
            raise IntegrityError(f"prune stopped before deleting anything: {exc}; check it with `casbak verify`") from exc
        for entry in tree.entries:
            if entry.type == DIRECTORY and entry.subtree is not None:
                pending.append(entry.subtree)
            elif entry.type == FILE and entry.chunks:
                live.update(entry.chunks)
    return live


def _list_stored_packs(repository: Repository) -> dict[str, tuple[str, int]]:
    """Return pack id -> (store name, size); the size is read only for unindexed packs later."""
    stored = {}
    for kind in KINDS:
        for name in repository.backend.list(kind):
            stored[name.rsplit("/", 1)[1]] = (name, -1)
    return stored


def _choose_holders(plan: PrunePlan) -> None:
    """Pick one pack per live object, preferring packs with more live bytes per byte."""
    live_bytes: dict[str, int] = {}
    for pack_id, info in plan.packs.items():
        if pack_id not in plan.missing:
            live_bytes[pack_id] = sum(e.length for e in info.entries if e.digest in plan.live)
    best: dict[bytes, tuple[float, str]] = {}
    for pack_id, info in plan.packs.items():
        if pack_id in plan.missing:
            continue
        score = live_bytes[pack_id] / max(1, info.size)
        for entry in info.entries:
            if entry.digest in plan.live:
                current = best.get(entry.digest)
                if current is None or (score, pack_id) > current:
                    best[entry.digest] = (score, pack_id)
    unheld = plan.live - best.keys()
    if unheld:
        sample = ", ".join(d.hex()[:12] for d in sorted(unheld)[:5])
        raise IntegrityError(
            f"prune stopped before deleting anything: {len(unheld)} objects that snapshots need are in no "
            f"stored pack (such as {sample}); check the repository with `casbak verify`"
        )
    plan.holder = {digest: pack_id for digest, (_score, pack_id) in best.items()}


def _classify(plan: PrunePlan, options: PruneOptions) -> None:
    for pack_id, info in plan.packs.items():
        if pack_id in plan.missing:
            log.warning("pack %s is indexed but missing from the store; every needed object in it is also in another pack, so it is dropped from the index", pack_id[:12])
            continue
        total = sum(e.length for e in info.entries)
        used = sum(e.length for e in info.entries if plan.holder.get(e.digest) == pack_id)
        if used == 0:
            plan.delete.add(pack_id)
        elif options.repack and total and (total - used) / total > options.max_unused:
            plan.repack.add(pack_id)
        else:
            plan.keep.add(pack_id)


def _planned_stats(plan: PrunePlan) -> PruneStats:
    stats = PruneStats(snapshots=plan.snapshots, live_objects=len(plan.live), packs_before=len(plan.packs) - len(plan.missing) + len(plan.unindexed))
    stats.packs_deleted = len(plan.delete)
    stats.packs_repacked = len(plan.repack)
    stats.unindexed_packs_deleted = len(plan.unindexed)
    stats.bytes_deleted = sum(plan.packs[p].size for p in plan.delete | plan.repack)
    return stats


def _repack(repository: Repository, plan: PrunePlan, stats: PruneStats, lock: RepositoryLock) -> dict[str, list[PackInfo]]:
    """Copy live objects out of the packs to repack; return the index files the writer wrote."""
    if not plan.repack:
        return {}
    # The writer deduplicates against the repository index; with only the kept packs in
    # it, objects of packs being repacked are written again instead of skipped.
    kept = Index()
    for pack_id in plan.keep:
        kept.add_pack(plan.packs[pack_id])
    repository._index = kept
    before = set(repository.backend.list(INDEX_PREFIX))
    with repository.writer() as writer:
        for pack_id in sorted(plan.repack):
            _copy_live_objects(repository, plan, plan.packs[pack_id], writer.put)
            lock.ensure_held()
        writer.flush()
        stats.packs_written = writer.stats.packs_written
        stats.bytes_written = writer.stats.bytes_uploaded
    written = {}
    for name in sorted(set(repository.backend.list(INDEX_PREFIX)) - before):
        written[name] = decode_index(name.split("/", 1)[1], repository.backend.read(name), repository.sealer)
    return written


def _copy_live_objects(repository: Repository, plan: PrunePlan, info: PackInfo, put) -> None:
    blob = repository.backend.read(pack_path(info.kind, info.pack_id))
    for entry in info.entries:
        if plan.holder.get(entry.digest) != info.pack_id:
            continue
        what = f"object {entry.digest.hex()[:12]} in pack {info.pack_id[:12]}"
        sealed = blob[entry.offset : entry.offset + entry.length]
        plaintext = repository.sealer.open(sealed, expected_size=entry.raw_length, what=what)
        if repository.hasher.digest(plaintext) != entry.digest:
            raise IntegrityError(f"prune stopped before deleting anything: {what}: digest mismatch; check it with `casbak verify`")
        put(info.kind, plaintext, entry.digest)


def _rewrite_index(
    repository: Repository, plan: PrunePlan, new_files: dict[str, list[PackInfo]], stats: PruneStats, lock: RepositoryLock
) -> None:
    """Write index files for the remaining packs, then delete old index files and dead packs."""
    remaining = [plan.packs[p] for p in sorted(plan.keep)]
    remaining += [info for infos in new_files.values() for info in infos]
    written = _write_index_files(repository, remaining)
    stats.index_files_written = len(written) + len(new_files)
    lock.ensure_held()
    # An old index file whose content equals a new one has the same name: keep it.
    old_files = (set(plan.index_files) | set(new_files)) - written
    # A repacked pack may be byte-identical to an unindexed leftover of a crashed gc
    # (unencrypted repositories seal deterministically), so every indexed pack is kept.
    protected = {info.pack_id for info in remaining}
    for name in sorted(old_files):
        failure = delete_or_retain(repository.backend, name)
        if failure is None:
            stats.index_files_deleted += 1
            continue
        stats.retained.append({"name": name, "detail": failure})
        # Packs named by an index file that stays must stay too, or reads would fail.
        infos = plan.index_files.get(name) or new_files.get(name) or []
        protected.update(info.pack_id for info in infos)
    _delete_packs(repository, plan, protected, stats)


def _write_index_files(repository: Repository, packs: list[PackInfo]) -> set[str]:
    names: set[str] = set()
    batch: list[PackInfo] = []
    count = 0
    for info in packs:
        batch.append(info)
        count += len(info.entries)
        if count >= OBJECTS_PER_INDEX_FILE:
            names.add(_write_index_file(repository, batch))
            batch, count = [], 0
    if batch:
        names.add(_write_index_file(repository, batch))
    return names


def _write_index_file(repository: Repository, batch: list[PackInfo]) -> str:
    index_id, sealed = encode_index(batch, repository.sealer)
    name = f"{INDEX_PREFIX}/{index_id}"
    repository.backend.write(name, sealed)
    return name


def _delete_packs(repository: Repository, plan: PrunePlan, protected: set[str], stats: PruneStats) -> None:
    doomed = [(pack_path(plan.packs[p].kind, p), plan.packs[p].size) for p in sorted(plan.delete | plan.repack) if p not in protected]
    for name in sorted(plan.unindexed):
        if name.rsplit("/", 1)[1] not in protected:
            doomed.append((name, _size_or_zero(repository, name)))
    stats.bytes_deleted = 0
    for name, size in doomed:
        failure = delete_or_retain(repository.backend, name)
        if failure is None:
            stats.bytes_deleted += size
        else:
            stats.retained.append({"name": name, "detail": failure})
    stats.bytes_freed = stats.bytes_deleted - stats.bytes_written


def _size_or_zero(repository: Repository, name: str) -> int:
    try:
        return repository.backend.size(name)
    except ObjectNotFound:
        return 0


def _forgotten_ids(result: Optional[ForgetResult]) -> frozenset[str]:
    if result is None:
        return frozenset()
    return frozenset(d.manifest.id for d in result.decisions if not d.keep)

