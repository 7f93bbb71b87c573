"""The streaming reader over stored chunks: sequential and random access."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbak.catalog import lookup_path
from casbak.errors import UsageError
from casbak.operations.snapshot import create_snapshot
from casbak.records.reader import EntryReader, open_entry


@pytest.fixture(scope="module")
def payload() -> bytes:
    generator = random.Random(7)
    return bytes(generator.getrandbits(8) for _ in range(150_000))


@pytest.fixture
def stored(repository, tmp_path, payload):
    source = tmp_path / "source"
    source.mkdir()
    (source / "blob.bin").write_bytes(payload)
    manifest = create_snapshot(repository, [str(source)]).manifest
    entry = lookup_path(repository, manifest.tree, str(source / "blob.bin"))
    assert len(entry.chunks) > 10  # the small test chunker must split the file
    return entry


def test_sequential_read_returns_content(repository, stored, payload):
    with open_entry(repository, stored, buffer_size=1000) as stream:
        assert stream.read() == payload


def test_line_iteration_over_chunk_boundaries(repository, tmp_path):
    lines = [f'{{"id": {i}, "text": "{"x" * (i % 97)}"}}\n'.encode() for i in range(3000)]
    source = tmp_path / "source"
    source.mkdir()
    (source / "rows.jsonl").write_bytes(b"".join(lines))
    manifest = create_snapshot(repository, [str(source)]).manifest
    entry = lookup_path(repository, manifest.tree, str(source / "rows.jsonl"))

    with open_entry(repository, entry) as stream:
        assert list(stream) == lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, 160_000), st.integers(0, 40_000)), min_size=1, max_size=8))
def test_random_seeks_match_slices(repository, stored, payload, reads):
    reader = EntryReader(repository, stored)
    for offset, length in reads:
        reader.seek(offset)
        buffer = bytearray(length)
        view = memoryview(buffer)
        filled = 0
        while filled < length:
            count = reader.readinto(view[filled:])
            if count == 0:
                break
            filled += count
        assert bytes(buffer[:filled]) == payload[offset : offset + length]


def test_seek_from_end_and_size(repository, stored, payload):
    reader = io.BufferedReader(EntryReader(repository, stored))
    reader.seek(-100, io.SEEK_END)
    assert reader.read() == payload[-100:]
    assert reader.raw.size == len(payload)


def test_reader_rejects_directories(repository, tmp_path):
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    manifest = create_snapshot(repository, [str(source)]).manifest
    entry = lookup_path(repository, manifest.tree, str(source / "sub"))

    with pytest.raises(UsageError):
        EntryReader(repository, entry)
