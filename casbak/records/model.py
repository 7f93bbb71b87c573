"""Typed results of a content diff: config keys, records, and byte ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# KeyChange.status values
KEY_ADDED = "added"
KEY_REMOVED = "removed"
KEY_CHANGED = "changed"


@dataclass
class KeyChange:
    """One changed value inside a document or record, at a dotted path such as `data.files[2]`."""

    path: str
    status: str
    old: Any = None
    new: Any = None


@dataclass
class RecordRef:
    """A record named by its key value (None without a key) and 1-based number in its file."""

    key: Any
    number: int


@dataclass
class RecordChange:
    """A record whose key exists in both versions but whose content differs."""

    key: Any
    old_number: int
    new_number: int
    fields: list[KeyChange] = field(default_factory=list)
    swapped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RecordDiff:
    """Record counts of two versions of a file, and the records that differ.

    Counts are exact. The `*_records` lists stop at the listing limit and `details`
    at the detail limit; `truncated` is True when either limit cut something off.
    """

    key: Optional[str]
    old_count: int = 0
    new_count: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    without_key: int = 0
    duplicate_keys: int = 0
    added_records: list[RecordRef] = field(default_factory=list)
    removed_records: list[RecordRef] = field(default_factory=list)
    changed_records: list[RecordChange] = field(default_factory=list)
    schema: list[KeyChange] = field(default_factory=list)
    truncated: bool = False

    @property
    def unchanged(self) -> int:
        return self.new_count - self.added - self.changed


@dataclass
class ByteDiff:
    """A chunk-level comparison of two versions of a file; offsets and sizes in bytes.

    Ranges are half-open [start, end) and only as exact as the chunk boundaries: a
    one-byte edit shows as the whole chunk (or two) that contains it.
    """

    old_size: int
    new_size: int
    old_chunks: int
    new_chunks: int
    shared_chunks: int
    bytes_added: int
    bytes_removed: int
    added_ranges: list[tuple[int, int]] = field(default_factory=list)
    removed_ranges: list[tuple[int, int]] = field(default_factory=list)
    ranges_truncated: bool = False


@dataclass
class ContentDiff:
    """The changes inside one modified file. Exactly one of records, keys or bytes is set."""

    format: str
    records: Optional[RecordDiff] = None
    keys: Optional[list[KeyChange]] = None
    bytes: Optional[ByteDiff] = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RecordLimits:
    """How much detail a content diff keeps; counts are always exact.

    `listed` caps each list of added, removed and changed record references and
    `details` caps how many changed records are re-read for their field changes.
    """

    listed: int = 1000
    details: int = 50
    ranges: int = 50
