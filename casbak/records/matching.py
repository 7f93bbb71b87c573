"""Match the records of two versions of a file with memory bounded per record, not per byte.

The first pass over the old version keeps one map entry per record. With a key, the
map goes from the canonical JSON of the key value to an int that packs the 128-bit
content digest with the record number. Without a key, it is a multiset of content
digests. The pass over the new version consumes that map. Records are never kept, except the few that a
final re-read collects for field-level details.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Optional

from casbak.records.model import RecordChange, RecordDiff, RecordLimits, RecordRef
from casbak.records.structure import MISSING, canonical_json, diff_values, lookup_key, record_digest, swapped_fields

log = logging.getLogger(__name__)

RecordSource = Callable[[], Iterable[Any]]

# Record numbers take the low 40 bits of a packed map value, so a file may hold up
# to about 10^12 records.
_NUMBER_BITS = 40
_NUMBER_MASK = (1 << _NUMBER_BITS) - 1


def _pack(digest: int, number: int) -> int:
    return (digest << _NUMBER_BITS) | number


def _unpack(value: int) -> tuple[int, int]:
    return value >> _NUMBER_BITS, value & _NUMBER_MASK


class _KeyNamer:
    """Turn key values into map keys; repeated keys get an occurrence suffix so they pair up in order."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.repeated: set[str] = set()
        # NOTE: this counter costs one more string per record. A compact form would keep
        # only keys that occur twice, but finding those takes one more pass.
        self._occurrences: Counter[str] = Counter()

    def name(self, record: Any) -> Optional[str]:
        value = lookup_key(record, self.field)
        if value is MISSING:
            return None
        base = canonical_json(value)
        self._occurrences[base] += 1
        count = self._occurrences[base]
        if count == 1:
            return base
        self.repeated.add(base)
        return f"{base}\x00{count}"


def _key_value(name: str) -> Any:
    return json.loads(name.split("\x00", 1)[0])


def _numbered(source: RecordSource) -> Iterator[tuple[int, Any]]:
    return enumerate(source(), start=1)


def match_records(
    read_old: RecordSource, read_new: RecordSource, key: Optional[str], limits: RecordLimits = RecordLimits()
) -> RecordDiff:
    """Compare two record streams; each source must return a fresh iterator on every call."""
    if key:
        return _match_by_key(read_old, read_new, key, limits)
    return _match_by_content(read_old, read_new, limits)


def _match_by_content(read_old: RecordSource, read_new: RecordSource, limits: RecordLimits) -> RecordDiff:
    result = RecordDiff(key=None)
    remaining: Counter[int] = Counter()
    for result.old_count, record in _numbered(read_old):
        remaining[record_digest(record)] += 1
    for result.new_count, record in _numbered(read_new):
        digest = record_digest(record)
        if remaining[digest] > 0:
            remaining[digest] -= 1
        else:
            result.added += 1
            _append_capped(result, result.added_records, RecordRef(None, result.new_count), limits)
    result.removed = sum(remaining.values())
    if result.removed:
        _find_removed_by_content(read_old, remaining, result, limits)
    return result


def _find_removed_by_content(read_old: RecordSource, remaining: Counter, result: RecordDiff, limits: RecordLimits) -> None:
    # The multiset does not say where the leftovers sit, so a second pass finds their numbers.
    target_count = min(result.removed, limits.listed)
    for number, record in _numbered(read_old):
        if len(result.removed_records) >= target_count:
            break
        digest = record_digest(record)
        if remaining.get(digest, 0) > 0:
            remaining[digest] -= 1
            result.removed_records.append(RecordRef(None, number))
    result.truncated = result.truncated or result.removed > len(result.removed_records)


def _match_by_key(read_old: RecordSource, read_new: RecordSource, key: str, limits: RecordLimits) -> RecordDiff:
    result = RecordDiff(key=key)
    old_namer = _KeyNamer(key)
    by_key: dict[str, int] = {}
    unkeyed: Counter[int] = Counter()
    for result.old_count, record in _numbered(read_old):
        name = old_namer.name(record)
        if name is None:
            result.without_key += 1
            unkeyed[record_digest(record)] += 1
        else:
            by_key[name] = _pack(record_digest(record), result.old_count)
    result.duplicate_keys = len(old_namer.repeated)

    new_namer = _KeyNamer(key)
    changed_names: list[tuple[str, int, int]] = []
    # The new side of the first changed records is kept now, so only the old version
    # needs a second read for details.
    new_records: dict[int, Any] = {}
    for result.new_count, record in _numbered(read_new):
        name = new_namer.name(record)
        digest = record_digest(record)
        if name is None:
            result.without_key += 1
            if unkeyed[digest] > 0:
                unkeyed[digest] -= 1
            else:
                result.added += 1
                _append_capped(result, result.added_records, RecordRef(None, result.new_count), limits)
            continue
        packed = by_key.pop(name, None)
        if packed is None:
            result.added += 1
            _append_capped(result, result.added_records, RecordRef(_key_value(name), result.new_count), limits)
            continue
        old_digest, old_number = _unpack(packed)
        if old_digest != digest:
            result.changed += 1
            if len(new_records) < limits.details:
                new_records[result.new_count] = record
            if len(changed_names) < limits.listed:
                changed_names.append((name, old_number, result.new_count))
            else:
                result.truncated = True
    result.duplicate_keys = max(result.duplicate_keys, len(new_namer.repeated))

    for name, packed in by_key.items():
        result.removed += 1
        _append_capped(result, result.removed_records, RecordRef(_key_value(name), _unpack(packed)[1]), limits)
    unkeyed_removed = sum(unkeyed.values())
    if unkeyed_removed:
        # NOTE: records without the key field that were removed are counted but not listed.
        result.removed += unkeyed_removed
        result.truncated = True
    result.changed_records = [RecordChange(_key_value(n), old, new) for n, old, new in changed_names]
    _fill_details(read_old, new_records, result, limits)
    return result


def _append_capped(result: RecordDiff, target: list[RecordRef], ref: RecordRef, limits: RecordLimits) -> None:
    if len(target) < limits.listed:
        target.append(ref)
    else:
        result.truncated = True


def _fill_details(read_old: RecordSource, new_records: dict[int, Any], result: RecordDiff, limits: RecordLimits) -> None:
    """Re-read the old version to collect the first changed records and name their changed fields."""
    chosen = result.changed_records[: limits.details]
    if len(result.changed_records) > limits.details:
        result.truncated = True
    if not chosen:
        return
    old_records = _collect(read_old, {change.old_number for change in chosen})
    for change in chosen:
        old, new = old_records[change.old_number], new_records[change.new_number]
        change.fields = diff_values(old, new)
        change.swapped = swapped_fields(old, new, list(_changed_top_level(old, new)))
    log.debug("re-read the old version for the details of %d changed records", len(chosen))


def _collect(source: RecordSource, numbers: set[int]) -> dict[int, Any]:
    found: dict[int, Any] = {}
    last = max(numbers)
    for number, record in _numbered(source):
        if number in numbers:
            found[number] = record
        if number >= last:
            break
    return found


def _changed_top_level(old: Any, new: Any) -> Iterator[str]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    for name in set(old) | set(new):
        if name not in old or name not in new or canonical_json(old[name]) != canonical_json(new[name]):
            yield name
