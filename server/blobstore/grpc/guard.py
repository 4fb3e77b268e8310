"""The gate in front of the blob services: admission control, unparseable messages, draining.

A gRPC server interceptor, so every call of blobstore.v1.BlobService and of
stepflow.v1.BlobService (the same store) passes one place before the servicer
sees it (health and reflection are not gated: operators must be able to probe a
busy server). It

* admits or refuses each call with server/blobstore/service/admission.py. The call is counted
  when it arrives, before its request is read, so a refused call costs no
  memory: it is answered RESOURCE_EXHAUSTED (reason OVERLOADED) at once by a
  handler that never reads the request. Once read, the call's share of the
  byte budget is set to the data it holds - a unary request; a Get's reply
  (reserved by the read itself through the `reserve` callback the servicer
  gets, once the blob's size is known and before its content is read); a
  stream's chunk in flight (all chunks of a Json PutStream, which the store
  gathers whole) - and refused the same way if that does not fit.
* turns request bytes that are not a valid protobuf message into
  INVALID_ARGUMENT, where grpc itself would answer UNKNOWN or INTERNAL.
* reads the rest of a PutStream that the servicer refused half way (a
  declared size over the limit...) before its status goes out (up to
  DRAIN_LIMIT), so that a client still writing receives that status.
* when the server stops, refuses new calls with UNAVAILABLE while those in
  progress finish (drain()), then ends those still running with UNAVAILABLE
  too (cut_off()).
* ends idle streams: a PutStream that sends no message, or a GetStream whose
  reader takes no chunk, for `stream_idle` seconds gets UNAVAILABLE (PutStream)
  or is cancelled (GetStream: its status could not reach a reader that does not
  read), which releases its temp file or open blob and its byte budget. gRPC
  buffers a few chunks of a GetStream that the reader has not taken
  (GET_STREAM_BUFFERED_CHUNKS, measured), and that is charged to the budget too.

Everything that does not change from call to call (the wrapped behaviour,
the tolerant deserializer) is built once per method, as one handler that every
call of the method gets: a call's ticket goes from the interceptor, which admits
the call before its request is read, to the behaviour in a context variable
(grpc.aio runs both in the call's task). So the guard copies no handler per call,
and what interceptors outside it build from its handler (grpc/metrics.py) is
built once too. This runs for every call, so it is kept to plain code: no
context managers or extra coroutine layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

# What a failed write raises; grpc exports no public name for it (nor stubs for its module).
from grpc._cython.cygrpc import ExecuteBatchError  # type: ignore[import-not-found]

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.grpc.interceptor_base import Context, GatedInterceptor, Handler
from blobstore.limits import DEFAULT_CHUNK, clamp_chunk_size
from blobstore.service.admission import Admission, Ticket
from blobstore.status import to_status

log = logging.getLogger(__name__)
# Reserved for each PutStream for its chunk in flight: what our client sends. Larger
# chunks grow the reservation, which may be refused mid-stream when the budget is spent.
STREAM_ALLOWANCE = 1024 * 1024 + 1024
# Most bytes of a stream refused half way that are read (and dropped) before the refusal.
DRAIN_LIMIT = 64 * 1024 * 1024
# Chunks of a GetStream that gRPC holds when the reader does not read: about 2.8 per
# stream measured with 1 MiB chunks (120 unread streams, one channel); rounded up.
GET_STREAM_BUFFERED_CHUNKS = 4
# Methods whose handler takes a third argument, `reserve(nbytes)`, to size its reply.
_RESERVING = frozenset({"Get", "GetBlob", "BatchGet"})
_Handler = Handler
_Context = Context
# The ticket of the call in this task: set by Guard.intercept, read by the behaviours.
_TICKET: contextvars.ContextVar[Ticket] = contextvars.ContextVar("blobstore_guard_ticket")


class Malformed:
    """Stands in for a request message that could not be parsed."""

    __slots__ = ("message", "size")

    def __init__(self, message: str, size: int) -> None:
        self.message = message
        self.size = size

    def ByteSize(self) -> int:
        """The size of the bytes that did not parse (what a drain counts)."""
        return self.size


class Guard(GatedInterceptor["_Method"]):
    """Wraps each blob service call's handler; see the module docstring."""

    def __init__(
        self,
        admission: Admission,
        stream_idle: float = 60.0,
        on_release: Callable[[int], None] | None = None,
    ) -> None:
        """`on_release(nbytes)` is told, as each call ends, the bytes it held (malloc trim)."""
        super().__init__()
        self.admission = admission
        self.stream_idle = stream_idle
        self.on_release = on_release
        self._closing: errors.Unavailable | None = None
        self._cut_off: errors.Unavailable | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def drain(self) -> None:
        """From now on refuses new calls with UNAVAILABLE; calls in progress go on.

        gRPC's own stop() cancels calls that arrive while it waits (the client sees
        CANCELLED, which nothing retries); refusing them here first keeps them clean.
        """
        self._closing = errors.Unavailable(
            "server is shutting down; retry shortly (against a restarted or another server)"
        )

    def cut_off(self) -> None:
        """Ends the calls still in progress with UNAVAILABLE (the grace period is over).

        Left to gRPC's stop() they would end with a logged CancelledError traceback.
        """
        self._cut_off = errors.Unavailable(
            "server is shutting down and this call did not finish within the grace period; "
            "retry shortly"
        )
        for task in list(self._tasks):
            task.cancel()

    def build(self, service: Any, name: str, handler: _Handler) -> _Method:
        return _Method(self, service, name, handler)

    def intercept(
        self, method: _Method, handler: _Handler, details: grpc.HandlerCallDetails
    ) -> _Handler:
        drain = self.stream_idle if handler.request_streaming else None
        if self._closing is not None:
            return refusal(self._closing, drain)
        try:
            ticket = self.admission.admit(method.initial)
        except errors.Overloaded as exc:
            return refusal(exc, drain)
        _TICKET.set(ticket)
        return method.handler


