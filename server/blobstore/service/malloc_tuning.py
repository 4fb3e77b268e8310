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
operator set the MALLOC_*_ variables, which then take precedence. Either
way the result says what it did, and the server logs it with its start-up
line (not before: a server that fails to start says so in one line), so an
operator can tell from the log which allocator settings a server runs with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from typing import NamedTuple

MiB = 1024 * 1024
MMAP_THRESHOLD = 16 * MiB
TRIM_THRESHOLD = 32 * MiB
# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

log = logging.getLogger(__name__)


class MallocTuning(NamedTuple):
    """What tune_malloc did."""

    applied: bool
    """glibc accepted both thresholds."""
    outcome: str

    def log(self) -> None:
        log.info("malloc tuning: %s", self.outcome)


def tune_malloc() -> MallocTuning:
    """Applies the thresholds above (call before the allocations they are for)."""
    return MallocTuning(*_apply())


def _apply() -> tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, f"skipped (not Linux: {sys.platform})"
    given = [name for name in _ENV if name in os.environ]
    if given:
        return False, f"skipped: the environment sets {', '.join(given)}, which glibc applies"
    name = ctypes.util.find_library("c")
    if name is None:
        return False, "skipped: no C library found"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it (musl has mallopt as a stub)  # noqa: B018
    except (OSError, AttributeError):
        return False, f"skipped: {name} is not glibc"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if mmap_ok and trim_ok:
        return True, (
            f"glibc mmap threshold {MMAP_THRESHOLD // MiB} MiB, "
            f"trim threshold {TRIM_THRESHOLD // MiB} MiB"
        )
    return False, f"glibc refused mallopt (mmap threshold ok: {mmap_ok}, trim ok: {trim_ok})"
