"""Snapshot manifests and the hash chain that links them.

A manifest is a msgpack map stored sealed under `snapshots/<id>`, where the id is the
repository's object digest of the manifest plaintext. Each manifest names the newest
manifest its writer saw (`previous`), so removing or editing a manifest in the middle of
history leaves a successor pointing at an id that no longer exists or no longer matches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import msgpack

from casbak.errors import CorruptObject

MANIFEST_VERSION = 1
# Manifests written by `casbak copy` carry `copied_from`. Readers of version 1 reject
# unknown keys, so those manifests get their own version and every other manifest
# keeps the exact version 1 encoding.
COPIED_MANIFEST_VERSION = 2


@dataclass
class Manifest:
    """The record of one snapshot. `time_ns` is UTC nanoseconds since the Unix epoch."""

    time_ns: int
    hostname: str
    username: str
    sources: list[str]
    tree: bytes
    program_version: str
    tags: list[str] = field(default_factory=list)
    parent: Optional[str] = None
    previous: Optional[str] = None
    partial: bool = False
    errors: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    # PII scan record (casbak.audit.pii.PiiScan.record_map): counts, paths and line
    # numbers, never matched values. None when the snapshot ran without a scan.
    pii: Optional[dict] = None
    copied_from: Optional[str] = None  # id of the source snapshot, set by `casbak copy`
    # Hex SHA-256 fingerprint of the Ed25519 signing key, and the signature over
    # signed_bytes(); both absent from unsigned manifests.
    signer: Optional[str] = None
    signature: Optional[bytes] = None
    id: str = ""  # not serialised: the digest of the encoded manifest

    @property
    def time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time_ns / 1e9, tz=dt.timezone.utc)

    @property
    def time_iso(self) -> str:
        seconds, nanos = divmod(self.time_ns, 1_000_000_000)
        base = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{nanos:09d}Z"

    def encode(self) -> bytes:
        body = asdict(self)
        body.pop("id")
        version = MANIFEST_VERSION
        if self.copied_from is None:
            body.pop("copied_from")
        else:
            version = COPIED_MANIFEST_VERSION
        for key in ("pii", "signer", "signature"):
            if body[key] is None:
                body.pop(key)
        body = {"version": version, "time": self.time_iso, **body}
        return msgpack.packb(body)

    def signed_bytes(self) -> bytes:
        """Return the bytes the signature covers: the encoding without the `signature` key.

        They include `previous`, `tree` and `signer`, so a signature binds the snapshot's
        content, its place in the hash chain and the key that made it.
        """
        return replace(self, signature=None).encode()

    @classmethod
    def decode(cls, data: bytes, snapshot_id: str) -> "Manifest":
        what = f"snapshot {snapshot_id[:12]}"
        try:
            body = msgpack.unpackb(data)
            version = body.pop("version")
            if version not in (MANIFEST_VERSION, COPIED_MANIFEST_VERSION):
                raise CorruptObject(f"{what}: unsupported manifest version {version!r}")
            if (version == COPIED_MANIFEST_VERSION) != isinstance(body.get("copied_from"), str):
                raise CorruptObject(f"{what}: manifest version {version} does not match its copied_from field")
            body.pop("time", None)
            manifest = cls(**body)
        except CorruptObject:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
            raise CorruptObject(f"{what}: manifest cannot be parsed ({exc})") from exc
        if not isinstance(manifest.tree, bytes) or not isinstance(manifest.time_ns, int):
            raise CorruptObject(f"{what}: manifest has an invalid tree or time field")
        manifest.id = snapshot_id
        return manifest

    def summary(self) -> dict:
        """Return a JSON-ready view of the manifest."""
        return {
            "id": self.id,
            "time": self.time_iso,
            "hostname": self.hostname,
            "username": self.username,
            "sources": self.sources,
            "tags": self.tags,
            "tree": self.tree.hex(),
            "parent": self.parent,
            "previous": self.previous,
            "partial": self.partial,
            "errors": self.errors,
            "stats": self.stats,
            "pii": self.pii,
            "program_version": self.program_version,
            "copied_from": self.copied_from,
            "signer": self.signer,
        }
