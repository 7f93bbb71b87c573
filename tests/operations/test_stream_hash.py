"""Whole-file hashes in a background thread: same result as inline, errors reach the reader."""

from __future__ import annotations

import hashlib
import os

import blake3
import pytest

from casbak.catalog import walk
from casbak.operations import snapshot as snapshot_module
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.operations.stream_hash import QUEUE_CHUNKS, HashFeeder
from casbak.tree import FILE
from tests.conftest import read_tree


def test_feeder_matches_inline_hashes():
    chunks = [os.urandom(n) for n in (1, 5000, 70_000, 0, 131_072)] * 10
    feeder = HashFeeder([hashlib.sha256(), blake3.blake3()])
    inline = [hashlib.sha256(), blake3.blake3()]

    for chunk in chunks:
        feeder.feed(chunk)
        for stream in inline:
            stream.update(chunk)
    feeder.finish()

    assert [h.digest() for h in feeder._hashers] == [h.digest() for h in inline]


class Failing:
    def update(self, data: bytes) -> None:
        raise ValueError("hash state lost")


def test_feeder_error_reaches_finish_without_blocking():
    # More chunks than the queue holds: feed() must not block after the thread failed.
    feeder = HashFeeder([Failing()])

    for _ in range(QUEUE_CHUNKS * 3):
        feeder.feed(b"chunk")

    with pytest.raises(ValueError, match="hash state lost"):
        feeder.finish()
    feeder.close()


def test_large_file_hashes_match_after_handover(repository, tmp_path, monkeypatch):
    # A tiny threshold moves the hashing to the thread after the first few chunks.
    monkeypatch.setattr(snapshot_module, "BACKGROUND_HASH_AFTER", 50_000)
    source = tmp_path / "src"
    source.mkdir()
    data = os.urandom(600_000)
    (source / "weights.bin").write_bytes(data)

    result = create_snapshot(repository, [str(source)])
    target = tmp_path / "restored"
    restore_snapshot(repository, result.manifest, str(target), str(source))

    entry = next(entry for _path, entry in walk(repository, result.manifest.tree) if entry.name == b"weights.bin")
    assert entry.type == FILE
    assert entry.sha256 == hashlib.sha256(data).digest()
    assert read_tree(target) == read_tree(source)

