"""Per-file SHA-256 export: a SHA256SUMS file for `sha256sum -c`, or JSON records.

Paths are relative to the directory a user restores into with
`casbak restore SNAPSHOT --target DIR --path P`: a directory P restores its content
directly into DIR, and a single file P restores as DIR/<its name>. Running
`cd DIR && sha256sum -c SHA256SUMS` then checks the restored tree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

from casbak.catalog import lookup_path, walk
from casbak.manifest import Manifest
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FILE, Entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileDigest:
    """One regular file of a snapshot; `sha256` is None when the snapshot did not record it."""

    path: bytes
    size: int
    mtime_ns: int
    sha256: Optional[bytes]
    blake3: bytes
    computed: bool = False  # True when sha256 was computed from the stored chunks by the export


def iter_file_digests(
    repository: Repository, manifest: Manifest, path: str = "", compute_missing: bool = False
) -> Iterator[FileDigest]:
    """Yield every regular file below `path` of a snapshot, in the order `casbak ls` lists them.

    With `compute_missing`, a file without a recorded SHA-256 is read back from the
    repository (each chunk verified against its digest) and hashed.
    """
    top = lookup_path(repository, manifest.tree, path)
    if top.type == DIRECTORY:
        items: Iterator[tuple[bytes, Entry]] = walk(repository, top.subtree)
    else:
        items = iter([(top.name, top)])
    for relative, entry in items:
        if entry.type != FILE:
            continue
        sha256, computed = entry.sha256, False
        if sha256 is None and compute_missing:
            sha256, computed = _hash_stored_content(repository, entry), True
        yield FileDigest(relative, entry.size, entry.mtime_ns, sha256, entry.content, computed)


def _hash_stored_content(repository: Repository, entry: Entry) -> bytes:
    digest = hashlib.sha256()
    for chunk in repository.iter_objects(entry.chunks):
        digest.update(chunk)
    return digest.digest()


def escape_sums_name(name: bytes) -> tuple[bytes, bool]:
    """Escape a file name as GNU coreutils (tested with 9.1) does in checksum lines.

    Returns (escaped name, whether the line needs the leading backslash). A name with
    a backslash, a newline or a carriage return gets them written as `\\\\`, `\\n` and `\\r`,
    and its line starts with a backslash, so that `sha256sum -c`
    undoes them.
    """
    if not any(byte in name for byte in (b"\\", b"\n", b"\r")):
        return name, False
    escaped = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    return escaped, True


def sums_line(item: FileDigest) -> bytes:
    """Return one `sha256sum` line: hex digest, two spaces (text mode), path, newline."""
    name, escaped = escape_sums_name(item.path)
    return (b"\\" if escaped else b"") + item.sha256.hex().encode("ascii") + b"  " + name + b"\n"


def json_record(item: FileDigest, keyed_blake3: bool) -> dict:
    """Return the JSON form of one file; paths that are not UTF-8 show backslash escapes."""
    seconds, nanos = divmod(item.mtime_ns, 1_000_000_000)
    mtime = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return {
        "path": item.path.decode("utf-8", "backslashreplace"),
        "size": item.size,
        "mtime": f"{mtime}.{nanos:09d}Z",
        "mtime_ns": item.mtime_ns,
        "sha256": item.sha256.hex() if item.sha256 is not None else None,
        "sha256_source": _sha256_source(item),
        "blake3": item.blake3.hex(),
        "blake3_keyed": keyed_blake3,
    }


def _sha256_source(item: FileDigest) -> Optional[str]:
    if item.sha256 is None:
        return None
    return "computed" if item.computed else "snapshot"
