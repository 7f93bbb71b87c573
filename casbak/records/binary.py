"""Chunk-level comparison for files of unknown format, from the chunk lists alone."""

from __future__ import annotations

from casbak.records.model import ByteDiff, RecordLimits
from casbak.records.reader import chunk_sizes
from casbak.store.repository import Repository
from casbak.tree import Entry


def _ranges_outside(chunks: list[bytes], sizes: list[int], other: set[bytes]) -> list[tuple[int, int]]:
    """Return the merged [start, end) byte ranges of chunks whose digest is not in `other`."""
    ranges: list[tuple[int, int]] = []
    offset = 0
    for digest, size in zip(chunks, sizes):
        if digest not in other:
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + size)
            else:
                ranges.append((offset, offset + size))
        offset += size
    return ranges


def _unique_bytes(chunks: list[bytes], sizes: list[int], other: set[bytes]) -> int:
    seen: dict[bytes, int] = {}
    for digest, size in zip(chunks, sizes):
        if digest not in other:
            seen[digest] = size
    return sum(seen.values())


def diff_bytes(repository: Repository, old: Entry, new: Entry, limits: RecordLimits = RecordLimits()) -> ByteDiff:
    """Compare two versions of a file by their chunk lists; no file content is read."""
    old_chunks, new_chunks = old.chunks or [], new.chunks or []
    old_sizes = chunk_sizes(repository, old_chunks)
    new_sizes = chunk_sizes(repository, new_chunks)
    old_set, new_set = set(old_chunks), set(new_chunks)
    added = _ranges_outside(new_chunks, new_sizes, old_set)
    removed = _ranges_outside(old_chunks, old_sizes, new_set)
    return ByteDiff(
        old_size=sum(old_sizes),
        new_size=sum(new_sizes),
        old_chunks=len(old_chunks),
        new_chunks=len(new_chunks),
        shared_chunks=len(old_set & new_set),
        bytes_added=_unique_bytes(new_chunks, new_sizes, old_set),
        bytes_removed=_unique_bytes(old_chunks, old_sizes, new_set),
        added_ranges=added[: limits.ranges],
        removed_ranges=removed[: limits.ranges],
        ranges_truncated=len(added) > limits.ranges or len(removed) > limits.ranges,
    )
