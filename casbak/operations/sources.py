"""What a snapshot reads besides plain paths: exclude rules and streamed file sources.

`PathFilter` decides which walked entries are left out (gitignore-style patterns through
the `pathspec` package, a size limit, and staying on the file system of each source).
`StreamSource` is a virtual file whose content comes from standard input or from the
standard output of a shell command; the snapshot chunks it while it streams, so memory
does not grow with its size.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Iterable, Optional, Sequence

from casbak.errors import CasbakError, UsageError

if TYPE_CHECKING:
    import pathspec

log = logging.getLogger(__name__)

_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?B?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}

# Lines of a failing command's standard error kept for its error message.
STDERR_TAIL_LINES = 20


class SourceCommandFailed(CasbakError):
    """A --stdin-from-command command exited with a non-zero status or could not start."""


def parse_size(text: str) -> int:
    """Parse a byte count such as `2G`, `512M`, `1.5GiB` or `4096` (binary multiples)."""
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise UsageError(f"size {text!r}: invalid; use a number with an optional K, M, G, T or P suffix, such as 2G")
    number, unit, _suffix = match.groups()
    return int(float(number) * _SIZE_FACTORS[unit.upper()])


def read_exclude_files(paths: Iterable[str]) -> list[str]:
    """Return the patterns of exclude files: one per line, `#` comments and blank lines skipped."""
    patterns: list[str] = []
    for path in paths:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise UsageError(f"exclude file {path}: cannot be read ({exc.strerror or exc})") from exc
        patterns.extend(line for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return patterns


@dataclass
class PathFilter:
    """Exclude rules of one snapshot run, applied to every walked entry.

    Patterns follow .gitignore semantics, matched against the path relative to the
    source directory that contains it: `*.tmp` matches at any depth, `/build/` only the
    directory `build` at the top of a source, `!keep.tmp` re-includes, `**/cache/**`
    everything inside any `cache` directory. A pattern cannot re-include a file whose
    parent directory is excluded, because excluded directories are not walked (as in git).
    """

    patterns: Sequence[str] = ()
    max_file_size: Optional[int] = None
    one_file_system: bool = False
    roots: Sequence[bytes] = ()
    _file_spec: Optional[pathspec.PathSpec] = field(init=False, repr=False, default=None)
    _dir_spec: Optional[pathspec.PathSpec] = field(init=False, repr=False, default=None)
    _root_devices: dict[bytes, int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.patterns:
            self._compile_patterns()
        self.set_roots(self.roots)

    def _compile_patterns(self) -> None:
        # Imported here because pathspec imports asyncio, about 30 ms of start-up for
        # every snapshot, most of which have no exclude patterns.
        import pathspec

        try:
            # GitIgnoreSpec decides files as git does, but ranks a directory pattern such as
            # `!*/` below a file pattern such as `*` even for the directory itself, so
            # directories are decided by the plain last-match-wins rules instead.
            self._file_spec = pathspec.GitIgnoreSpec.from_lines(list(self.patterns))
            self._dir_spec = pathspec.PathSpec.from_lines("gitignore", list(self.patterns))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"exclude patterns: invalid ({exc}); patterns use .gitignore syntax") from exc

    def set_roots(self, roots: Sequence[bytes]) -> None:
        """Remember the source roots; relative paths and file-system checks depend on them."""
        self.roots = sorted(roots, key=len, reverse=True)
        self._root_devices = {}
        for root in self.roots:
            try:
                self._root_devices[root] = os.stat(root).st_dev
            except OSError:
                continue

    @property
    def active(self) -> bool:
        return bool(self.patterns) or self.max_file_size is not None or self.one_file_system

    def reason(self, path: bytes, st: os.stat_result) -> Optional[str]:
        """Return why `path` is excluded, or None to keep it."""
        root = self._root_of(path)
        is_dir = _is_dir(st)
        if self.one_file_system and root is not None and root != path:
            device = self._root_devices.get(root)
            if device is not None and st.st_dev != device:
                return "on another file system (--one-file-system)"
        if self.max_file_size is not None and not is_dir and st.st_size > self.max_file_size:
            return f"larger than {self.max_file_size} bytes (--exclude-larger-than)"
        if self.patterns:
            relative = self._relative(path, root)
            spec = self._dir_spec if is_dir else self._file_spec
            if relative and spec.match_file(relative + ("/" if is_dir else "")):
                return "matches an exclude pattern"
        return None

    def __call__(self, path: bytes, st: os.stat_result) -> bool:
        return self.reason(path, st) is not None

    def _root_of(self, path: bytes) -> Optional[bytes]:
        for root in self.roots:
            if path == root or path.startswith(root.rstrip(b"/") + b"/"):
                return root
        return None

    @staticmethod
    def _relative(path: bytes, root: Optional[bytes]) -> str:
        # A source root itself is matched by its own name, so `--exclude '*.tmp'` also
        # drops a source given as `x.tmp`.
        if root is None or path == root:
            relative = os.path.basename(path)
        else:
            relative = path[len(root.rstrip(b"/")) + 1 :]
        return os.fsdecode(relative)


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def normalize_stream_name(name: str) -> str:
    """Return the snapshot path (`/a/b`) of a stream's file name, rejecting unsafe names."""
    parts = [part for part in name.split("/") if part and part != "."]
    if not parts or ".." in parts or any("\x00" in part for part in parts):
        raise UsageError(f"--stdin-filename {name!r}: invalid; give a file name such as prefs.dump")
    return "/" + "/".join(parts)


