"""The index: object digest -> (pack, offset, length, plaintext length).

Index files are sealed msgpack maps:

    {"version": 1, "packs": [{"id": <32 bytes>, "type": "data" | "tree", "size": int,
                              "objects": [[digest, offset, length, raw_length], ...]}]}

Each is named by the unkeyed BLAKE3-256 of its stored bytes under `index/`. Several
index files may name the same object; any of them is valid, so a reader keeps the
first it loads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import blake3
import msgpack

from casbak.errors import CorruptObject
from casbak.store.objects import ROLE_INDEX, Sealer
from casbak.store.packs import DIGEST_SIZE, KINDS, PackEntry, entry_from_wire

INDEX_VERSION = 1


@dataclass(frozen=True)
class PackInfo:
    """One pack as an index file describes it."""

    pack_id: str
    kind: str
    size: int
    entries: tuple[PackEntry, ...]


@dataclass(frozen=True)
class Location:
    """Location of a stored object: its pack, the pack kind, and its offset and lengths."""

    pack_id: str
    kind: str
    offset: int
    length: int
    raw_length: int


class Index:
    """In-memory map of every indexed object, safe to read and extend from many threads.

    NOTE: memory is about 250 bytes per object in CPython dicts and tuples; a compact
    sorted-array form would cut that by 4x for repositories of tens of millions of chunks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[bytes, tuple[int, int, int, int]] = {}
        self._packs: list[tuple[str, str, int]] = []
        self._pack_numbers: dict[str, int] = {}

    def add_pack(self, pack: PackInfo) -> None:
        with self._lock:
            number = self._pack_numbers.get(pack.pack_id)
            if number is None:
                number = len(self._packs)
                self._packs.append((pack.pack_id, pack.kind, pack.size))
                self._pack_numbers[pack.pack_id] = number
            for entry in pack.entries:
                self._objects.setdefault(entry.digest, (number, entry.offset, entry.length, entry.raw_length))

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def lookup(self, digest: bytes) -> Optional[Location]:
        found = self._objects.get(digest)
        if found is None:
            return None
        number, offset, length, raw_length = found
        pack_id, kind, _size = self._packs[number]
        return Location(pack_id, kind, offset, length, raw_length)

    def packs(self) -> list[tuple[str, str, int]]:
        """Return (pack id, kind, size) of every indexed pack."""
        with self._lock:
            return list(self._packs)

    def digests(self) -> Iterator[bytes]:
        return iter(list(self._objects))


def encode_index(packs: Iterable[PackInfo], sealer: Sealer) -> tuple[str, bytes]:
    """Return (index file id, sealed bytes) for a list of packs."""
    body = {
        "version": INDEX_VERSION,
        "packs": [
            {
                "id": bytes.fromhex(pack.pack_id),
                "type": pack.kind,
                "size": pack.size,
                "objects": [[e.digest, e.offset, e.length, e.raw_length] for e in pack.entries],
            }
            for pack in packs
        ],
    }
    sealed = sealer.seal(msgpack.packb(body), role=ROLE_INDEX)
    return blake3.blake3(sealed).hexdigest(), sealed


def decode_index(index_id: str, sealed: bytes, sealer: Sealer) -> list[PackInfo]:
    """Parse one index file; raise CorruptObject when it is damaged."""
    what = f"index {index_id[:12]}"
    if blake3.blake3(sealed).hexdigest() != index_id:
        raise CorruptObject(f"{what}: content does not match its name")
    plain = sealer.open(sealed, what=what, role=ROLE_INDEX)
    try:
        body = msgpack.unpackb(plain)
        if body["version"] != INDEX_VERSION:
            raise CorruptObject(f"{what}: unsupported index version {body['version']!r}")
        packs = []
        for item in body["packs"]:
            kind = item["type"]
            if kind not in KINDS:
                raise CorruptObject(f"{what}: unknown pack type {kind!r}")
            pack_id, size = item["id"], item["size"]
            if not isinstance(pack_id, bytes) or len(pack_id) != DIGEST_SIZE:
                raise CorruptObject(f"{what}: a pack id is not {DIGEST_SIZE} bytes")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise CorruptObject(f"{what}: pack {pack_id.hex()[:12]} has an invalid size {size!r}")
            entries = tuple(entry_from_wire(entry) for entry in item["objects"])
            packs.append(PackInfo(pack_id.hex(), kind, size, entries))
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptObject(f"{what}: cannot be parsed ({exc})") from exc
    return packs
