"""Snapshot manifests and the hash chain that links them.

A manifest is a msgpack map stored sealed under `snapshots/<id>`, where the id is the
repository's object digest of the manifest plaintext. Each manifest names the newest
manifest its writer saw (`previous`), so removing or editing a manifest in the middle of
history leaves a successor pointing at an id that no longer exists or no longer matches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Optional

import msgpack

from casbak.errors import CorruptObject

MANIFEST_VERSION = 1


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
        body = {"version": MANIFEST_VERSION, "time": self.time_iso, **body}
        return msgpack.packb(body)

    @classmethod
    def decode(cls, data: bytes, snapshot_id: str) -> "Manifest":
        what = f"snapshot {snapshot_id[:12]}"
        try:
            body = msgpack.unpackb(data)
            if body.pop("version") != MANIFEST_VERSION:
                raise CorruptObject(f"{what}: unsupported manifest version")
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
            "program_version": self.program_version,
        }
