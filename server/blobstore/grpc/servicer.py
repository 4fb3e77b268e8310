"""The gRPC BlobService: decodes requests, calls the BlobStore, encodes replies.

No storage rules live here. Errors are translated in one place
(`_translate_errors`, using the table in server/blobstore/status.py); anything
unexpected is logged with its traceback and reaches the client only as
INTERNAL with a reference to the log line.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.grpc import json_value, wire
from blobstore.ids import BlobId, parse_blob_id
from blobstore.limits import clamp_chunk_size
from blobstore.model import Blob, BlobInfo, BlobType, PutResult
from blobstore.proto_names import (
    BLOB_TYPE_FROM_PB,
    BLOB_TYPE_TO_PB,
    SERVICE_NAME,
    meta_from_pb,
    meta_to_pb,
)
from blobstore.status import to_item_error, to_status
from blobstore.store import BlobStore, PutSpec

log = logging.getLogger(__name__)

_TO_PB = BLOB_TYPE_TO_PB
_FROM_PB = BLOB_TYPE_FROM_PB

_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _translate_errors(handler: _Handler) -> _Handler:
    """Turns store errors into gRPC status for unary and streaming handlers alike."""

    async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        if isinstance(exc, errors.BlobStoreError):
            code, message, trailers = to_status(exc)
            await context.abort(code, message, trailers)
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s in %s", ref, handler.__name__, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal server error (log ref {ref})")

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                # aclosing: a cancelled call closes the handler (and what it holds) at once.
                async with contextlib.aclosing(handler(self, request, context)) as replies:
                    async for reply in replies:
                        yield reply
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:
                await fail(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: Any, *args: Any) -> Any:
        try:
            return await handler(self, request, context, *args)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await fail(context, exc)

    return unary_wrapper  # type: ignore[return-value]


translate_errors = _translate_errors
"""The same translation for the other adapters over the store (stepflow_servicer.py)."""


class BlobServicer(pb_grpc.BlobServiceServicer):
    """Implements blobstore.v1.BlobService over a BlobStore."""

    def __init__(self, store: BlobStore, *, removals_allowed: bool = True) -> None:
        """`removals_allowed`: serve Delete and Prune (the server decides: service/app.py)."""
        self._store = store
        self._removals_allowed = removals_allowed

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the service; the only way to (pb_grpc's generated registration is not).

        It differs from pb_grpc.add_BlobServiceServicer_to_server in three
        (de)serializers from blobstore.grpc.wire: GetStream's chunk messages
        come encoded and pass their serializer as they are, PutStream
        chunks are parsed without a copy, and a large Put's `json` Value is
        left serialized for the JSON worker.
        """

        def unary(method: Any, request: Any, reply: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )

        handlers = {
            "Put": grpc.unary_unary_rpc_method_handler(
                self.Put,
                request_deserializer=wire.parse_put_request,
                response_serializer=pb.PutResponse.SerializeToString,
            ),
            "Get": unary(self.Get, pb.GetRequest, pb.GetResponse),
            "Stat": unary(self.Stat, pb.StatRequest, pb.StatResponse),
            "FindMissing": unary(self.FindMissing, pb.FindMissingRequest, pb.FindMissingResponse),
            "BatchPut": unary(self.BatchPut, pb.BatchPutRequest, pb.BatchPutResponse),
            "BatchGet": unary(self.BatchGet, pb.BatchGetRequest, pb.BatchGetResponse),
            "PutStream": grpc.stream_unary_rpc_method_handler(
                self.PutStream,
                request_deserializer=wire.parse_put_stream_request,
                response_serializer=pb.PutResponse.SerializeToString,
            ),
            "GetStream": grpc.unary_stream_rpc_method_handler(
                self.GetStream,
                request_deserializer=pb.GetStreamRequest.FromString,
                response_serializer=wire.serialize_reply,
            ),
            "Delete": unary(self.Delete, pb.DeleteRequest, pb.DeleteResponse),
            "Prune": unary(self.Prune, pb.PruneRequest, pb.PruneResponse),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]

    @_translate_errors
    async def Put(
        self, request: pb.PutRequest | wire.JsonPutRequest, context: Any
    ) -> pb.PutResponse:
        spec = await self._put_spec(request)
        if spec.canonical:
            result = await self._store.put_canonical_json(
                spec.data, spec.expected_id, blob_type=spec.blob_type, meta=spec.meta
            )
        else:
            result = await self._store.put(spec.blob_type, spec.data, spec.expected_id, spec.meta)
        return _put_response(result)

    async def _put_spec(self, request: pb.PutRequest | wire.JsonPutRequest) -> PutSpec:
        """A PutRequest decoded: its type, content, expected id and metadata."""
        expected = _optional_id(request.expected_id, "expected_id")
        meta = meta_from_pb(request)
        if isinstance(request, wire.JsonPutRequest) or request.WhichOneof("content") == "json":
            blob_type = _blob_type(request.blob_type, default=BlobType.JSON)
            if not blob_type.is_json:
                raise errors.InvalidArgument(
                    "a `json` value can only be stored as BLOB_TYPE_JSON or BLOB_TYPE_FLOW"
                )
            limit = self._store.limits.max_json_values
            if isinstance(request, wire.JsonPutRequest):
                canonical = await json_value.canonical_json_of_serialized(request.json_bytes, limit)
            else:
                canonical = await json_value.canonical_json_of(request.json, limit)
            return PutSpec(blob_type, canonical, expected, meta, canonical=True)
        blob_type = _blob_type(request.blob_type, default=BlobType.BINARY)
        return PutSpec(blob_type, request.data, expected, meta)

    @_translate_errors
    async def Get(
        self,
        request: pb.GetRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> pb.GetResponse:
        """`reserve(size)`, from the guard, is called before the blob's content is read."""
        blob = await self._store.get(_required_id(request.id), reserve)
        return await _get_response(blob, request.as_json_value)

    @_translate_errors
    async def BatchPut(self, request: pb.BatchPutRequest, context: Any) -> pb.BatchPutResponse:
        """Each item decoded and stored as Put would; an item's error is its own."""
        self._store.check_batch(len(request.requests))
        decoded: list[PutSpec | errors.BlobStoreError] = []
        for item in request.requests:
            try:
                decoded.append(await self._put_spec(item))
            except errors.BlobStoreError as exc:
                decoded.append(exc)
        specs = [spec for spec in decoded if isinstance(spec, PutSpec)]
        stored = iter(await self._store.put_many(specs))
        results = []
        for spec in decoded:
            outcome = next(stored) if isinstance(spec, PutSpec) else spec
            if isinstance(outcome, errors.BlobStoreError):
                results.append(pb.BatchPutResult(error=to_item_error(outcome)))
            else:
                results.append(pb.BatchPutResult(response=_put_response(outcome)))
        return pb.BatchPutResponse(results=results)

    @_translate_errors
    async def BatchGet(
        self,
        request: pb.BatchGetRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> pb.BatchGetResponse:
        """Each blob or its own error; `reserve(size)` (the guard's) before each is read."""
        self._store.check_batch(len(request.ids))
        ids: list[BlobId | errors.BlobStoreError] = []
        for i, text in enumerate(request.ids):
            try:
                ids.append(_required_id(text, f"ids[{i}]"))
            except errors.BlobStoreError as exc:
                ids.append(exc)
        valid = [blob_id for blob_id in ids if not isinstance(blob_id, errors.BlobStoreError)]
        read = iter(await self._store.get_many(valid, reserve))
        results = []
        for blob_id in ids:
            outcome = blob_id if isinstance(blob_id, errors.BlobStoreError) else next(read)
            if isinstance(outcome, errors.BlobStoreError):
                results.append(pb.BatchGetResult(error=to_item_error(outcome)))
            else:
                reply = await _get_response(outcome, request.as_json_value)
                results.append(pb.BatchGetResult(response=reply))
        return pb.BatchGetResponse(results=results)

    @_translate_errors
    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        blob_id = _required_id(request.id)
        info = await self._store.stat(blob_id)
        if info is None:
            return pb.StatResponse(id=blob_id, exists=False)
        reply = pb.StatResponse(
            id=blob_id,
            exists=True,
            blob_type=_TO_PB[info.blob_type],
            size=info.size,
            **meta_to_pb(info.meta),
        )
        last_use = self._store.last_use(blob_id)
        if last_use is not None:
            reply.last_used.FromNanoseconds(int(last_use * 1e9))
        return reply

    @_translate_errors
    async def FindMissing(
        self, request: pb.FindMissingRequest, context: Any
    ) -> pb.FindMissingResponse:
        ids = [_required_id(text, f"ids[{i}]") for i, text in enumerate(request.ids)]
        missing = await self._store.find_missing(ids)
        return pb.FindMissingResponse(missing_ids=missing)

    @_translate_errors
    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        self._check_removals("Delete")
        ids = [_required_id(text, f"ids[{i}]") for i, text in enumerate(request.ids)]
        return pb.DeleteResponse(deleted_ids=await self._store.delete(ids))

    @_translate_errors
    async def Prune(self, request: pb.PruneRequest, context: Any) -> pb.PruneResponse:
        self._check_removals("Prune")
        report = await self._store.prune(request.older_than_seconds, dry_run=request.dry_run)
        return pb.PruneResponse(ids=report.blob_ids, total_bytes=report.total_bytes)

    def _check_removals(self, method: str) -> None:
        if not self._removals_allowed:
            raise errors.PermissionDenied(
                f"{method} is off on this server: it listens beyond loopback without "
                f"--tokens-file; start it with tokens (then {method} needs the admin scope) "
                "or --enable-delete"
            )

    @_translate_errors
    async def PutStream(
        self, request_iterator: AsyncIterator[pb.PutStreamRequest], context: Any
    ) -> pb.PutResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise errors.InvalidArgument("PutStream got no messages; the first must set blob_type")
        blob_type = _blob_type(first.blob_type, default=BlobType.BINARY)
        total = first.total_size if first.HasField("total_size") else None
        expected = _optional_id(first.expected_id, "expected_id")
        result = await self._store.put_stream(
            blob_type,
            _chunks(first, request_iterator),
            total_size=total,
            expected_id=expected,
            meta=meta_from_pb(first),
        )
        return _put_response(result)

    @_translate_errors
    async def GetStream(  # type: ignore[override]  # replies come encoded (add_to_server)
        self, request: pb.GetStreamRequest, context: Any
    ) -> AsyncIterator[pb.GetStreamResponse | bytes]:
        blob_id = _required_id(request.id)
        chunk_size = clamp_chunk_size(request.chunk_size)
        stream = await self._store.get_stream(blob_id, chunk_size)
        try:
            yield pb.GetStreamResponse(info=_info(stream.info))
            offset = 0
            async for chunk in stream:
                yield wire.chunk_message(offset, chunk)
                offset += len(chunk)
        finally:
            await stream.aclose()


async def _chunks(
    first: pb.PutStreamRequest, rest: AsyncIterator[pb.PutStreamRequest]
) -> AsyncIterator[bytes | memoryview]:
    """Yields the data of a PutStream, rejecting sequences that lie about their order."""
    received = 0
    message = first
    index = 0
    while True:
        if index > 0 and (
            message.blob_type
            or message.HasField("total_size")
            or message.expected_id
            or message.HasField("filename")
            or message.HasField("content_type")
        ):
            raise errors.InvalidArgument(
                f"message {index}: blob_type, total_size, expected_id, filename and "
                "content_type belong in the first message only"
            )
        if message.HasField("offset") and message.offset != received:
            raise errors.InvalidArgument(
                f"message {index}: chunk offset {message.offset} does not follow the "
                f"{received} bytes sent before it"
            )
        chunk = message.chunk  # each access copies the bytes (1 MiB): read it once
        received += len(chunk)
        yield chunk
        index += 1
        next_message = await anext(rest, None)
        if next_message is None:
            return
        message = next_message


async def _get_response(blob: Blob, as_json_value: bool) -> pb.GetResponse:
    info = blob.info
    fields = meta_to_pb(info.meta)
    if as_json_value and info.blob_type.is_json:
        value = await json_value.value_of(blob)
        return pb.GetResponse(
            id=info.blob_id, blob_type=_TO_PB[info.blob_type], size=info.size, json=value, **fields
        )
    return pb.GetResponse(
        id=info.blob_id, blob_type=_TO_PB[info.blob_type], size=info.size, data=blob.data, **fields
    )


def _info(info: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(
        id=info.blob_id, blob_type=_TO_PB[info.blob_type], size=info.size, **meta_to_pb(info.meta)
    )


def _put_response(result: PutResult) -> pb.PutResponse:
    info = result.info
    return pb.PutResponse(
        id=info.blob_id,
        blob_type=_TO_PB[info.blob_type],
        size=info.size,
        created=result.created,
        **meta_to_pb(info.meta),
    )


def _blob_type(value: int, *, default: BlobType) -> BlobType:
    if value == pb.BLOB_TYPE_UNSPECIFIED:
        return default
    try:
        return _FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise errors.InvalidArgument(
            f"unknown blob_type {value}; use BLOB_TYPE_JSON, BLOB_TYPE_FLOW or BLOB_TYPE_BINARY"
        ) from None


def _required_id(text: str, field: str = "id") -> BlobId:
    if not text:
        raise errors.InvalidBlobId(f"{field} is required: 'sha256:' + 64 lowercase hex digits")
    try:
        return parse_blob_id(text)
    except errors.InvalidBlobId as exc:
        raise errors.InvalidBlobId(f"{field}: {exc}") from None


def _optional_id(text: str, field: str) -> BlobId | None:
    return _required_id(text, field) if text else None
