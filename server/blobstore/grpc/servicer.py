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
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.ids import BlobId, parse_blob_id
from blobstore.model import Blob, BlobInfo, BlobMetadata, BlobType, PutResult
from blobstore.offload import offload
from blobstore.status import to_status
from blobstore.store import BlobStore

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 1024 * 1024
MIN_CHUNK = 4 * 1024
MAX_CHUNK = 4 * 1024 * 1024

_TO_PB = {
    BlobType.JSON: pb.BLOB_TYPE_JSON,
    BlobType.FLOW: pb.BLOB_TYPE_FLOW,
    BlobType.BINARY: pb.BLOB_TYPE_BINARY,
}
_FROM_PB = {value: key for key, value in _TO_PB.items()}
# Field 2 (blob_type, varint) of GetResponse and PutResponse on the wire.
_TYPE_FIELD = {key: bytes((0x10, value)) for key, value in _TO_PB.items()}
_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]

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


class BlobServicer(pb_grpc.BlobServiceServicer):
    """Implements blobstore.v1.BlobService over a BlobStore."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._encoded_replies = False  # set by add_to_server

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the service, as pb_grpc.add_BlobServiceServicer_to_server would.

        One difference: the replies of Put, of Get (with data) and GetStream's
        chunk messages are encoded here (_put_reply, _get_reply,
        _chunk_message) and pass their serializer as they are, which saves
        building a message and a copy of the data (with the generated
        registration they stay messages).
        """
        self._encoded_replies = True

        def unary(method: Any, request: Any, reply: Any) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )

        handlers = {
            "Put": grpc.unary_unary_rpc_method_handler(
                self.Put,
                request_deserializer=pb.PutRequest.FromString,
                response_serializer=_serialize_reply,
            ),
            "Get": grpc.unary_unary_rpc_method_handler(
                self.Get,
                request_deserializer=pb.GetRequest.FromString,
                response_serializer=_serialize_reply,
            ),
            "Stat": unary(self.Stat, pb.StatRequest, pb.StatResponse),
            "FindMissing": unary(self.FindMissing, pb.FindMissingRequest, pb.FindMissingResponse),
            "PutStream": grpc.stream_unary_rpc_method_handler(
                self.PutStream,
                request_deserializer=parse_put_stream_request,
                response_serializer=pb.PutResponse.SerializeToString,
            ),
            "GetStream": grpc.unary_stream_rpc_method_handler(
                self.GetStream,
                request_deserializer=pb.GetStreamRequest.FromString,
                response_serializer=_serialize_reply,
            ),
        }
        name = pb.DESCRIPTOR.services_by_name["BlobService"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]

    @_translate_errors
    async def Put(  # type: ignore[override]  # replies may come encoded (add_to_server)
        self, request: pb.PutRequest, context: Any
    ) -> pb.PutResponse | bytes:
        expected = _optional_id(request.expected_id, "expected_id")
        metadata = BlobMetadata.checked(request.filename, request.content_type)
        content = request.WhichOneof("content")
        if content == "json":
            blob_type = _blob_type(request.blob_type, default=BlobType.JSON)
            if not blob_type.holds_json:
                raise errors.InvalidArgument(
                    "a `json` value can only be stored as BLOB_TYPE_JSON or BLOB_TYPE_FLOW"
                )
            size = request.json.ByteSize()
            value = await offload(size, _value_to_python, request.json)
            result = await self._store.put_json_value(
                value, expected, size_hint=size, blob_type=blob_type, metadata=metadata
            )
        else:
            blob_type = _blob_type(request.blob_type, default=BlobType.BINARY)
            result = await self._store.put(blob_type, request.data, expected, metadata)
        if self._encoded_replies:
            return _put_reply(result)
        return pb.PutResponse(**_info_kwargs(result.info), created=result.created)

    @_translate_errors
    async def Get(  # type: ignore[override]  # replies may come encoded (add_to_server)
        self,
        request: pb.GetRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> pb.GetResponse | bytes:
        """`reserve(size)`, from the guard, is called before the blob's content is read."""
        blob = await self._store.get(_required_id(request.id), reserve)
        info = blob.info
        if request.as_json_value and info.blob_type.holds_json:
            value = await offload(len(blob.data), _python_to_value, blob)
            return pb.GetResponse(**_info_kwargs(info), json=value)
        if self._encoded_replies:
            return _get_reply(info, blob.data)
        return pb.GetResponse(**_info_kwargs(info), data=blob.data)

    @_translate_errors
    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        blob_id = _required_id(request.id)
        info = await self._store.stat(blob_id)
        if info is None:
            return pb.StatResponse(id=blob_id, exists=False)
        return pb.StatResponse(exists=True, **_info_kwargs(info))

    @_translate_errors
    async def FindMissing(
        self, request: pb.FindMissingRequest, context: Any
    ) -> pb.FindMissingResponse:
        ids = [_required_id(text, f"ids[{i}]") for i, text in enumerate(request.ids)]
        missing = await self._store.find_missing(ids)
        return pb.FindMissingResponse(missing_ids=missing)

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
            metadata=BlobMetadata.checked(first.filename, first.content_type),
        )
        return pb.PutResponse(**_info_kwargs(result.info), created=result.created)

    @_translate_errors
    async def GetStream(  # type: ignore[override]  # replies may come encoded (add_to_server)
        self, request: pb.GetStreamRequest, context: Any
    ) -> AsyncIterator[pb.GetStreamResponse | bytes]:
        blob_id = _required_id(request.id)
        chunk_size = min(max(request.chunk_size or DEFAULT_CHUNK, MIN_CHUNK), MAX_CHUNK)
        stream = await self._store.get_stream(blob_id, chunk_size)
        try:
            yield pb.GetStreamResponse(info=_info(stream.info))
            offset = 0
            async for chunk in stream:
                if self._encoded_replies:
                    yield _chunk_message(offset, chunk)
                else:
                    yield pb.GetStreamResponse(offset=offset, chunk=chunk)
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
            or message.filename
            or message.content_type
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