def check_stream_paths(roots: Sequence[bytes], streams: Sequence["StreamSource"]) -> None:
    """Reject stream file names that collide with each other or with a source path."""
    seen: set[str] = set()
    for stream in streams:
        if stream.path in seen:
            raise UsageError(f"stream file name {stream.path}: given twice; give each stream its own name")
        seen.add(stream.path)
        raw = os.fsencode(stream.path)
        for root in roots:
            outer, inner = sorted((root.rstrip(b"/") or b"/", raw), key=len)
            if outer == inner or outer == b"/" or inner.startswith(outer + b"/"):
                raise UsageError(
                    f"stream file name {stream.path}: overlaps the source {os.fsdecode(root)}; "
                    "choose a --stdin-filename outside the backed-up paths"
                )


class StreamSource:
    """A virtual file read from a binary stream; `finish()` reports whether it was complete."""

    def __init__(self, filename: str, stream: BinaryIO, description: str) -> None:
        self.path = normalize_stream_name(filename)
        self.stream = stream
        self.description = description

    @property
    def source_name(self) -> str:
        """The entry of the manifest's `sources` list for this stream."""
        return f"{self.description}:{self.path}"

    def finish(self) -> None:
        """Raise when the producer of the stream failed; the default stream cannot fail."""

    def close(self) -> None:
        """Release the producer (kill a command that is still running)."""

    def __enter__(self) -> "StreamSource":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def stdin_source(filename: str) -> StreamSource:
    """Return a stream source over this process's standard input."""
    if sys.stdin is None:
        raise UsageError("--stdin: standard input is closed")
    return StreamSource(filename, sys.stdin.buffer, "stdin")


class CommandSource(StreamSource):
    """The standard output of a shell command, whose exit status decides the snapshot.

    The command's standard error is copied to this program's log (and its last lines kept
    for the error message) by a thread, so a chatty command cannot block on a full pipe.
    """

    def __init__(self, filename: str, command: str) -> None:
        if not command.strip():
            raise UsageError("--stdin-from-command: the command is empty")
        self.command = command
        try:
            self.process = subprocess.Popen(
                command,
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # Its own process group, so close() also stops what the shell started.
                start_new_session=True,
            )
        except OSError as exc:
            raise SourceCommandFailed(f"command {command!r}: cannot be started ({exc.strerror or exc})") from exc
        log.info("started source command %r (pid %d)", command, self.process.pid)
        super().__init__(filename, self.process.stdout, "command")
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_thread = threading.Thread(target=self._copy_stderr, name="casbak-command-stderr", daemon=True)
        self._stderr_thread.start()

    def _copy_stderr(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._stderr_tail.append(line)
                log.warning("source command: %s", line)

    def finish(self) -> None:
        status = self.process.wait()
        self._stderr_thread.join()
        if status != 0:
            detail = "; ".join(self._stderr_tail) or "no error output"
            shown = f"signal {-status}" if status < 0 else f"status {status}"
            raise SourceCommandFailed(
                f"command {self.command!r}: exited with {shown} ({detail}); "
                "no snapshot was written, fix the command and run again"
            )
        log.info("source command %r finished", self.command)

    def close(self) -> None:
        if self.process.poll() is None:
            log.warning("stopping source command %r (pid %d)", self.command, self.process.pid)
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                log.debug("source command %r exited before it could be stopped", self.command)
            self.process.wait()
        self._stderr_thread.join(timeout=10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
