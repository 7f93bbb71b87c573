"""Formatting helpers for human-readable command output."""

from __future__ import annotations

import stat
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from casbak.errors import PathNotFound
from casbak.tree import DIRECTORY, SYMLINK, Entry

if TYPE_CHECKING:
    from casbak.manifest import Manifest


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def count_of(count: int, noun: str) -> str:
    """Return "1 snapshot" or "3 snapshots": the count with the noun in the right number."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_mode(entry: Entry) -> str:
    kind = {DIRECTORY: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
    return stat.filemode(kind | entry.mode)


def display_path(raw: bytes) -> str:
    """Show a raw path; bytes that are not UTF-8 appear as backslash escapes."""
    return raw.decode("utf-8", "backslashreplace")


@contextmanager
def naming_snapshot(manifest: Manifest) -> Iterator[None]:
    """Add the snapshot id and sources to a PathNotFound raised inside the block.

    `latest` is the newest snapshot of any source, so a path missing there often lives in
    another source's snapshot. Naming the sources makes that visible.
    """
    try:
        yield
    except PathNotFound as exc:
        sources = ", ".join(manifest.sources) or "no sources"
        raise PathNotFound(
            f"snapshot {manifest.id[:12]} (sources: {sources}): {exc}. "
            "`casbak snapshots` lists the snapshots of other sources"
        ) from exc
