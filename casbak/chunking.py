"""Content-defined chunking with FastCDC 2020 (pyfastcdc).

The chunker parameters are fixed per repository at `init` and stored in its config:
other parameters move the cut points, so the same data would no longer deduplicate
against older snapshots. Golden tests pin the cut points of the default parameters.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import BinaryIO, Iterator

import pyfastcdc

from casbak.errors import UsageError

# pyfastcdc's accepted ranges (see pyfastcdc.FastCDC's docstring, version 0.3.1).
_AVG_RANGE = (256, 4 * 1024 * 1024)
_MIN_RANGE = (64, 1024 * 1024)
_MAX_RANGE = (1024, 16 * 1024 * 1024)


@dataclass(frozen=True)
class ChunkerParams:
    """FastCDC parameters of one repository.

    pyfastcdc adds `min_size` to the requested average (cut-point skipping), so the
    observed mean chunk size is about `avg_size + min_size`.
    """

    min_size: int = 32 * 1024
    avg_size: int = 128 * 1024
    max_size: int = 512 * 1024
    normalization: int = 1
    seed: int = 0

    def validate(self) -> None:
        """Raise UsageError when pyfastcdc would reject these parameters."""
        checks = (
            ("avg_size", self.avg_size, _AVG_RANGE),
            ("min_size", self.min_size, _MIN_RANGE),
            ("max_size", self.max_size, _MAX_RANGE),
        )
        for name, value, (low, high) in checks:
            if not low <= value <= high:
                raise UsageError(f"chunker {name} {value} is out of range [{low}, {high}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise UsageError(
                f"chunker sizes must satisfy min <= avg <= max, got "
                f"{self.min_size} / {self.avg_size} / {self.max_size}"
            )
        if self.normalization not in (0, 1, 2, 3):
            raise UsageError(f"chunker normalization {self.normalization} must be 0, 1, 2 or 3")
        # pyfastcdc shifts the seed left by one bit into a uint64, so 63 bits is the limit.
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"chunker seed {self.seed} must fit in 63 bits")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ChunkerParams":
        params = cls(**{key: int(values[key]) for key in cls.__dataclass_fields__})
        params.validate()
        return params

    @staticmethod
    def random_seed() -> int:
        """Return a random 63-bit gear-table seed.

        A secret seed keeps cut points, and so chunk sizes, from revealing which known
        files an encrypted repository contains.
        """
        return secrets.randbits(63)


# Streams up to this size are read into memory whole and cut with cut_buf().
SMALL_STREAM = 256 * 1024


class Chunker:
    """A FastCDC chunker bound to one repository's parameters.

    One instance must not be used from two threads at once, because pyfastcdc keeps
    state per call and does not promise thread safety. Create one per worker.
    """

    def __init__(self, params: ChunkerParams) -> None:
        params.validate()
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,
            seed=params.seed,
        )

    def chunks(self, stream: BinaryIO) -> Iterator[bytes]:
        """Yield the content-defined chunks of `stream` as independent bytes objects.

        The stream is read with readinto() in blocks, never mapped into memory, so a file
        truncated while it is read ends the stream early instead of raising SIGBUS as an
        mmap would. Memory use is bounded by pyfastcdc's read buffer plus one chunk.

        A stream that ends within SMALL_STREAM bytes is cut from one in-memory buffer:
        pyfastcdc's stream reader allocates and zero-fills a buffer of twice the maximum
        chunk size per call, which dominated the cost of snapshotting small files. Both
        paths give the same cut points.
        """
        head = _read_up_to(stream, SMALL_STREAM + 1)
        if len(head) <= SMALL_STREAM:
            if head:
                yield from self.chunk_bytes(head)
            return
        for chunk in self._cdc.cut_stream(_PrefixedStream(head, stream)):
            # The memoryview is only valid until the next chunk is cut, so copy it out.
            yield bytes(chunk.data)

    def chunk_bytes(self, data: bytes) -> list[bytes]:
        """Return the chunks of an in-memory buffer (small files and streams, and tests).

        Data of at most `min_size` bytes is one chunk, as FastCDC places no cut point
        before `min_size`. Such data is returned without a pyfastcdc call, and a bytes
        object without a copy.
        """
        if len(data) <= self.params.min_size:
            return [bytes(data)] if data else []
        return [bytes(chunk.data) for chunk in self._cdc.cut_buf(data)]


def _read_up_to(stream: BinaryIO, limit: int) -> bytes:
    """Read until `limit` bytes or end of stream; short reads (pipes) are retried."""
    parts = []
    remaining = limit
    while remaining > 0:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


class _PrefixedStream:
    """A reader that returns `prefix` first and then the rest of `stream`."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readinto(self, buffer: memoryview) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return readinto(buffer) or 0
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
