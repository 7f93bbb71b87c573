"""Typed results of `verify`: findings, the files they affect, counters, and the JSON form.

The JSON form is a stable interface for monitoring scripts: every finding carries every
key of FINDING_KEYS, with null where a key does not apply to its kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

# Finding kinds. Errors mean data is damaged or missing; warnings mean leftovers.
INDEX_DAMAGED = "index_damaged"
PACK_MISSING = "pack_missing"
PACK_SIZE_MISMATCH = "pack_size_mismatch"
PACK_HASH_MISMATCH = "pack_hash_mismatch"
PACK_HEADER_DAMAGED = "pack_header_damaged"
PACK_HEADER_MISMATCH = "pack_header_mismatch"
PACK_UNREFERENCED = "pack_unreferenced"
OBJECT_MISSING = "object_missing"
OBJECT_DAMAGED = "object_damaged"
TREE_DAMAGED = "tree_damaged"
MANIFEST_DAMAGED = "manifest_damaged"
MANIFEST_ID_MISMATCH = "manifest_id_mismatch"
CHAIN_BROKEN = "chain_broken"
FORGET_RECORD_DAMAGED = "forget_record_damaged"
RESTORE_FAILED = "restore_failed"
FILE_MISMATCH = "file_mismatch"

FINDING_KEYS = ("kind", "snapshot", "previous", "index", "pack", "object", "path", "message", "affected")

# A finding lists at most this many affected (snapshot, path) pairs, so one lost pack cannot
# turn the report into millions of lines. `affected_total` keeps the full count.
MAX_AFFECTED = 1000


@dataclass(frozen=True)
class Affected:
    """One file or directory of one snapshot that depends on damaged or missing data."""

    snapshot: str
    path: str


@dataclass
class Finding:
    """One problem found by verify. Ids are full lowercase hex strings."""

    kind: str
    message: str
    snapshot: Optional[str] = None
    previous: Optional[str] = None
    index: Optional[str] = None
    pack: Optional[str] = None
    object: Optional[str] = None
    path: Optional[str] = None
    affected: list[Affected] = field(default_factory=list)
    affected_total: int = 0

    def add_affected(self, item: Affected) -> None:
        self.affected_total += 1
        if len(self.affected) < MAX_AFFECTED:
            self.affected.append(item)

    def to_dict(self) -> dict[str, Any]:
        body = {key: getattr(self, key) for key in FINDING_KEYS if key != "affected"}
        body["affected"] = [asdict(item) for item in self.affected]
        body["affected_total"] = self.affected_total
        return body


@dataclass
class VerifyStats:
    """Counters of one verify run; sizes in bytes, durations in seconds."""

    snapshots: int = 0
    snapshots_valid: int = 0
    forget_records: int = 0
    forgotten_snapshots: int = 0
    index_files: int = 0
    index_files_damaged: int = 0
    packs_indexed: int = 0
    packs_in_backend: int = 0
    packs_unreferenced: int = 0
    objects_indexed: int = 0
    trees_checked: int = 0
    entries_checked: int = 0
    chunk_references: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    objects_read: int = 0
    duration_seconds: float = 0.0


@dataclass
class DrillStats:
    """Counters of one restore drill."""

    snapshot: str = ""
    files_checked: int = 0
    files_not_restored: int = 0
    bytes_checked: int = 0
    duration_seconds: float = 0.0


@dataclass
class VerifyResult:
    """Everything one verify run found; `ok` is True when there is no error."""

    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    stats: VerifyStats = field(default_factory=VerifyStats)
    drill: Optional[DrillStats] = None
    # Set by `verify --ledger`: the chain or signature error earliest in chain order.
    first_broken_link: Optional[Finding] = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": [finding.to_dict() for finding in self.errors],
            "warnings": [finding.to_dict() for finding in self.warnings],
            "stats": asdict(self.stats),
            "drill": asdict(self.drill) if self.drill is not None else None,
            "first_broken_link": self.first_broken_link.to_dict() if self.first_broken_link is not None else None,
        }
