"""Pack files: many sealed objects of one kind in one stored file.

Layout:

    sealed object 0 | sealed object 1 | ... | sealed pack header | u32 LE header length

The pack header is a sealed msgpack map {"version": 1, "type": "data" | "tree",
"objects": [[digest, offset, length, raw_length], ...]}, where offset and length locate
the sealed object in the pack and raw_length is its plaintext size. The header lets an
index be rebuilt from the packs alone. A pack is named by the unkeyed BLAKE3-256 of its
whole content, so its integrity can be checked without any key.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union

import blake3
import msgpack

from casbak.errors import CorruptObject
from casbak.store.objects import ROLE_PACK_HEADER, Sealer

PACK_VERSION = 1
KIND_DATA = "data"
KIND_TREE = "tree"
KINDS = (KIND_DATA, KIND_TREE)
TRAILER = struct.Struct("<I")
DIGEST_SIZE = 32

# Room above the pack size for the object that fills a pack and for the pack header, so
# that a buffer sized for one pack rarely has to grow.
BUFFER_SLACK = 2 * 1024 * 1024


@dataclass(frozen=True)
class PackEntry:
    """Location of one object in a pack: digest, offset, stored length, plaintext length."""

    digest: bytes
    offset: int
    length: int
    raw_length: int


class PackBuffer:
    """A growable byte buffer in anonymous memory, meant to be reused for pack after pack.

    A fresh 16 MiB buffer per pack costs about 4,000 page faults, each a page the kernel
    must zero. With one pack per 16 MiB of new data, that was a large share of a
    snapshot's system time. A reused mapping keeps its pages, and pages that are never
    written (a tree pack that stays small) never become resident.
    """

    def __init__(self, capacity: int) -> None:
        self._map = mmap.mmap(-1, max(capacity, mmap.PAGESIZE))
        self.used = 0

    def __len__(self) -> int:
        return self.used

    @property
    def capacity(self) -> int:
        return len(self._map)

    def append(self, data: Union[bytes, bytearray, memoryview]) -> None:
        end = self.used + len(data)
        if end > len(self._map):
            self._grow(end)
        self._map[self.used : end] = data
        self.used = end

    def view(self) -> memoryview:
        """Return the written bytes; release the view before the buffer is reused."""
        return memoryview(self._map)[: self.used]

    def digest(self) -> str:
        with self.view() as data:
            return blake3.blake3(data).hexdigest()

    def clear(self) -> None:
        self.used = 0

    def _grow(self, needed: int) -> None:
        bigger = mmap.mmap(-1, max(needed, 2 * len(self._map)))
        with memoryview(self._map) as old:
            bigger[: self.used] = old[: self.used]
        self._map.close()
        self._map = bigger


class StagedWrite(Protocol):
    """A file being written in the store (casbak.store.backend.StagedFile)."""

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None: ...

    def discard(self) -> None: ...


class StagedPack:
    """Pack bytes streamed into a staged file of the store and hashed as they arrive.

    Local repositories build packs this way: no pack is held in memory, and each object
    is copied once, into the page cache. The file is opened on the first append, so a
    pack that never gets an object leaves nothing behind.
    """

    def __init__(self, open_file: Callable[[], StagedWrite]) -> None:
        self._open_file = open_file
        self.file: Optional[StagedWrite] = None
        self._hasher = blake3.blake3()
        self.used = 0

    def __len__(self) -> int:
        return self.used

    def append(self, data: Union[bytes, bytearray, memoryview]) -> None:
        if self.file is None:
            self.file = self._open_file()
        self.file.write(data)
        self._hasher.update(data)
        self.used += len(data)

    def digest(self) -> str:
        return self._hasher.hexdigest()

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


class PackSink(Protocol):
    """The destination of a PackBuilder's bytes: a PackBuffer or a StagedPack."""

    def __len__(self) -> int: ...

    def append(self, data: Union[bytes, bytearray, memoryview]) -> None: ...

    def digest(self) -> str: ...


