"""Running CPU-heavy work (hashing, JSON) off the event loop when the input is large.

Small inputs run inline, large ones in a thread (`offload`). Work that holds the GIL
for long in one C call - parsing a JSON text of millions of values - would stall
the event loop from a thread too, so it runs in a worker process
(`offload_to_process`): one process, started on first use, so at most one such
parse (and its memory) exists at a time; the others wait their turn. The worker
ends when its parent does, even a parent killed with SIGKILL (`_die_with_parent`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

_A = TypeVar("_A")
_R = TypeVar("_R")

INLINE_LIMIT = 256 * 1024
"""Below this many bytes the work is cheaper than a thread hop (SHA-256 runs at
~0.5-2 GB/s, so 256 KiB is well under a millisecond of event-loop time)."""


async def offload(size: int, func: Callable[[_A], _R], arg: _A) -> _R:
    """Returns func(arg), computed in a thread if `size` is over INLINE_LIMIT.

    hashlib releases the GIL on large buffers, so offloaded hashing also runs
    in parallel with the event loop, not just interleaved with it.
    """
    if size <= INLINE_LIMIT:
        return func(arg)
    return await asyncio.to_thread(func, arg)


_pool: concurrent.futures.ProcessPoolExecutor | None = None


async def offload_to_process(func: Callable[[_A], _R], arg: _A) -> _R:
    """Returns func(arg) computed in the worker process; func, arg and result must pickle."""
    global _pool
    if _pool is None:
        # spawn, not fork: a forked copy of a process running gRPC threads is unsafe.
        _pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_pool, func, arg)
    except concurrent.futures.process.BrokenProcessPool:
        # The worker died (killed, out of memory): start a new one for the next call.
        _pool = None
        raise


def shutdown_process_pool() -> None:
    """Stops the worker process, if one was started (the server calls this when it stops)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


PARENT_POLL_SECONDS = 1.0
"""How often the worker checks that its parent lives, where PR_SET_PDEATHSIG is missing."""
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Runs first in the worker: end it when `parent` ends, however that happens.

    A worker waits for work on a pipe whose write end it holds itself (multiprocessing
    passes both ends of its queue), so it never sees its parent go and would outlive a
    server killed with SIGKILL, holding its memory. On Linux the kernel sends SIGKILL
    to the worker when the parent's thread that started it (the event loop's, which
    lives as long as the process) ends; a thread that polls getppid() covers other
    systems and the instant before prctl() took effect.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the poll below still ends the worker
    if os.getppid() != parent:  # the parent died before prctl() was in place
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
