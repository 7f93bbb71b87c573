"""The progress protocol through which operations report to a user interface.

Operations call these methods from worker threads, so implementations must be
thread-safe. The base class does nothing, which is what library callers get.
"""

from __future__ import annotations


class Progress:
    """No-op progress receiver; subclass and override what you display."""

    def scanned(self, files: int, size: int) -> None:
        """Called once the size of the work is known (restore) or as it grows (snapshot)."""

    def file_done(self, path: bytes, size: int, read: bool) -> None:
        """Called when a file is stored (read=True) or reused from the parent snapshot."""

    def bytes_done(self, count: int) -> None:
        """Called as file content is read (snapshot) or written (restore)."""

    def warning(self, path: bytes, message: str) -> None:
        """Called for a problem that did not stop the operation (file changed, skipped type)."""

    def error(self, path: bytes, message: str) -> None:
        """Called for an entry that could not be processed and was left out."""
