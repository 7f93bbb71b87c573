"""Keep glibc from caching freed pack buffers, which made peak memory depend on timing.

glibc serves allocations above its mmap threshold with mmap and returns them to the
system on free, but it raises that threshold (up to 32 MiB) each time such a block is
freed. After the first pack upload, 16 MiB pack buffers therefore came from the
per-thread heaps and stayed there after use. With six busy threads, the peak RSS of a
1 GiB snapshot ranged from 160 MiB to over 900 MiB (measured on a 2-core VM). Pinning the threshold at 1 MiB keeps
chunks (at most the maximum chunk size, 512 KiB by default) on the fast heap path and
sends every pack buffer back to the system when it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD = 1024 * 1024

_applied = False
_lock = threading.Lock()


def pin_mmap_threshold() -> bool:
    """Set glibc's mmap threshold once per process; return True when it took effect.

    Does nothing on other C libraries and platforms, where the setting does not exist.
    """
    global _applied
    with _lock:
        if _applied:
            return True
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        if not _applied:
            log.debug("mallopt(M_MMAP_THRESHOLD) failed; freed pack buffers may stay in the heap")
        return _applied