class _Method:
    """One blob service method as the guard runs it: its handler, built once."""

    __slots__ = ("handler", "initial")

    def __init__(self, guard: Guard, service: Any, name: str, inner: _Handler) -> None:
        type_name = service.methods_by_name[name].input_type.full_name
        behavior: functools.partial[Any]
        if inner.request_streaming:
            self.initial, slot = STREAM_ALLOWANCE, "stream_unary"
            behavior = functools.partial(_stream_unary, guard, inner.stream_unary)
        elif inner.response_streaming:  # our behaviour writes its replies (see _unary_stream)
            self.initial, slot = DEFAULT_CHUNK, "unary_stream"
            behavior = functools.partial(_unary_stream, guard, inner.unary_stream)
        else:
            self.initial, slot = 0, "unary_unary"
            behavior = functools.partial(_unary_unary, guard, inner.unary_unary, name in _RESERVING)
        self.handler = inner._replace(
            request_deserializer=_tolerant(inner.request_deserializer, type_name),
            **{slot: behavior},
        )


# The behaviours are module functions, bound with functools.partial: grpc asks
# inspect.iscoroutinefunction / isasyncgenfunction, which see through partials.


async def _unary_unary(
    guard: Guard, inner: Any, reserves: bool, request: Any, context: _Context
) -> Any:
    """`reserves`: the handler takes the ticket's grow() to reserve its reply (Get)."""
    ticket = _TICKET.get()
    task = _enter(guard)
    try:
        if (refused := _refuse_request(ticket, request)) is not None:
            await abort_call(context, refused)
        if reserves:
            return await inner(request, context, ticket.grow)
        return await inner(request, context)
    except asyncio.CancelledError:
        if (error := _cut_off(guard, task)) is None:
            raise
        await abort_call(context, error)
    finally:
        _leave(guard, task, ticket)


