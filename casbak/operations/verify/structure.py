"""Structure checks: index files, pack presence and size, forget records, manifests, hash chain.

None of these checks reads pack content except through the index files themselves, so
they cost one listing per prefix plus one size query per pack.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Union

import blake3
import msgpack

from casbak.errors import CorruptObject, IntegrityError, ObjectNotFound
from casbak.manifest import Manifest
from casbak.operations.verify.findings import (
    CHAIN_BROKEN,
    FORGET_RECORD_DAMAGED,
    INDEX_DAMAGED,
    MANIFEST_DAMAGED,
    MANIFEST_ID_MISMATCH,
    PACK_MISSING,
    PACK_SIZE_MISMATCH,
    PACK_UNREFERENCED,
    Finding,
    VerifyResult,
)
from casbak.operations.verify.objects import DAMAGE_ERRORS
from casbak.store.index import Index, PackInfo, decode_index
from casbak.store.objects import Sealer
from casbak.store.packs import KINDS
from casbak.store.repository import SNAPSHOTS_PREFIX, Repository

log = logging.getLogger(__name__)

FORGOTTEN_PREFIX = "forgotten"
FORGET_RECORD_VERSION = 1


@dataclass
class RepositoryState:
    """Repository facts gathered by the structure checks and shared with the later checks.

    `damaged` maps each damaged or missing object digest to the findings that should
    list the snapshots and paths depending on it.
    """

    index: Index = field(default_factory=Index)
    packs: dict[str, PackInfo] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    damaged: dict[bytes, list[Finding]] = field(default_factory=dict)
    manifests: list[Manifest] = field(default_factory=list)

    def mark_damaged(self, digest: bytes, finding: Finding) -> None:
        self.damaged.setdefault(digest, []).append(finding)

    def owns(self, pack_id: str, digest: bytes) -> bool:
        """Return True when reads of `digest` go to `pack_id` (the index keeps one copy)."""
        location = self.index.lookup(digest)
        return location is not None and location.pack_id == pack_id


def load_index_files(repository: Repository, state: RepositoryState, result: VerifyResult, workers: int) -> None:
    """Decode every index file on its own, so that each damaged one is reported by name."""
    names = repository.backend.list("index")
    result.stats.index_files = len(names)
    # Reads run in parallel, while decoding and merging stay in this thread in listing order.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, stored in zip(names, pool.map(lambda name: _read_or_error(repository, name), names)):
            _add_index_file(repository, state, result, name, stored)
    result.stats.packs_indexed = len(state.packs)
    result.stats.objects_indexed = len(state.index)


def _read_or_error(repository: Repository, name: str) -> Union[bytes, IntegrityError]:
    try:
        return repository.backend.read(name)
    except IntegrityError as exc:
        return exc


def _add_index_file(
    repository: Repository, state: RepositoryState, result: VerifyResult, name: str, stored: Union[bytes, IntegrityError]
) -> None:
    index_id = name.split("/", 1)[1]
    try:
        if isinstance(stored, IntegrityError):
            raise stored
        packs = decode_index(index_id, stored, repository.sealer)
    except DAMAGE_ERRORS as exc:
        result.stats.index_files_damaged += 1
        message = f"{exc}; the packs it names are reported as unreferenced"
        result.errors.append(Finding(INDEX_DAMAGED, message, index=index_id))
        return
    for pack in packs:
        state.index.add_pack(pack)
        # Several index files may name one pack after an interrupted run. The first one
        # wins, as it does in Index.add_pack.
        state.packs.setdefault(pack.pack_id, pack)


def check_packs(repository: Repository, state: RepositoryState, result: VerifyResult, workers: int) -> None:
    """Compare the packs in the backend with the indexed packs: presence and exact size."""
    stored: dict[str, str] = {}
    for kind in KINDS:
        for name in repository.backend.list(kind):
            stored[name.rsplit("/", 1)[1]] = name
    result.stats.packs_in_backend = len(stored)
    # NOTE: one size query per pack; on object stores a listing with sizes would save requests.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = dict(zip(stored, pool.map(lambda name: _size_or_none(repository, name), stored.values())))
    state.present = {pack_id: size for pack_id, size in sizes.items() if size is not None}

    for pack_id in sorted(state.packs):
        pack = state.packs[pack_id]
        actual = state.present.get(pack_id)
        if actual is None:
            finding = Finding(
                PACK_MISSING,
                f"pack {pack_id[:12]}: named by the index ({pack.kind}, {pack.size} bytes) but not found in the backend",
                pack=pack_id,
            )
            result.errors.append(finding)
            for entry in pack.entries:
                if state.owns(pack_id, entry.digest):
                    state.mark_damaged(entry.digest, finding)
        elif actual != pack.size:
            finding = Finding(
                PACK_SIZE_MISMATCH,
                f"pack {pack_id[:12]}: is {actual} bytes, the index records {pack.size} bytes",
                pack=pack_id,
            )
            result.errors.append(finding)
            for entry in pack.entries:
                if entry.offset + entry.length > actual and state.owns(pack_id, entry.digest):
                    state.mark_damaged(entry.digest, finding)

    for pack_id in sorted(set(state.present) - set(state.packs)):
        result.stats.packs_unreferenced += 1
        result.warnings.append(
            Finding(
                PACK_UNREFERENCED,
                (
                    f"pack {pack_id[:12]}: not named by any index (left by an interrupted run, uploaded by a "
                    "snapshot still running, or its index file is lost)"
                ),
                pack=pack_id,
            )
        )


def _size_or_none(repository: Repository, name: str) -> Optional[int]:
    try:
        return repository.backend.size(name)
    except ObjectNotFound:
        return None


def load_forgotten_ids(repository: Repository, result: VerifyResult) -> set[str]:
    """Return every snapshot id that a readable forget record lists."""
    forgotten: set[str] = set()
    for name in repository.backend.list(FORGOTTEN_PREFIX):
        record_id = name.split("/", 1)[1]
        try:
            ids = parse_forget_record(record_id, repository.backend.read(name), repository.sealer)
        except DAMAGE_ERRORS as exc:
            message = f"{exc}; chain links to the snapshots it lists cannot be excused"
            result.errors.append(Finding(FORGET_RECORD_DAMAGED, message, object=record_id))
            continue
        result.stats.forget_records += 1
        forgotten.update(ids)
    result.stats.forgotten_snapshots = len(forgotten)
    return forgotten


def parse_forget_record(record_id: str, stored: bytes, sealer: Sealer) -> list[str]:
    """Return the snapshot ids listed by one forget record; raise CorruptObject when damaged.

    A record is the sealed msgpack map {"version": 1, "time_ns": int, "snapshots":
    [{"id": hex, "previous": hex or None, "time_ns": int}], "reason": str}, stored as
    `forgotten/<BLAKE3 of the stored bytes>`.
    """
    what = f"forget record {record_id[:12]}"
    if blake3.blake3(stored).hexdigest() != record_id:
        raise CorruptObject(f"{what}: content does not match its name")
    plain = sealer.open(stored, what=what)
    try:
        body = msgpack.unpackb(plain)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptObject(f"{what}: cannot be parsed ({exc})") from exc
    if not isinstance(body, dict) or body.get("version") != FORGET_RECORD_VERSION:
        raise CorruptObject(f"{what}: not a version {FORGET_RECORD_VERSION} forget record")
    snapshots = body.get("snapshots")
    if not isinstance(snapshots, list):
        raise CorruptObject(f"{what}: has no snapshot list")
    ids = []
    for item in snapshots:
        snapshot_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(snapshot_id, str):
            raise CorruptObject(f"{what}: a snapshot item has no id string")
        ids.append(snapshot_id)
    return ids


def load_manifests(repository: Repository, state: RepositoryState, result: VerifyResult) -> set[str]:
    """Open and decode every manifest; return the ids of all stored manifests, valid or not.

    Valid manifests land in `state.manifests`, oldest first.
    """
    listed = repository.list_snapshot_ids()
    result.stats.snapshots = len(listed)
    for snapshot_id in listed:
        manifest = _load_manifest(repository, snapshot_id, result)
        if manifest is not None:
            state.manifests.append(manifest)
    state.manifests.sort(key=lambda m: (m.time_ns, m.id))
    result.stats.snapshots_valid = len(state.manifests)
    return set(listed)


def _load_manifest(repository: Repository, snapshot_id: str, result: VerifyResult) -> Optional[Manifest]:
    what = f"snapshot {snapshot_id[:12]}"
    try:
        plaintext = repository.sealer.open(repository.backend.read(f"{SNAPSHOTS_PREFIX}/{snapshot_id}"), what=what)
    except DAMAGE_ERRORS as exc:
        result.errors.append(Finding(MANIFEST_DAMAGED, f"{exc}", snapshot=snapshot_id))
        return None
    if repository.hasher.digest(plaintext).hex() != snapshot_id:
        result.errors.append(
            Finding(
                MANIFEST_ID_MISMATCH,
                f"{what}: manifest content does not match its id (the manifest was edited or replaced)",
                snapshot=snapshot_id,
            )
        )
        return None
    try:
        manifest = Manifest.decode(plaintext, snapshot_id)
    except DAMAGE_ERRORS as exc:
        result.errors.append(Finding(MANIFEST_DAMAGED, f"{exc}", snapshot=snapshot_id))
        return None
    if not isinstance(manifest.previous, (str, type(None))):
        result.errors.append(Finding(MANIFEST_DAMAGED, f"{what}: field `previous` is not an id string", snapshot=snapshot_id))
        return None
    return manifest


def check_chain(state: RepositoryState, listed: set[str], forgotten: set[str], result: VerifyResult) -> None:
    """Check every valid manifest's `previous` link, oldest first, so the first error is the first break."""
    valid = {manifest.id for manifest in state.manifests}
    for manifest in state.manifests:
        previous = manifest.previous
        if previous is None or previous in valid:
            continue
        what = f"snapshot {manifest.id[:12]} ({manifest.time_iso})"
        if previous in listed:
            message = (
                f"{what}: its previous snapshot {previous[:12]} exists but is damaged or edited "
                "(its content no longer matches its id)"
            )
        elif previous in forgotten:
            continue
        else:
            message = (
                f"{what}: its previous snapshot {previous[:12]} is missing and no forget record lists it "
                "(a manifest was deleted outside `casbak forget`)"
            )
        result.errors.append(Finding(CHAIN_BROKEN, message, snapshot=manifest.id, previous=previous))
