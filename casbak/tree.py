"""Tree objects: one directory's entries, serialised canonically so equal trees hash equally.

A tree is the msgpack map {"version": 1, 2 or 3, "entries": [entry, ...]} with entries sorted
by their raw name bytes. Each entry is a map whose keys appear in the fixed order of
ENTRY_FIELDS, holding only the fields of its type. Names and symlink targets are raw
bytes, so names that are not valid UTF-8 survive unchanged. No floats are stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import msgpack

from casbak.errors import CorruptObject

TREE_VERSION = 1
# Trees in which some file entry carries `sha256`. Readers of version 1 reject unknown
# entry fields, so those trees get their own version, and trees without the field keep
# the exact version 1 encoding (and digest).
SHA256_TREE_VERSION = 2
# Trees in which some file entry carries `etag` (files of remote sources). They may also
# carry `sha256`. Trees without `etag` keep their version 1 or 2 encoding and digest.
ETAG_TREE_VERSION = 3
TREE_VERSIONS = (TREE_VERSION, SHA256_TREE_VERSION, ETAG_TREE_VERSION)

FILE = "file"
DIRECTORY = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
CHAR_DEVICE = "chardev"
BLOCK_DEVICE = "blockdev"
ENTRY_TYPES = (FILE, DIRECTORY, SYMLINK, FIFO, CHAR_DEVICE, BLOCK_DEVICE)

# Serialisation order of entry fields; fields that are None are left out.
ENTRY_FIELDS = (
    "name", "type", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "inode",
    "size", "content", "chunks", "subtree", "target", "rdev", "sha256", "etag",
)


@dataclass
class Entry:
    """One name in a directory with its metadata and content references.

    `mode` contains the permission bits only (st_mode & 0o7777). For files, `chunks` lists
    the chunk digests in order and `content` is the digest of the whole file content
    (the repository's hash function over all bytes), checked on every restore.
    """

    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: Optional[int] = None
    inode: Optional[int] = None
    size: Optional[int] = None
    content: Optional[bytes] = None
    chunks: Optional[list[bytes]] = None
    subtree: Optional[bytes] = None
    target: Optional[bytes] = None
    rdev: Optional[int] = None
    # SHA-256 of the whole file content, recorded when the repository's `file_sha256`
    # setting is on, so that auditors can check restored files with sha256sum.
    sha256: Optional[bytes] = None
    # Entity tag that an object store reported for a remote source's file (S3 `ETag`, GCS
    # `etag`), kept only so that the next snapshot can skip the unchanged object.
    etag: Optional[str] = None

    def to_wire(self) -> dict:
        wire = {}
        for key in ENTRY_FIELDS:
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        return wire

    @classmethod
    def from_wire(cls, wire: dict) -> "Entry":
        unknown = set(wire) - set(ENTRY_FIELDS)
        if unknown:
            raise CorruptObject(f"tree entry: unknown fields {sorted(unknown)}")
        entry = cls(**wire)
        # Type checks instead of bytes() conversions: bytes(2**40) of a forged integer
        # would try to allocate a terabyte.
        if not isinstance(entry.name, bytes):
            raise CorruptObject(f"tree entry: name {entry.name!r:.40} is not a byte string")
        if entry.chunks is not None and (
            not isinstance(entry.chunks, list) or not all(isinstance(c, bytes) for c in entry.chunks)
        ):
            raise CorruptObject(f"entry {entry.name!r}: chunks is not a list of digests")
        _check_entry(entry)
        return entry


@dataclass
class Tree:
    """A directory listing; `entries` is kept sorted by name bytes when encoded."""

    entries: list[Entry] = field(default_factory=list)

    def encode(self) -> bytes:
        ordered = sorted(self.entries, key=lambda e: e.name)
        _check_unique(ordered)
        return msgpack.packb({"version": _tree_version(ordered), "entries": [e.to_wire() for e in ordered]})

    @classmethod
    def decode(cls, data: bytes, what: str = "tree") -> "Tree":
        try:
            body = msgpack.unpackb(data, strict_map_key=True)
            if not isinstance(body, dict) or body.get("version") not in TREE_VERSIONS:
                raise CorruptObject(f"{what}: not a version {', '.join(map(str, TREE_VERSIONS))} tree")
            entries = [Entry.from_wire(wire) for wire in body["entries"]]
            if body["version"] != _tree_version(entries):
                raise CorruptObject(f"{what}: tree version {body['version']} does not match its sha256 and etag fields")
        except CorruptObject as exc:
            raise CorruptObject(f"{what}: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            raise CorruptObject(f"{what}: cannot be parsed ({exc})") from exc
        names = [e.name for e in entries]
        if names != sorted(names):
            raise CorruptObject(f"{what}: entries are not sorted by name")
        _check_unique(entries, what)
        return cls(entries)

    def find(self, name: bytes) -> Optional[Entry]:
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


def _tree_version(entries: list[Entry]) -> int:
    if any(e.etag is not None for e in entries):
        return ETAG_TREE_VERSION
    if any(e.sha256 is not None for e in entries):
        return SHA256_TREE_VERSION
    return TREE_VERSION


def _check_unique(entries: list[Entry], what: str = "tree") -> None:
    for previous, current in zip(entries, entries[1:]):
        if previous.name == current.name:
            raise CorruptObject(f"{what}: duplicate entry name {current.name!r}")


def _check_entry(entry: Entry) -> None:
    """Reject entries a restore could misuse: path separators, '.', '..', wrong fields."""
    if not entry.name or entry.name in (b".", b"..") or b"/" in entry.name or b"\x00" in entry.name:
        raise CorruptObject(f"invalid entry name {entry.name!r}")
    if entry.type not in ENTRY_TYPES:
        raise CorruptObject(f"entry {entry.name!r}: unknown type {entry.type!r}")
    integers = [entry.mode, entry.uid, entry.gid, entry.mtime_ns]
    if any(not isinstance(v, int) for v in integers):
        raise CorruptObject(f"entry {entry.name!r}: metadata fields must be integers")
    if entry.sha256 is not None and (entry.type != FILE or not isinstance(entry.sha256, bytes) or len(entry.sha256) != 32):
        raise CorruptObject(f"entry {entry.name!r}: sha256 must be a 32-byte digest of a file's content")
    if entry.etag is not None and (entry.type != FILE or not isinstance(entry.etag, str) or not entry.etag):
        raise CorruptObject(f"entry {entry.name!r}: etag must be a non-empty string on a file entry")
    if entry.type == FILE:
        if not isinstance(entry.size, int) or entry.chunks is None or not isinstance(entry.content, bytes):
            raise CorruptObject(f"entry {entry.name!r}: file without size, chunks or content hash")
    elif entry.type == DIRECTORY:
        if not isinstance(entry.subtree, bytes):
            raise CorruptObject(f"entry {entry.name!r}: directory without subtree")
    elif entry.type == SYMLINK:
        if not isinstance(entry.target, bytes):
            raise CorruptObject(f"entry {entry.name!r}: symlink without target")
        # symlink(2) rejects both, and restore would fail with a bare OSError or ValueError.
        if not entry.target or b"\x00" in entry.target:
            raise CorruptObject(f"entry {entry.name!r}: symlink target is empty or contains a NUL byte")
