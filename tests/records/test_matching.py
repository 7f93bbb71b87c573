"""Record matching against a brute-force comparison of whole record lists."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.records.matching import match_records
from casbak.records.model import RecordLimits

RECORDS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"id": st.integers(0, 6), "v": st.integers(0, 2)}),
        st.fixed_dictionaries({"v": st.integers(0, 2)}),  # a record without the key field
    ),
    max_size=12,
)


def _by_occurrence(records: list[dict]) -> dict[tuple, dict]:
    """Name keyed records (id, n) where n counts earlier records with the same id."""
    seen: Counter = Counter()
    named = {}
    for record in records:
        if "id" in record:
            seen[record["id"]] += 1
            named[(record["id"], seen[record["id"]])] = record
    return named


def _unkeyed(records: list[dict]) -> Counter:
    return Counter(json.dumps(r, sort_keys=True) for r in records if "id" not in r)


@settings(max_examples=300, deadline=None)
@given(old=RECORDS, new=RECORDS)
def test_keyed_matching_equals_brute_force(old, new):
    result = match_records(lambda: iter(old), lambda: iter(new), "id", RecordLimits(listed=100, details=100))

    old_named, new_named = _by_occurrence(old), _by_occurrence(new)
    loose_added = _unkeyed(new) - _unkeyed(old)
    loose_removed = _unkeyed(old) - _unkeyed(new)
    changed = [name for name in old_named if name in new_named and old_named[name] != new_named[name]]
    assert result.added == len(set(new_named) - set(old_named)) + sum(loose_added.values())
    assert result.removed == len(set(old_named) - set(new_named)) + sum(loose_removed.values())
    assert result.changed == len(changed)
    assert result.old_count == len(old)
    assert result.new_count == len(new)
    assert [change.key for change in result.changed_records] == [
        name[0] for name in new_named if name in old_named and old_named[name] != new_named[name]
    ]
    for change in result.changed_records:
        assert [field.path for field in change.fields] == ["v"]


@settings(max_examples=300, deadline=None)
@given(old=RECORDS, new=RECORDS)
def test_content_matching_equals_multiset_difference(old, new):
    result = match_records(lambda: iter(old), lambda: iter(new), None, RecordLimits(listed=100))

    old_counts = Counter(json.dumps(r, sort_keys=True) for r in old)
    new_counts = Counter(json.dumps(r, sort_keys=True) for r in new)
    assert result.added == sum((new_counts - old_counts).values())
    assert result.removed == sum((old_counts - new_counts).values())
    assert result.changed == 0
    added_rows = Counter(json.dumps(new[ref.number - 1], sort_keys=True) for ref in result.added_records)
    removed_rows = Counter(json.dumps(old[ref.number - 1], sort_keys=True) for ref in result.removed_records)
    assert added_rows == new_counts - old_counts
    assert removed_rows == old_counts - new_counts
