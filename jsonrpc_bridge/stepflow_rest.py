"""Stepflow's REST blob routes on the bridge's HTTP port, as calls to blobstore.v1.

    POST /api/v1/blobs       JSON body {"data"|"json_data"|"jsonData": value,
                             "blobType"|"blob_type"?, "filename"?}, or the raw bytes
                             of a binary blob (Content-Type application/octet-stream,
                             optional X-Blob-Filename)         -> 200 {"blobId", "filename"?}
    GET  /api/v1/blobs/{id}  -> 200 {"data", "blobType", "blobId", "filename"?,
                             "contentType"?}, or with Accept: application/octet-stream
                             the stored bytes and an x-blob-type header

Ids are Stepflow's: the bare 64 hex digits (upper case accepted), the same
blob as "sha256:<hex>" in blobstore.v1. A malformed body, type or id is 400, an
unknown id 404; other store errors get their HTTP meaning (413 too large, 503
overloaded or unavailable, 507 storage full, 500 DATA_LOSS for a stored copy found
corrupt, which is never served). Error bodies are JSON:
{"error": {"status", "reason", "message"}}.

Binary bodies go to PutStream as they arrive and binary replies come from
GetStream chunk by chunk, so a large blob never sits in the bridge's memory
whole; JSON bodies are parsed whole (up to the bridge's max request size) and
JSON replies are held whole (up to its max get size). Every gRPC call has the
bridge's deadline. JSON values get their RFC 8785 id here as on every other path
(Stepflow's own server sorts keys but does not canonicalise numbers).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import grpc
import orjson
from aiohttp import web

from blobstore import errors as store_errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.ids import PREFIX
from blobstore.status import TABLE, from_rpc_error
from jsonrpc_bridge.json_codec import InvalidValue, ParseError, decode, encode_value

log = logging.getLogger("jsonrpc_bridge")

ROUTE = "/api/v1/blobs"
OCTET_STREAM = "application/octet-stream"
CHUNK_SIZE = 1024 * 1024
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

_TYPES = {"": pb.BLOB_TYPE_JSON, "data": pb.BLOB_TYPE_JSON, "flow": pb.BLOB_TYPE_FLOW}
_TYPE_NAMES = {pb.BLOB_TYPE_JSON: "data", pb.BLOB_TYPE_FLOW: "flow", pb.BLOB_TYPE_BINARY: "binary"}
_VALUE_KEYS = ("json_data", "jsonData", "data")
_HTTP_STATUS: list[tuple[type[store_errors.BlobStoreError], int]] = [
    (store_errors.InvalidArgument, 400),
    (store_errors.BlobNotFound, 404),
    (store_errors.BlobTooLarge, 413),
    (store_errors.StorageFull, 507),
    (store_errors.Overloaded, 503),
    (store_errors.Unavailable, 503),
    (store_errors.UseStreaming, 413),
    (store_errors.DataLoss, 500),
]


class RestError(Exception):
    """An HTTP error answer: status, a reason code for programs and a message for people."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class StepflowRoutes:
    """The two routes, over one gRPC channel to the service."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        deadline: float,
        max_request_bytes: int,
        max_get_bytes: int,
    ) -> None:
        self._stub = pb_grpc.BlobServiceStub(channel)
        self._deadline = deadline
        self._max_request_bytes = max_request_bytes
        self._max_get_bytes = max_get_bytes

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, self._answering(self.post))
        app.router.add_get(ROUTE + "/{blob_id}", self._answering(self.get))

    def _answering(self, handler: Any) -> Any:
        async def route(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except RestError as exc:
                return _error_response(exc)
            except grpc.RpcError as exc:
                return _error_response(_rest_error(from_rpc_error(exc)))

        return route

    async def post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == OCTET_STREAM:
            filename = request.headers.get("X-Blob-Filename") or None
            reply = await self._stub.PutStream(
                _put_stream(request, filename), timeout=self._deadline
            )
        else:
            reply = await self._stub.Put(await self._json_put(request), timeout=self._deadline)
        answer: dict[str, object] = {"blobId": reply.id.removeprefix(PREFIX)}
        if reply.HasField("filename"):
            answer["filename"] = reply.filename
        return web.json_response(answer, dumps=_dumps)

    async def _json_put(self, request: web.Request) -> pb.PutRequest:
        if request.content_length is not None and request.content_length > self._max_request_bytes:
            raise _too_large(self._max_request_bytes)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(self._max_request_bytes) from None
        try:
            parsed = decode(body)
        except ParseError as exc:
            raise RestError(400, "INVALID_JSON", f"the body is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise RestError(400, "INVALID_BODY", 'the body must be an object like {"data": ...}')
        key = next((k for k in _VALUE_KEYS if k in parsed), None)
        if key is None:
            raise RestError(
                400, "MISSING_DATA", "the body has no data (json_data, jsonData or data)"
            )
        blob_type = _json_type(parsed.get("blob_type", parsed.get("blobType", "")))
        try:
            text = encode_value(parsed[key], key)
        except InvalidValue as exc:
            raise RestError(400, "INVALID_JSON", f"{exc.path}: {exc.reason}") from None
        request_message = pb.PutRequest(blob_type=blob_type, data=text)
        filename = parsed.get("filename")
        if filename is not None:
            if not isinstance(filename, str):
                raise RestError(400, "INVALID_FILENAME", "filename must be a string")
            request_message.filename = filename
        return request_message

    async def get(self, request: web.Request) -> web.StreamResponse:
        blob_id = _parse_id(request.match_info["blob_id"])
        call = self._stub.GetStream(pb.GetStreamRequest(id=blob_id), timeout=self._deadline)
        replies = aiter(call)
        try:
            info = (await anext(replies)).info
            if OCTET_STREAM in request.headers.get("Accept", ""):
                return await _stream_raw(request, info, replies)
            return await self._json_answer(info, replies)
        finally:
            call.cancel()

    async def _json_answer(
        self, info: pb.BlobInfo, replies: AsyncIterator[pb.GetStreamResponse]
    ) -> web.Response:
        binary = info.blob_type == pb.BLOB_TYPE_BINARY
        if not binary and info.size > self._max_get_bytes:
            raise RestError(
                413,
                "BLOB_TOO_LARGE",
                f"blob is {info.size} bytes, over the bridge's JSON answer limit of "
                f"{self._max_get_bytes}; ask with Accept: {OCTET_STREAM} to stream it",
            )
        # Binary content is not in a JSON answer ("data" is null): it is not read at all.
        data = None if binary else orjson.Fragment(b"".join([r.chunk async for r in replies]))
        answer: dict[str, object] = {
            "data": data,
            "blobType": _type_name(info),
            "blobId": info.id.removeprefix(PREFIX),
        }
        if info.HasField("filename"):
            answer["filename"] = info.filename
        content_type = _content_type(info)
        if content_type is not None:
            answer["contentType"] = content_type
        return web.json_response(answer, dumps=_dumps)


async def _put_stream(
    request: web.Request, filename: str | None
) -> AsyncIterator[pb.PutStreamRequest]:
    first = pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY)
    if request.content_length is not None:
        first.total_size = request.content_length
    if filename is not None:
        first.filename = filename
    yield first
    while chunk := await request.content.read(CHUNK_SIZE):
        yield pb.PutStreamRequest(chunk=chunk)


async def _stream_raw(
    request: web.Request, info: pb.BlobInfo, replies: AsyncIterator[pb.GetStreamResponse]
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": OCTET_STREAM, "x-blob-type": _type_name(info)}
    )
    response.content_length = info.size
    if info.HasField("filename"):
        response.headers["Content-Disposition"] = _disposition(info.filename)
    # The first chunk is read before the headers go out, so that an error found at once
    # (a corrupt blob) is still an error status; later ones cut the body short.
    first = await anext(replies, None)
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first.chunk)
            async for reply in replies:
                await response.write(reply.chunk)
    except grpc.RpcError as exc:
        # Too late for a status: the body stops short of its Content-Length, and the
        # connection is closed, so the client sees a truncated transfer, never bad data.
        log.warning("GET %s: stream ended early: %s", request.path, exc.details())
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def _json_type(value: object) -> pb.BlobType.ValueType:
    if not isinstance(value, str) or value not in _TYPES:
        shown = repr(value)[:40]
        raise RestError(
            400, "INVALID_BLOB_TYPE", f"unknown blob type {shown}: JSON bodies take data or flow"
        )
    return _TYPES[value]


def _type_name(info: pb.BlobInfo) -> str:
    return _TYPE_NAMES.get(info.blob_type, "data")


def _content_type(info: pb.BlobInfo) -> str | None:
    if info.HasField("content_type"):
        return info.content_type
    if info.blob_type == pb.BLOB_TYPE_BINARY and info.HasField("filename"):
        return OCTET_STREAM
    return None


def _parse_id(text: str) -> str:
    if len(text) != 64 or not HEX_DIGITS.issuperset(text):
        shown = repr(text) if len(text) <= 80 else repr(text[:76]) + "..."
        raise RestError(400, "INVALID_BLOB_ID", f"invalid blob id {shown}: expected 64 hex digits")
    return PREFIX + text.lower()


def _disposition(filename: str) -> str:
    """A Content-Disposition that no file name can break (RFC 6266 filename*)."""
    return f"attachment; filename*=UTF-8''{quote(filename, safe='')}"


def _too_large(limit: int) -> RestError:
    return RestError(
        413, "REQUEST_TOO_LARGE", f"JSON body over the bridge's limit of {limit} bytes"
    )


def _rest_error(exc: store_errors.BlobStoreError) -> RestError:
    status = next((code for cls, code in _HTTP_STATUS if isinstance(exc, cls)), 500)
    reason = next((r for cls, _, r in TABLE if isinstance(exc, cls)), "INTERNAL")
    if reason == "INTERNAL":
        return RestError(500, "INTERNAL", "the blob service failed; see the service's log")
    return RestError(status, reason, str(exc))


def _error_response(exc: RestError) -> web.Response:
    body = {"error": {"status": exc.status, "reason": exc.reason, "message": str(exc)}}
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return web.json_response(body, status=exc.status, headers=headers, dumps=_dumps)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()