async def _unary_stream(guard: Guard, inner: Any, request: Any, context: _Context) -> None:
    """Writes the replies itself (grpc's reader-writer API) rather than yielding them.

    When a reader cancels, the write under way fails. Yielded replies are written by
    grpc, which logs that failure as an error with its traceback unless it has already
    seen the cancellation (a race: about one unread GetStream in a hundred); written
    here, the failure ends the call as grpc ends a cancelled one, quietly.
    """
    ticket = _TICKET.get()
    task = _enter(guard)
    try:
        if type(request) is Malformed:
            await abort_call(context, errors.InvalidArgument(request.message))
        chunk = clamp_chunk_size(request.chunk_size)
        await _resize(context, ticket, request.ByteSize() + GET_STREAM_BUFFERED_CHUNKS * chunk)
        loop = asyncio.get_running_loop()
        async with contextlib.aclosing(inner(request, context)) as replies:
            async for reply in replies:
                # The write returns once gRPC takes the message; a reader that stops
                # reading stops that, and the stream is cancelled after stream_idle s.
                idle = loop.call_later(guard.stream_idle, _cancel_idle, task)
                try:
                    await context.write(reply)
                except ExecuteBatchError:
                    raise _ReaderGone from None
                finally:
                    idle.cancel()
    except _ReaderGone:
        raise asyncio.CancelledError from None
    except asyncio.CancelledError:
        if (error := _cut_off(guard, task)) is None:
            raise
        await abort_call(context, error)
    finally:
        _leave(guard, task, ticket)


class _ReaderGone(Exception):
    """A GetStream's write failed: its reader cancelled or its connection is gone."""


async def _stream_unary(
    guard: Guard, inner: Any, requests: AsyncIterator[Any], context: _Context
) -> Any:
    ticket = _TICKET.get()
    task = _enter(guard)
    try:
        metered = _metered(requests, ticket, guard.stream_idle)
        return await inner(metered, _DrainFirst(context, requests, guard.stream_idle))
    except asyncio.CancelledError:
        if (error := _cut_off(guard, task)) is None:
            raise
        await abort_call(context, error)
    finally:
        _leave(guard, task, ticket)


class _DrainFirst:
    """A PutStream's context whose abort() first reads the rest of the client's stream.

    The servicer refuses a stream half way (a declared total_size over the limit, a
    bad first message...) by aborting, which sends the status at once: a client still
    writing may then lose it (see _drain). Reading the rest first (nothing if it was
    all read) lets the status arrive. Everything else is the call's own context.
    """

    __slots__ = ("_context", "_idle", "_requests")

    def __init__(self, context: _Context, requests: AsyncIterator[Any], idle: float) -> None:
        self._context = context
        self._requests = requests
        self._idle = idle

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        with contextlib.suppress(Exception):  # best effort: the status goes out regardless
            await _drain(self._requests, self._idle)
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("unreachable: abort raises")


