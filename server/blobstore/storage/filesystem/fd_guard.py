"""A file descriptor used from pool threads and closed only once no thread is using it;
and opening one on a pool thread for a caller that may give up meanwhile (open_on_pool).

Shared by the streamed read (read.py) and the streamed put (writer.py, backend.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from blobstore.errors import Unavailable

_T = TypeVar("_T")


async def open_on_pool(
    pool: ThreadPoolExecutor, open_it: Callable[[], _T], discard: Callable[[_T], None]
) -> _T:
    """`open_it()` on a pool thread. If the caller is cancelled while the thread is at it,
    the thread still opens (a running thread cannot be stopped): `discard` then gets what
    it opened, on the event loop, so no descriptor or temp file outlives the caller."""
    opening = asyncio.get_running_loop().run_in_executor(pool, open_it)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:

        def opened(done: asyncio.Future[_T]) -> None:
            if not done.cancelled() and done.exception() is None:
                discard(done.result())

        opening.add_done_callback(opened)
        raise


class FdGuard:
    """See the module docstring.

    A cancelled caller stops waiting for its pool thread, but the thread goes
    on with the descriptor. Closing it at that moment would let a concurrent
    open() reuse the number, and the late write would land in another file.
    """

    def __init__(self, pool: ThreadPoolExecutor, fd: int) -> None:
        self._pool = pool
        self._fd: int | None = fd
        self._busy: asyncio.Future[Any] | None = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    async def run(self, func: Callable[[int], _T]) -> _T:
        fd = self._fd
        if fd is None:
            raise Unavailable("the file was already closed")
        future = asyncio.get_running_loop().run_in_executor(self._pool, func, fd)
        future.add_done_callback(_retrieve)
        self._busy = future
        return await asyncio.shield(future)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Closes the descriptor (and calls `then`) now, or when the running operation ends."""
        fd, self._fd = self._fd, None
        if fd is None:
            return

        def finish(_: object = None) -> None:
            os.close(fd)
            if then is not None:
                then()

        busy = self._busy
        if busy is None or busy.done():
            finish()
        else:
            busy.add_done_callback(finish)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a shielded operation's failure as seen when its caller was cancelled."""
    if not future.cancelled():
        future.exception()
