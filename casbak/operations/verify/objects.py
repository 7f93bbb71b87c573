"""Verified object reads against the index that verify built itself."""

from __future__ import annotations

from casbak.errors import CorruptObject, IntegrityError, ObjectNotFound, UnsupportedFormat
from casbak.store.index import Index
from casbak.store.packs import PackEntry, pack_path
from casbak.store.repository import Repository

# Errors that mean stored bytes are damaged. UnsupportedFormat belongs here because the
# repository's format version was accepted at open, so a sealed object with another
# format version byte is most likely altered rather than written by a newer casbak.
DAMAGE_ERRORS = (IntegrityError, UnsupportedFormat)


def read_object(repository: Repository, index: Index, digest: bytes) -> bytes:
    """Return an object's plaintext after checking its length, seal and digest."""
    location = index.lookup(digest)
    if location is None:
        raise ObjectNotFound(f"object {digest.hex()[:12]}: not in any index")
    end = location.offset + location.length
    sealed = repository.backend.read(pack_path(location.kind, location.pack_id), location.offset, end)
    entry = PackEntry(digest, location.offset, location.length, location.raw_length)
    return open_entry(repository, location.pack_id, entry, sealed)


def open_entry(repository: Repository, pack_id: str, entry: PackEntry, sealed: bytes) -> bytes:
    """Open the sealed bytes of one pack entry; raise CorruptObject unless they match the entry."""
    what = f"object {entry.digest.hex()[:12]} in pack {pack_id[:12]}"
    if len(sealed) != entry.length:
        raise CorruptObject(f"{what}: read {len(sealed)} bytes, the index records {entry.length} (the pack is truncated)")
    plaintext = repository.sealer.open(sealed, expected_size=entry.raw_length, what=what)
    if repository.hasher.digest(plaintext) != entry.digest:
        raise CorruptObject(f"{what}: content does not match its digest")
    return plaintext