def _cancel_idle(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        log.info("cancelling a GetStream whose reader took no chunk for the idle time")
        task.cancel()


def _enter(guard: Guard) -> asyncio.Task[Any] | None:
    """Registers the running call with the guard, so that cut_off() can end it."""
    task = asyncio.current_task()
    if task is not None:
        guard._tasks.add(task)
    return task


def _leave(guard: Guard, task: asyncio.Task[Any] | None, ticket: Ticket) -> None:
    guard._tasks.discard(task)
    held = ticket.held
    ticket.release()
    if guard.on_release is not None:
        guard.on_release(held)


def _cut_off(guard: Guard, task: asyncio.Task[Any] | None) -> errors.Unavailable | None:
    """The error to end a cancelled call with if cut_off() cancelled it (None: re-raise)."""
    if task is None or guard._cut_off is None:
        return None
    task.uncancel()
    return guard._cut_off


def _refuse_request(ticket: Ticket, request: Any) -> errors.BlobStoreError | None:
    """Sizes the call's ticket to its unary request; the error to end the call with, if any."""
    if type(request) is Malformed:
        return errors.InvalidArgument(request.message)
    try:
        ticket.resize(request.ByteSize())
    except errors.Overloaded as exc:
        return exc
    return None


async def _metered(requests: AsyncIterator[Any], ticket: Ticket, idle: float) -> AsyncIterator[Any]:
    """Accounts each PutStream message while the store holds it.

    A Json stream that declares its total_size reserves all of it with its first
    message, so it is refused (or admitted) before it sends its data: streams that
    each hold part of a document and all need more would otherwise keep refusing each
    other half way. Errors raised here reach the client through the servicer's table.
    """
    allowance = ticket.held
    gathered = 0
    gathers: bool | None = None
    while True:
        try:
            async with asyncio.timeout(idle):
                message = await anext(requests)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise errors.Unavailable(
                f"PutStream sent no message for {idle:g} s (--stream-idle-seconds); ended, "
                "nothing stored"
            ) from None
        if isinstance(message, Malformed):
            raise errors.InvalidArgument(message.message)
        if gathers is None:
            gathers = message.blob_type in (pb.BLOB_TYPE_JSON, pb.BLOB_TYPE_FLOW)
            if gathers and message.HasField("total_size"):
                allowance = max(allowance, message.total_size + message.ByteSize())
        size = message.ByteSize()
        if gathers:
            gathered += size
            size = gathered
        try:
            ticket.resize(max(allowance, size))
        except errors.Overloaded:
            await _drain(requests, idle)
            raise
        yield message


async def _drain(requests: AsyncIterator[Any], idle: float) -> None:
    """Reads and drops the rest of a refused stream (up to DRAIN_LIMIT bytes) before the refusal.

    grpcio's asyncio client loses the server's status when the call ends while it is
    still writing: its failed write sets the call's status to INTERNAL "Internal error
    from Core" (grpc/grpc#36066, grpc/aio/_call.py `_write`). Once the client has sent
    everything, the status reaches it intact. Messages are dropped one by one, so the
    drain costs bandwidth, never memory; a longer stream is ended anyway.
    """
    drained = 0
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        while drained < DRAIN_LIMIT:
            async with asyncio.timeout(idle):
                message = await anext(requests)
            drained += len(message) if isinstance(message, bytes) else message.ByteSize()


def refusal(
    error: errors.BlobStoreError,
    drain: float | None,
    wait: Callable[[_Context], Awaitable[None]] | None = None,
) -> _Handler:
    """A handler that answers at once, without parsing the request.

    `drain` (the idle timeout; None for unary methods): a client stream is read to its
    end (up to DRAIN_LIMIT, message by message, never held) before the answer, which
    a client still writing would otherwise lose (see _drain). `wait(context)`, if
    given, is awaited before the answer (the slow-down of a peer that keeps failing
    to authenticate, grpc/auth.py).
    """

    async def refuse(requests: AsyncIterator[Any], context: _Context) -> Any:
        if drain is not None:
            await _drain(requests, drain)
        if wait is not None:
            await wait(context)
        await abort_call(context, error)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _tolerant(deserialize: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parse failure is the sender's fault
            return Malformed(f"malformed request, not a {type_name} message: {exc}", len(data))

    return parse


async def _resize(context: _Context, ticket: Ticket, nbytes: int) -> None:
    try:
        ticket.resize(nbytes)
    except errors.Overloaded as exc:
        await abort_call(context, exc)


async def abort_call(context: _Context, error: errors.BlobStoreError) -> NoReturn:
    code, message, trailers = to_status(error)
    try:
        await context.abort(code, message, trailers)
    except ExecuteBatchError:
        # The status could not be sent: the client cancelled or its connection is gone
        # (at shutdown, gRPC cancels every call left). Ended like a cancelled call, so
        # grpc does not log the failed send as an error with its traceback.
        raise asyncio.CancelledError from None
    raise AssertionError("unreachable: abort raises")
