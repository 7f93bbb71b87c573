"""Snapshot and restore of the real alignment-data corpus, compared byte for byte."""

from __future__ import annotations

import hashlib
import os

import pytest

from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from tests.conftest import CORPUS
from tests.operations.test_snapshot import assert_source_unchanged

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus directory is missing")


def tree_digests(root) -> dict[str, tuple]:
    """Map each relative path to its kind, permission bits and content hash or link target."""
    result = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            info = os.lstat(path)
            if os.path.islink(path):
                result[relative] = ("symlink", os.readlink(path))
            elif os.path.isdir(path):
                result[relative] = ("dir", info.st_mode & 0o7777)
            else:
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                result[relative] = ("file", info.st_mode & 0o7777, info.st_size, digest, info.st_mtime_ns)
    return result


def test_corpus_round_trip(repository, tmp_path):
    expected = tree_digests(CORPUS)
    assert len(expected) > 5

    result = create_snapshot(repository, [str(CORPUS)])
    target = tmp_path / "restored"
    restore_snapshot(repository, result.manifest, str(target), str(CORPUS))

    assert result.manifest.partial is False
    assert result.stats.bytes_total == sum(v[2] for v in expected.values() if v[0] == "file")
    assert tree_digests(target) == expected


def test_corpus_second_snapshot_stores_nothing(repository):
    first = create_snapshot(repository, [str(CORPUS)])
    packs_before = repository.backend.list("data")

    second = create_snapshot(repository, [str(CORPUS)])
    forced = create_snapshot(repository, [str(CORPUS)], full_read=True)

    assert second.stats.bytes_read == 0
    assert repository.backend.list("data") == packs_before
    assert_source_unchanged(repository, first, second, str(CORPUS))
    assert forced.stats.bytes_read == first.stats.bytes_total
    assert_source_unchanged(repository, first, forced, str(CORPUS))


def test_corpus_on_memory_repository(memory_repository, tmp_path):
    result = create_snapshot(memory_repository, [str(CORPUS)])
    target = tmp_path / "restored"

    restore_snapshot(memory_repository, result.manifest, str(target), str(CORPUS))

    assert tree_digests(target) == tree_digests(CORPUS)
