"""Record diffs of real preference data as JSONL, gzip JSONL, Parquet and CSV."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from casbak.records.model import RecordLimits
from tests.conftest import CORPUS

PREFERENCES = CORPUS / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"
BASE_ROWS = 1500
DELETED = [5, 17, 900]
RELABELLED = [3, 42, 1499]
APPENDED = list(range(BASE_ROWS, BASE_ROWS + 10))

pytestmark = pytest.mark.skipif(not PREFERENCES.is_file(), reason="preference corpus not available")


def _load_rows(count: int) -> list[dict]:
    rows = []
    with gzip.open(PREFERENCES, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number >= count:
                break
            record = json.loads(line)
            rows.append({"id": number, "chosen": record["chosen"], "rejected": record["rejected"]})
    return rows


@pytest.fixture(scope="module")
def versions() -> tuple[list[dict], list[dict]]:
    """Monday's rows, and Tuesday's: three deleted, three relabelled, ten appended."""
    rows = _load_rows(BASE_ROWS + len(APPENDED))
    monday = rows[:BASE_ROWS]
    tuesday = []
    for row in monday:
        if row["id"] in DELETED:
            continue
        if row["id"] in RELABELLED:
            row = {"id": row["id"], "chosen": row["rejected"], "rejected": row["chosen"]}
        tuesday.append(row)
    tuesday += rows[BASE_ROWS:]
    return monday, tuesday


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=400)
    return sink.getvalue()


def _csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["id", "chosen", "rejected"])
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


ENCODINGS = {
    "prefs.jsonl": (_jsonl, lambda i: i),
    "prefs.jsonl.gz": (lambda rows: gzip.compress(_jsonl(rows)), lambda i: i),
    "prefs.parquet": (_parquet, lambda i: i),
    "prefs.csv": (_csv, str),  # CSV has no types, so ids come back as text
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_keyed_record_diff(file_diff, versions, name):
    encode, key_type = ENCODINGS[name]
    monday, tuesday = versions

    content = file_diff(name, encode(monday), encode(tuesday), key="id")

    records = content.records
    assert records.old_count == BASE_ROWS
    assert records.new_count == BASE_ROWS - len(DELETED) + len(APPENDED)
    assert records.added == len(APPENDED)
    assert records.removed == len(DELETED)
    assert records.changed == len(RELABELLED)
    assert records.unchanged == BASE_ROWS - len(DELETED) - len(RELABELLED)
    assert [ref.key for ref in records.added_records] == [key_type(i) for i in APPENDED]
    assert [ref.key for ref in records.removed_records] == [key_type(i) for i in DELETED]
    assert [change.key for change in records.changed_records] == [key_type(i) for i in RELABELLED]
    assert not records.truncated


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_relabel_names_swapped_fields(file_diff, versions, name):
    encode, _key_type = ENCODINGS[name]
    monday, tuesday = versions

    content = file_diff(name, encode(monday), encode(tuesday), key="id")

    for change in content.records.changed_records:
        assert [field.path for field in change.fields] == ["chosen", "rejected"]
        assert change.swapped == [("chosen", "rejected")]
        original = monday[int(change.key)]
        assert change.fields[0].old == original["chosen"]
        assert change.fields[0].new == original["rejected"]


def test_record_numbers_point_at_rows(file_diff, versions):
    monday, tuesday = versions

    content = file_diff("prefs.jsonl", _jsonl(monday), _jsonl(tuesday), key="id")

    removed_numbers = [ref.number for ref in content.records.removed_records]
    assert removed_numbers == [i + 1 for i in DELETED]
    appended_numbers = [ref.number for ref in content.records.added_records]
    assert appended_numbers == list(range(len(tuesday) - len(APPENDED) + 1, len(tuesday) + 1))


def test_without_key_reports_added_and_removed_only(file_diff, versions):
    monday, tuesday = versions

    content = file_diff("prefs.jsonl", _jsonl(monday), _jsonl(tuesday))

    records = content.records
    assert records.key is None
    assert records.changed == 0
    # A relabelled row is new content, so it counts as one removed and one added row.
    assert records.added == len(APPENDED) + len(RELABELLED)
    assert records.removed == len(DELETED) + len(RELABELLED)
    removed_rows = sorted(ref.number - 1 for ref in records.removed_records)
    assert removed_rows == sorted(DELETED + RELABELLED)


def test_limits_cut_lists_but_not_counts(file_diff, versions):
    monday, tuesday = versions
    limits = RecordLimits(listed=2, details=1)

    content = file_diff("prefs.jsonl", _jsonl(monday), _jsonl(tuesday), key="id", limits=limits)

    records = content.records
    assert records.added == len(APPENDED)
    assert records.changed == len(RELABELLED)
    assert len(records.added_records) == 2
    assert len(records.changed_records) == 2
    assert records.changed_records[0].fields
    assert records.changed_records[1].fields == []
    assert records.truncated


def test_parquet_schema_change(file_diff, versions):
    monday, _tuesday = versions
    extended = [{**row, "score": 1.0} for row in monday]

    content = file_diff("prefs.parquet", _parquet(monday), _parquet(extended), key="id")

    assert [(c.path, c.status, c.new) for c in content.records.schema] == [("score", "added", "double")]
    assert content.records.changed == len(monday)
    assert content.records.changed_records[0].fields[0].path == "score"