def _put_reply(result: PutResult) -> bytes:
    """PutResponse(id=..., blob_type=..., size=..., created=..., filename=...,
    content_type=...) in protobuf wire format."""
    created = b"\x20\x01" if result.created else b""
    metadata = _metadata_fields(result.info.metadata, first_field=5)
    return b"".join((*_info_fields(result.info), created, *metadata))


def _get_reply(info: BlobInfo, data: bytes) -> bytes:
    """GetResponse(id=..., blob_type=..., size=..., data=data, filename=..., content_type=...)
    in protobuf wire format.

    One join instead of building a message and serialising it (which also
    copies the data twice). Fields in number order, defaults left out as
    protobuf does, except `data`: a oneof member is always written.
    """
    metadata = _metadata_fields(info.metadata, first_field=6)
    return b"".join((*_info_fields(info), b"\x22", _varint(len(data)), data, *metadata))


def _metadata_fields(metadata: BlobMetadata, first_field: int) -> tuple[bytes, ...]:
    """`filename` (field `first_field`) and `content_type` (the next), those that are set."""
    fields: list[bytes] = []
    for number, text in enumerate((metadata.filename, metadata.content_type), first_field):
        if text is not None:
            encoded = text.encode()
            fields += (bytes(((number << 3) | 2,)), _varint(len(encoded)), encoded)
    return tuple(fields)


def _info_fields(info: BlobInfo) -> tuple[bytes, ...]:
    """Fields 1-3 (id, blob_type, size), which PutResponse and GetResponse share."""
    blob_id = info.blob_id.encode()
    size = b"\x18" + _varint(info.size) if info.size else b""
    return (b"\x0a", _varint(len(blob_id)), blob_id, _TYPE_FIELD[info.blob_type], size)


def _chunk_message(offset: int, chunk: bytes) -> bytes:
    """GetStreamResponse(offset=offset, chunk=chunk) in protobuf wire format.

    Building the message and serialising it would copy the chunk twice; this
    copies it once.
    """
    return b"".join((b"\x10", _varint(offset), b"\x1a", _varint(len(chunk)), chunk))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class ChunkMessage:
    """A PutStreamRequest that holds only a chunk (and maybe its offset): the common case.

    Has the attributes and methods of the message that the guard and the
    servicer use, with the message's defaults for the fields it lacks.
    """

    __slots__ = ("_has_offset", "_size", "chunk", "offset")
    blob_type = pb.BLOB_TYPE_UNSPECIFIED
    total_size = 0
    expected_id = ""
    filename = ""
    content_type = ""

    def __init__(self, chunk: memoryview, offset: int | None, size: int) -> None:
        self.chunk = chunk
        self.offset = offset or 0
        self._has_offset = offset is not None
        self._size = size

    def HasField(self, name: str) -> bool:
        return name == "offset" and self._has_offset

    def ByteSize(self) -> int:
        return self._size


def parse_put_stream_request(data: bytes) -> pb.PutStreamRequest | ChunkMessage:
    """Parses a PutStream message, copying its chunk once instead of twice.

    Protobuf would copy the chunk into the message and again at each
    `.chunk` access. A message that is exactly [offset] chunk, as every
    client sends after the first message, is answered here with a view of
    the received bytes (no copy); anything else
    (other fields, repeats, odd encodings, garbage) goes to protobuf, which
    decides and reports exactly as before.
    """
    pos = 0
    offset = None
    if data[:1] == b"\x20":  # field 4 (offset), varint
        offset, pos = _read_varint(data, 1)
    if (offset is not None and offset < 0) or data[pos : pos + 1] != b"\x2a":  # field 5, bytes
        return pb.PutStreamRequest.FromString(data)
    length, start = _read_varint(data, pos + 1)
    if length < 0 or start + length != len(data):
        return pb.PutStreamRequest.FromString(data)
    return ChunkMessage(memoryview(data)[start:], offset, len(data))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); value -1 if the varint is broken or over 64 bits."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            return -1, pos
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, pos) if value < 1 << 64 else (-1, pos)
    return -1, pos


def _serialize_reply(reply: Message | bytes) -> bytes:
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def _value_to_python(value: struct_pb2.Value) -> object:
    if value.WhichOneof("kind") is None:
        raise errors.InvalidJson("json: the Value has no kind set (JSON null is null_value)")
    try:
        return json_format.MessageToDict(value)
    except ValueError as exc:  # NaN or Infinity in a number_value
        raise errors.InvalidJson(f"json: {exc}") from None


def _python_to_value(blob: Blob) -> struct_pb2.Value:
    value = struct_pb2.Value()
    try:
        json_format.Parse(blob.data, value)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(
            f"blob {blob.info.blob_id} cannot be returned as a protobuf Value ({exc}); "
            "read it without as_json_value"
        ) from None
    return value


def _info(info: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(**_info_kwargs(info))


def _info_kwargs(info: BlobInfo) -> dict[str, Any]:
    """The fields every reply shares: id, blob_type, size, and the metadata that is set."""
    return {
        "id": info.blob_id,
        "blob_type": _TO_PB[info.blob_type],
        "size": info.size,
        "filename": info.metadata.filename,
        "content_type": info.metadata.content_type,
    }


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