@dataclass
class PackBuilder:
    """Accumulates sealed objects of one kind until the pack is large enough to upload.

    The bytes go into `sink`: a PackBuffer in memory, which a writer may take from a
    pool and hand back after the upload, or a StagedPack file (see ObjectWriter).
    Without one, the builder makes its own PackBuffer.
    """

    kind: str
    sink: Optional[PackSink] = None
    entries: list[PackEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.sink is None:
            self.sink = PackBuffer(mmap.PAGESIZE)

    def add(self, digest: bytes, sealed: bytes, raw_length: int) -> None:
        self.add_parts(digest, (sealed,), raw_length)

    def add_parts(self, digest: bytes, parts: Sequence[bytes], raw_length: int) -> None:
        """Add one sealed object given as consecutive parts (see Sealer.seal_parts)."""
        offset = len(self.sink)
        for part in parts:
            self.sink.append(part)
        self.entries.append(PackEntry(digest, offset, len(self.sink) - offset, raw_length))

    def __len__(self) -> int:
        return len(self.sink)

    def complete(self, sealer: Sealer) -> str:
        """Append the sealed header and the trailer; return the pack id."""
        header = {
            "version": PACK_VERSION,
            "type": self.kind,
            "objects": [[e.digest, e.offset, e.length, e.raw_length] for e in self.entries],
        }
        sealed_header = sealer.seal(msgpack.packb(header), role=ROLE_PACK_HEADER)
        self.sink.append(sealed_header)
        self.sink.append(TRAILER.pack(len(sealed_header)))
        return self.sink.digest()

    def finish(self, sealer: Sealer) -> tuple[str, memoryview]:
        """Complete a pack built in memory; return (pack id, pack bytes).

        The returned view points into the builder's PackBuffer, not at a copy: a copy
        would double the memory of every pack waiting for upload. It is valid until the
        buffer is cleared for the next pack.
        """
        if not isinstance(self.sink, PackBuffer):
            raise TypeError("finish() needs a pack built in memory; use complete() for a staged pack")
        pack_id = self.complete(sealer)
        return pack_id, self.sink.view()


def pack_path(kind: str, pack_id: str) -> str:
    """Return the store name of a pack; chunk and tree packs live under separate prefixes."""
    return f"{kind}/{pack_id[:2]}/{pack_id}"


def entry_from_wire(item: object) -> PackEntry:
    """Build a PackEntry from its msgpack form [digest, offset, length, raw_length].

    Raises ValueError on any other shape, for the caller to wrap in CorruptObject.
    Plain bytes() and int() calls would accept forged values: bytes(2**40) allocates a
    terabyte and int(float("inf")) raises OverflowError.
    """
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise ValueError("an object entry is not a list of 4 items")
    digest, offset, length, raw_length = item
    if not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE:
        raise ValueError(f"an object digest is not {DIGEST_SIZE} bytes")
    for value in (offset, length, raw_length):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"object {digest.hex()[:12]}: offset and lengths must be non-negative integers")
    return PackEntry(digest, offset, length, raw_length)


def parse_pack_header(pack_id: str, tail: bytes, pack_size: int, sealer: Sealer) -> tuple[str, list[PackEntry]]:
    """Parse the header from the last bytes of a pack (tail must include the trailer).

    Returns (kind, entries) and raises CorruptObject when the header is damaged or
    points outside the pack.
    """
    what = f"pack {pack_id[:12]}"
    if len(tail) < TRAILER.size:
        raise CorruptObject(f"{what}: too short for a header trailer")
    (header_length,) = TRAILER.unpack(tail[-TRAILER.size :])
    if header_length + TRAILER.size > min(len(tail), pack_size):
        raise CorruptObject(f"{what}: header length {header_length} exceeds the pack")
    sealed = tail[-TRAILER.size - header_length : -TRAILER.size]
    plain = sealer.open(sealed, what=f"{what} header", role=ROLE_PACK_HEADER)
    try:
        header = msgpack.unpackb(plain)
        kind = header["type"]
        entries = [entry_from_wire(item) for item in header["objects"]]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptObject(f"{what}: header cannot be parsed ({exc})") from exc
    if header.get("version") != PACK_VERSION or kind not in KINDS:
        raise CorruptObject(f"{what}: header has version {header.get('version')!r} type {kind!r}")
    limit = pack_size - TRAILER.size - header_length
    for entry in entries:
        if entry.offset < 0 or entry.length < 0 or entry.offset + entry.length > limit:
            raise CorruptObject(f"{what}: object {entry.digest.hex()[:12]} lies outside the pack")
    return kind, entries
