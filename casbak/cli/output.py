"""Formatting helpers for human-readable command output."""

from __future__ import annotations

import stat

from casbak.tree import DIRECTORY, SYMLINK, Entry


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_mode(entry: Entry) -> str:
    kind = {DIRECTORY: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
    return stat.filemode(kind | entry.mode)


def display_path(raw: bytes) -> str:
    """Show a raw path; bytes that are not UTF-8 appear as backslash escapes."""
    return raw.decode("utf-8", "backslashreplace")
