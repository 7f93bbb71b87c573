"""A seekable, read-only file object over a file entry's chunks in the repository.

Sequential reads stream the chunks through `Repository.iter_objects`, so neighbouring
chunks of one pack arrive in one ranged read and only the current chunk is held in
memory. A seek outside the current chunk restarts the stream at the chunk that contains
the target offset, which is what Parquet's footer-first reads need.
"""

from __future__ import annotations

import bisect
import io
from typing import Iterator, Optional

from casbak.errors import ObjectNotFound, UsageError
from casbak.store.repository import Repository
from casbak.tree import FILE, Entry


def chunk_sizes(repository: Repository, chunks: list[bytes]) -> list[int]:
    """Return the plaintext size of each chunk, taken from the index without reading data."""
    sizes = []
    for digest in chunks:
        location = repository.index.lookup(digest)
        if location is None:
            raise ObjectNotFound(
                f"chunk {digest.hex()[:12]}: not in any index; run `casbak verify` to check the repository"
            )
        sizes.append(location.raw_length)
    return sizes


class EntryReader(io.RawIOBase):
    """Raw binary reader of one stored file; wrap it in io.BufferedReader for line reads."""

    def __init__(self, repository: Repository, entry: Entry) -> None:
        super().__init__()
        if entry.type != FILE or entry.chunks is None:
            raise UsageError(f"entry {entry.name!r}: is a {entry.type}, not a file; only files have content to read")
        self._repository = repository
        self._chunks = entry.chunks
        self._starts: list[int] = []
        offset = 0
        for size in chunk_sizes(repository, entry.chunks):
            self._starts.append(offset)
            offset += size
        self._size = offset
        self._position = 0
        self._stream: Optional[Iterator[bytes]] = None
        self._stream_next = 0  # index of the chunk the open stream yields next
        self._current: Optional[bytes] = None
        self._current_index = -1

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._position + offset
        elif whence == io.SEEK_END:
            target = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise ValueError(f"negative seek position {target}")
        self._position = target
        return target

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._position >= self._size or len(view) == 0:
            return 0
        index = bisect.bisect_right(self._starts, self._position) - 1
        chunk = self._chunk(index)
        start = self._position - self._starts[index]
        count = min(len(view), len(chunk) - start)
        view[:count] = chunk[start : start + count]
        self._position += count
        return count

    def _chunk(self, index: int) -> bytes:
        if index == self._current_index and self._current is not None:
            return self._current
        if self._stream is None or self._stream_next != index:
            # Restart the stream here: a backward seek or a jump ahead.
            self._stream = self._repository.iter_objects(self._chunks[index:])
            self._stream_next = index
        self._current = next(self._stream)
        self._current_index = index
        self._stream_next = index + 1
        return self._current

    def close(self) -> None:
        self._stream = None
        self._current = None
        super().close()


def open_entry(repository: Repository, entry: Entry, buffer_size: int = 1024 * 1024) -> io.BufferedReader:
    """Open a stored file for reading, buffered, without restoring it to disk."""
    return io.BufferedReader(EntryReader(repository, entry), buffer_size=buffer_size)
