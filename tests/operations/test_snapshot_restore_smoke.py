"""End-to-end snapshot and restore through the Python API."""

from __future__ import annotations

import os

from casbak.catalog import resolve_snapshot
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from tests.conftest import make_tree, read_tree


def test_snapshot_restore_round_trip(repository, tmp_path):
    source = tmp_path / "source"
    spec = {
        "prefs.jsonl": os.urandom(50_000),
        "empty.txt": b"",
        "configs": {"dpo.yaml": b"lr: 5e-7\n", "nested": {}},
        "link": ("symlink", "configs/dpo.yaml"),
    }
    make_tree(source, spec)

    result = create_snapshot(repository, [str(source)])
    manifest = resolve_snapshot(repository, result.manifest.id[:8])
    target = tmp_path / "target"
    restore_snapshot(repository, manifest, str(target), str(source))

    assert read_tree(target) == spec


def test_second_snapshot_of_unchanged_tree_adds_nothing(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a.bin": os.urandom(100_000), "b": {"c.txt": b"hello"}})
    create_snapshot(repository, [str(source)])
    packs_before = repository.backend.list("data")

    second = create_snapshot(repository, [str(source)])

    assert second.stats.files_unmodified == 2
    assert second.stats.bytes_read == 0
    assert repository.backend.list("data") == packs_before
