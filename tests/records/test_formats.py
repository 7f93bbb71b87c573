"""Format edge cases: keys that repeat or are missing, list-rooted documents, and byte fallbacks."""

from __future__ import annotations

import json
import random

from casbak.records import detect_format


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_detect_format_by_suffix():
    assert detect_format(b"a.JSONL.GZ") == "jsonl.gz"
    assert detect_format(b"a.ndjson") == "jsonl"
    assert detect_format(b"a.yml") == "yaml"
    assert detect_format(b"a.csv.gz") == "csv.gz"
    assert detect_format(b"model.safetensors") == "bytes"


def test_repeated_keys_pair_in_order(file_diff):
    old = [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}, {"id": 2, "v": "c"}]
    new = [{"id": 1, "v": "a"}, {"id": 1, "v": "B"}, {"id": 2, "v": "c"}, {"id": 1, "v": "extra"}]

    records = file_diff("dup.jsonl", _jsonl(old), _jsonl(new), key="id").records

    assert records.duplicate_keys == 1
    assert records.changed == 1
    assert records.changed_records[0].old_number == 2
    assert [(f.path, f.old, f.new) for f in records.changed_records[0].fields] == [("v", "b", "B")]
    assert [(ref.key, ref.number) for ref in records.added_records] == [(1, 4)]


def test_records_without_key_match_by_content(file_diff):
    old = [{"id": 1, "v": "a"}, {"v": "no id"}, {"v": "dropped"}]
    new = [{"id": 1, "v": "a"}, {"v": "no id"}, {"v": "brand new"}]

    records = file_diff("partial.jsonl", _jsonl(old), _jsonl(new), key="id").records

    assert records.without_key == 4
    assert records.added == 1
    assert records.removed == 1
    assert [ref.number for ref in records.added_records] == [3]


def test_nested_key_field(file_diff):
    old = [{"meta": {"id": "x"}, "label": 0}, {"meta": {"id": "y"}, "label": 1}]
    new = [{"meta": {"id": "y"}, "label": 0}, {"meta": {"id": "x"}, "label": 0}]

    records = file_diff("nested.jsonl", _jsonl(old), _jsonl(new), key="meta.id").records

    assert records.changed == 1
    assert records.changed_records[0].key == "y"
    assert [(f.path, f.old, f.new) for f in records.changed_records[0].fields] == [("label", 1, 0)]


def test_json_array_is_compared_as_records(file_diff):
    old = json.dumps([{"id": 1, "x": 1}, {"id": 2, "x": 2}]).encode()
    new = json.dumps([{"id": 2, "x": 3}, {"id": 3, "x": 3}]).encode()

    content = file_diff("rows.json", old, new, key="id")

    assert content.keys is None
    assert (content.records.added, content.records.removed, content.records.changed) == (1, 1, 1)
    assert content.records.changed_records[0].fields[0].path == "x"


def test_yaml_document_stream_is_records(file_diff):
    old = b"name: a\n---\nname: b\n"
    new = b"name: a\n---\nname: c\n---\nname: d\n"

    records = file_diff("stream.yaml", old, new).records

    assert (records.old_count, records.new_count, records.added, records.removed) == (2, 3, 2, 1)


def test_invalid_jsonl_lines_still_diff(file_diff):
    old = b'{"id": 1}\nnot json\n'
    new = b'{"id": 1}\nnot json either\n'

    records = file_diff("broken.jsonl", old, new).records

    assert (records.added, records.removed) == (1, 1)


def test_unparsable_json_falls_back_to_bytes(file_diff):
    content = file_diff("broken.json", b'{"a": 1', b'{"a": 2')

    assert content.format == "bytes"
    assert content.bytes.old_size == 7
    assert "could not be parsed as json" in content.notes[0]


def test_binary_file_byte_ranges(file_diff):
    generator = random.Random(11)
    old = bytes(generator.getrandbits(8) for _ in range(120_000))
    edit_at = 60_000
    new = old[:edit_at] + b"\x00" * 16 + old[edit_at + 16 :]

    content = file_diff("weights.bin", old, new)

    summary = content.bytes
    assert content.format == "bytes"
    assert summary.old_size == summary.new_size == len(old)
    assert summary.shared_chunks >= summary.new_chunks - 2
    assert summary.added_ranges
    assert all(start <= edit_at + 16 and end >= edit_at for start, end in summary.added_ranges)
    assert sum(end - start for start, end in summary.added_ranges) == summary.bytes_added
    assert summary.bytes_added < len(old) // 4


def test_gzip_csv(file_diff):
    import gzip

    old = gzip.compress(b"id,label\n1,good\n2,bad\n")
    new = gzip.compress(b"id,label,note\n1,good,\n2,good,fixed\n")

    records = file_diff("labels.csv.gz", old, new, key="id").records

    assert records.changed == 2
    assert [(c.path, c.status) for c in records.schema] == [("note", "added")]
    fields = {(f.path, f.old, f.new) for f in records.changed_records[1].fields}
    assert fields == {("label", "bad", "good"), ("note", None, "fixed")}
