"""Helpers shared by the format modules: stream openers and transparent gzip."""

from __future__ import annotations

import contextlib
import gzip
from typing import BinaryIO, Callable, Iterator

# A function that opens a fresh binary stream of one file version on every call, so a
# format module can read a version twice (once for digests, once for details).
Opener = Callable[[], BinaryIO]


@contextlib.contextmanager
def decompressed(raw: BinaryIO, compressed: bool) -> Iterator[BinaryIO]:
    """Yield `raw`, or a gzip reader over it when `compressed`."""
    if not compressed:
        yield raw
        return
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        yield stream
