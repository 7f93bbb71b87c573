"""Fixtures for content diffs: store two versions of one file and compare them."""

from __future__ import annotations

from typing import Callable, Optional

import pytest

from casbak.operations.diff import diff_snapshots
from casbak.operations.snapshot import create_snapshot
from casbak.records.model import ContentDiff, RecordLimits


@pytest.fixture
def file_diff(repository, tmp_path) -> Callable[..., ContentDiff]:
    """Return a function that snapshots two versions of a file and diffs that file."""
    counter = iter(range(1_000_000))

    def compare(name: str, old: bytes, new: bytes, key: Optional[str] = None, limits: RecordLimits = RecordLimits()) -> ContentDiff:
        source = tmp_path / f"source{next(counter)}"
        source.mkdir()
        (source / name).write_bytes(old)
        first = create_snapshot(repository, [str(source)]).manifest
        (source / name).write_bytes(new)
        second = create_snapshot(repository, [str(source)]).manifest
        result = diff_snapshots(repository, first, second, str(source / name), key=key, limits=limits)
        assert [change.status for change in result.changes] == ["M"]
        return result.changes[0].content

    return compare
