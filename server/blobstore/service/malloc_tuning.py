"""glibc malloc settings for a server that moves 1 MiB buffers (Linux + glibc only).

By default glibc serves every allocation over 128 KiB (its dynamic mmap
threshold starts there) with mmap and returns it with munmap, so each 1 MiB
stream chunk, protobuf message and pread result is faulted in and zeroed by
the kernel again: a quarter of the server's CPU on large streams (see
docs/performance.md). Raising the mmap threshold keeps such buffers on the
heap and reuses them; the trim threshold bounds what the heap may keep
unused before giving it back, so memory stays bounded (measured: < 10 MiB of
RSS growth over a 1 GiB stream).

A no-op (returning False) on other C libraries and systems, and when the
operator set the MALLOC_*_ variables, which then take precedence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MiB = 1024 * 1024
MMAP_THRESHOLD = 16 * MiB
TRIM_THRESHOLD = 32 * MiB
# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> bool:
    """Applies the thresholds above; True if glibc accepted both."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ENV):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it (musl has mallopt as a stub)  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
