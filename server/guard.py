"""The gate in front of BlobService: admission control, unparseable messages, draining.

A gRPC server interceptor, so every BlobService call passes one place before
the servicer sees it (health and reflection are not gated: operators must be
able to probe a busy server). It

* admits or refuses each call with server/admission.py. The call is counted
  when it arrives, before its request is read, so a refused call costs no
  memory: it is answered RESOURCE_EXHAUSTED (reason OVERLOADED) at once by a
  handler that never reads the request. Once read, the call's share of the
  byte budget is set to the data it holds - a unary request; a Get's reply
  (the blob's size, from a stat, before the blob is read); a stream's chunk in
  flight (all chunks of a Json PutStream, which the store gathers whole) - and
  refused the same way if that does not fit.
* turns request bytes that are not a valid protobuf message into
  INVALID_ARGUMENT, where grpc itself would answer UNKNOWN or INTERNAL.
* when the server stops, refuses new calls with UNAVAILABLE while those in
  progress finish (drain()), then ends those still running with UNAVAILABLE
  too (cut_off()).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from server import errors
from server.admission import Admission, Ticket
from server.api.blobstore.v1 import blobstore_pb2 as pb
from server.servicer import DEFAULT_CHUNK, MAX_CHUNK, MIN_CHUNK
from server.status import to_status

_SERVICE = pb.DESCRIPTOR.services_by_name["BlobService"]
_PREFIX = f"/{_SERVICE.full_name}/"
# Reserved for each PutStream for its chunk in flight: what our client sends. Larger
# chunks grow the reservation, which may be refused mid-stream when the budget is spent.
STREAM_ALLOWANCE = 1024 * 1024 + 1024
_Handler = Any  # grpc's RpcMethodHandler named tuple; grpc-stubs does not type its fields
_Context = grpc.aio.ServicerContext[Any, Any]

BlobSize = Callable[[str], Awaitable[int | None]]
"""Returns the stored size of the blob with this id, None if unknown; raises BlobStoreError."""


class Malformed:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, message: str) -> None:
        self.message = message


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps each BlobService call's handler; see the module docstring."""

    def __init__(self, admission: Admission, blob_size: BlobSize) -> None:
        self.admission = admission
        self._blob_size = blob_size
        self._deserializers: dict[str, Callable[[bytes], Any]] = {}
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

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_PREFIX):
            return handler
        if self._closing is not None:
            return _refusal(self._closing)
        name = method.removeprefix(_PREFIX)
        initial = STREAM_ALLOWANCE if handler.request_streaming else 0
        if handler.response_streaming:
            initial = DEFAULT_CHUNK
        try:
            ticket = self.admission.admit(initial)
        except errors.Overloaded as exc:
            return _refusal(exc)
        deserializer = self._deserializer(name, handler.request_deserializer)
        # A new handler per call: its behaviour owns the call's ticket.
        if handler.request_streaming:
            behavior = self._stream_unary(handler.stream_unary, ticket)
            return handler._replace(request_deserializer=deserializer, stream_unary=behavior)
        if handler.response_streaming:
            behavior = self._unary_stream(handler.unary_stream, ticket)
            return handler._replace(request_deserializer=deserializer, unary_stream=behavior)
        behavior = self._unary_unary(handler.unary_unary, ticket, is_get=name == "Get")
        return handler._replace(request_deserializer=deserializer, unary_unary=behavior)

    def _deserializer(self, name: str, inner: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        parse = self._deserializers.get(name)
        if parse is None:
            type_name = _SERVICE.methods_by_name[name].input_type.full_name
            parse = self._deserializers[name] = _tolerant(inner, type_name)
        return parse

    @contextlib.asynccontextmanager
    async def _running(self, context: _Context, ticket: Ticket) -> AsyncIterator[None]:
        """Frames one admitted call: releases its ticket, ends it cleanly if cut off."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if task is None or self._cut_off is None:
                raise
            task.uncancel()
            await _abort(context, self._cut_off)
        finally:
            self._tasks.discard(task)
            ticket.release()

    def _unary_unary(self, inner: Any, ticket: Ticket, *, is_get: bool) -> Any:
        async def behavior(request: Any, context: _Context) -> Any:
            async with self._running(context, ticket):
                if isinstance(request, Malformed):
                    await _abort(context, errors.InvalidArgument(request.message))
                await _resize(context, ticket, request.ByteSize())
                if is_get:
                    await self._reserve_reply(context, ticket, request)
                return await inner(request, context)

        return behavior

    async def _reserve_reply(
        self, context: _Context, ticket: Ticket, request: pb.GetRequest
    ) -> None:
        try:
            size = await self._blob_size(request.id)
        except errors.DataLoss as exc:
            # The lookup has quarantined the blob; the handler would only say NOT_FOUND.
            await _abort(context, exc)
        except errors.BlobStoreError:
            return  # the handler reports it
        if size is not None:
            await _resize(context, ticket, ticket.held + size)

    def _unary_stream(self, inner: Any, ticket: Ticket) -> Any:
        async def behavior(request: Any, context: _Context) -> AsyncIterator[Any]:
            async with self._running(context, ticket):
                if isinstance(request, Malformed):
                    await _abort(context, errors.InvalidArgument(request.message))
                chunk = min(max(request.chunk_size or DEFAULT_CHUNK, MIN_CHUNK), MAX_CHUNK)
                await _resize(context, ticket, request.ByteSize() + chunk)
                async for reply in inner(request, context):
                    yield reply

        return behavior

    def _stream_unary(self, inner: Any, ticket: Ticket) -> Any:
        async def behavior(requests: AsyncIterator[Any], context: _Context) -> Any:
            async with self._running(context, ticket):
                return await inner(_metered(requests, ticket), context)

        return behavior


async def _metered(requests: AsyncIterator[Any], ticket: Ticket) -> AsyncIterator[Any]:
    """Accounts each PutStream message while the store holds it.

    A Json stream that declares its total_size reserves all of it with its first
    message, so it is refused (or admitted) before it sends its data: streams that
    each hold part of a document and all need more would otherwise keep refusing each
    other half way. Errors raised here reach the client through the servicer's table.
    """
    allowance = ticket.held
    gathered = 0
    gathers: bool | None = None
    async for message in requests:
        if isinstance(message, Malformed):
            raise errors.InvalidArgument(message.message)
        if gathers is None:
            gathers = message.blob_type == pb.BLOB_TYPE_JSON
            if gathers and message.HasField("total_size"):
                allowance = max(allowance, message.total_size + message.ByteSize())
        size = message.ByteSize()
        if gathers:
            gathered += size
            size = gathered
        ticket.resize(max(allowance, size))
        yield message


def _refusal(error: errors.BlobStoreError) -> _Handler:
    """A handler that answers at once; as a request-streaming one it never reads the request."""

    async def refuse(requests: AsyncIterator[Any], context: _Context) -> Any:
        await _abort(context, error)

    return grpc.stream_unary_rpc_method_handler(refuse)


def _tolerant(deserialize: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any parse failure is the sender's fault
            return Malformed(f"malformed request, not a {type_name} message: {exc}")

    return parse


async def _resize(context: _Context, ticket: Ticket, nbytes: int) -> None:
    try:
        ticket.resize(nbytes)
    except errors.Overloaded as exc:
        await _abort(context, exc)


async def _abort(context: _Context, error: errors.BlobStoreError) -> NoReturn:
    code, message, trailers = to_status(error)
    await context.abort(code, message, trailers)
    raise AssertionError("unreachable: abort raises")
