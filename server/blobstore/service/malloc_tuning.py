"""glibc malloc settings for a server that moves 1 MiB buffers (Linux + glibc only).

By default glibc serves every allocation over 128 KiB (its dynamic mmap
threshold starts there) with mmap and returns it with munmap, so each 1 MiB
stream chunk, protobuf message and pread result is faulted in and zeroed by
the kernel again: a quarter of the server's CPU on large streams (see
docs/performance.md). Raising the mmap threshold keeps such buffers on the
heap and reuses them; the trim threshold bounds what the heap may keep
unused before giving it back, so memory stays bounded (measured: < 10 MiB of
RSS growth over a 1 GiB stream).

That bound is per arena, though, and memory freed in the middle of a heap stays
with the process: after 120 GetStreams of a 32 MiB blob that were cancelled unread
(each holding the chunks gRPC buffered), RSS stayed 150-300 MiB above its idle value
round after round, with 7 MiB in use (malloc_stats: 15 arenas, each keeping up to the
trim threshold at its top, which malloc_trim does not touch outside the main arena).
So the arenas are capped at ARENA_MAX - Python allocates under the GIL anyway, so
more buy little - and `MallocTrimmer` calls malloc_trim(0), which gives the free
pages inside every arena back, once calls that held at least TRIM_AFTER_BYTES in all
have ended: in a thread, at most once per TRIM_INTERVAL_SECONDS, so buffers are still
reused within a burst. Both together bring RSS back to its idle value after each
round (either alone: 130-290 MiB above it).

A no-op (returning False) on other C libraries and systems, and when the
operator set the MALLOC_* variables, which then take precedence. Either
way the result says what it did, and the server logs it with its start-up
line (not before: a server that fails to start says so in one line), so an
operator can tell from the log which allocator settings a server runs with.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

MiB = 1024 * 1024
MMAP_THRESHOLD = 16 * MiB
TRIM_THRESHOLD = 32 * MiB
ARENA_MAX = 2
# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")
LARGE_CALL_BYTES = 1 * MiB
"""Calls that held less than this do not count towards a trim (they reuse the heap)."""
TRIM_AFTER_BYTES = 64 * MiB
TRIM_INTERVAL_SECONDS = 1.0

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


class MallocTrimmer:
    """Gives memory freed by large calls back to the system (glibc's malloc_trim)."""

    def __init__(self, trim: Callable[[int], int] | None = None) -> None:
        """`trim`: malloc_trim itself by default (None where there is no glibc)."""
        self._trim = trim if trim is not None else _glibc_function("malloc_trim")
        self._pending = 0
        self._last = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def released(self, nbytes: int) -> None:
        """A call that held `nbytes` ended (on the event loop)."""
        if self._trim is None or nbytes < LARGE_CALL_BYTES:
            return
        self._pending += nbytes
        self._schedule()

    def _schedule(self) -> None:
        if self._pending >= TRIM_AFTER_BYTES and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._trim is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(max(0.0, self._last + TRIM_INTERVAL_SECONDS - loop.time()))
            self._pending = 0
            # ctypes lets go of the GIL; a thread keeps the loop serving meanwhile.
            await asyncio.to_thread(self._trim, 0)
            self._last = loop.time()
        finally:
            self._task = None
        self._schedule()  # calls that ended meanwhile


def _glibc_function(name: str) -> Callable[[int], int] | None:
    libc = _glibc()
    return None if isinstance(libc, str) else getattr(libc, name)


def _glibc() -> ctypes.CDLL | str:
    """glibc, or why not."""
    if not sys.platform.startswith("linux"):
        return f"skipped (not Linux: {sys.platform})"
    name = ctypes.util.find_library("c")
    if name is None:
        return "skipped: no C library found"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl has mallopt as a stub)  # noqa: B018
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return f"skipped: {name} is not glibc"
    return libc


def _apply() -> tuple[bool, str]:
    libc = _glibc()
    if isinstance(libc, str):
        return False, libc
    given = [name for name in _ENV if name in os.environ]
    if given:
        return False, f"skipped: the environment sets {', '.join(given)}, which glibc applies"
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    arenas_ok = bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    if mmap_ok and trim_ok and arenas_ok:
        return True, (
            f"glibc mmap threshold {MMAP_THRESHOLD // MiB} MiB, "
            f"trim threshold {TRIM_THRESHOLD // MiB} MiB, at most {ARENA_MAX} arenas"
        )
    return False, (
        f"glibc refused mallopt (mmap threshold ok: {mmap_ok}, trim ok: {trim_ok}, "
        f"arenas ok: {arenas_ok})"
    )
