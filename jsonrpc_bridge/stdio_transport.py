"""JSON-RPC over stdio: one message per line on stdin, one response per line on stdout.

The framing Stepflow's stdio transport used, so a component server can
spawn the bridge as a child process. Each line is handled as its own task
and its response is written as soon as it is ready, so a slow call never
holds up the ones behind it (responses may come out of order; ids match
them up). Blank lines are skipped; a line over the size limit is dropped
and answered with -32006 without ever being buffered whole. End of input
means: finish what is in flight, write its responses, then return.

Reading and writing happen in two small threads, so neither a slow peer
nor a file on stdin can block the event loop; only the writer thread
touches stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from typing import BinaryIO

from jsonrpc_bridge import errors
from jsonrpc_bridge.protocol import JsonRpcCore, encode_error

log = logging.getLogger("jsonrpc_bridge")

READ_SIZE = 64 * 1024
TOO_LONG = None
"""What LineFramer yields in place of a line that went over the limit."""


class LineFramer:
    """Splits a byte stream into lines of at most `limit` bytes, in bounded memory."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, chunk: bytes) -> list[bytes | None]:
        """The complete lines in `chunk` (with what came before); None for each too-long one."""
        out: list[bytes | None] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not self._discarding:
                    self._buffer += chunk[start:]
                    if len(self._buffer) > self._limit:
                        self._buffer.clear()
                        self._discarding = True
                        out.append(TOO_LONG)
                break
            if self._discarding:
                self._discarding = False  # already reported when it went over
            else:
                self._buffer += chunk[start:end]
                self._emit(out)
            start = end + 1
        return out

    def finish(self) -> list[bytes | None]:
        """At end of input: the last line if it had no newline."""
        out: list[bytes | None] = []
        if not self._discarding:
            self._emit(out)
        return out

    def _emit(self, out: list[bytes | None]) -> None:
        if len(self._buffer) > self._limit:
            out.append(TOO_LONG)
        elif self._buffer.strip():
            out.append(bytes(self._buffer))
        self._buffer.clear()


class _Writer:
    """Writes lines to `stream` from its own thread, flushing after each burst."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.broken = False
        self._thread = threading.Thread(target=self._run, name="stdout-writer", daemon=True)
        self._thread.start()

    def send(self, line: bytes) -> None:
        self._queue.put(line)

    async def close(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            burst: list[bytes] = []
            while item is not None:
                burst.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if burst and not self.broken:
                try:
                    self._stream.write(b"\n".join(burst) + b"\n")
                    self._stream.flush()
                except OSError as exc:  # the reader went away; keep draining, write nothing
                    log.warning("cannot write to stdout (%s); responses are dropped", exc)
                    self.broken = True
            if item is None:
                return


def _read_stdin(fd: int, loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[bytes]) -> None:
    """Thread body: moves what arrives on `fd` into `chunks`; b"" marks end of input."""
    while True:
        try:
            chunk = os.read(fd, READ_SIZE)
        except OSError as exc:
            log.warning("cannot read stdin (%s); treating it as end of input", exc)
            chunk = b""
        try:
            # Waits while the queue is full: back-pressure instead of unbounded buffering.
            asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
        except (RuntimeError, asyncio.CancelledError):
            return  # the loop has stopped
        if not chunk:
            return


async def serve(
    core: JsonRpcCore,
    *,
    max_line_bytes: int,
    stop: asyncio.Event,
    stdin_fd: int,
    stdout: BinaryIO,
) -> None:
    """Serves until end of input on `stdin_fd` or `stop`, then finishes in-flight calls."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=8)
    threading.Thread(
        target=_read_stdin, args=(stdin_fd, loop, chunks), name="stdin-reader", daemon=True
    ).start()
    writer = _Writer(stdout)
    framer = LineFramer(max_line_bytes)
    in_flight: set[asyncio.Task[None]] = set()
    too_long = encode_error(None, errors.request_too_large(max_line_bytes))

    async def answer(line: bytes) -> None:
        response = await core.handle(line)
        if response is not None:
            writer.send(response)

    def dispatch(lines: list[bytes | None]) -> None:
        for line in lines:
            if line is TOO_LONG:
                writer.send(too_long)
                continue
            task = asyncio.create_task(answer(line))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    stopping = asyncio.create_task(stop.wait())
    try:
        while True:
            receiving = asyncio.create_task(chunks.get())
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                break
            chunk = receiving.result()
            if not chunk:
                dispatch(framer.finish())
                break
            dispatch(framer.feed(chunk))
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await writer.close()
