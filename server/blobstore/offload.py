"""Running CPU-heavy work (hashing, JSON) off the event loop when the input is large."""

from __future__ import annotations

import asyncio
import hashlib
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


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
