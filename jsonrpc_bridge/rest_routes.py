"""Stepflow's REST blob routes on the bridge's HTTP port, as calls through the gRPC client.

    POST /api/v1/blobs       a JSON body {"data"|"json_data"|"jsonData": value,
                             "blobType"|"blob_type"?, "filename"?}, or the raw bytes
                             of a binary blob (Content-Type application/octet-stream,
                             optional X-Blob-Filename)         -> 200 {"blobId", "filename"?}
    GET  /api/v1/blobs/{id}  -> 200 {"data", "blobType", "blobId", "filename"?,
                             "contentType"?}, or with Accept: application/octet-stream
                             the stored bytes and an x-blob-type header

Ids are Stepflow's: the bare 64 hex digits (upper case accepted), the same blob
as "sha256:<hex>" in blobstore.v1. A malformed body, type, file name or id is
400, an unknown id 404; other store errors get the HTTP status of the bridge's
one error table (errors.py: 413, 503 with Retry-After, 507, 500 for a stored
copy found corrupt, which is never served; 401/403 with WWW-Authenticate: Bearer for
refused credentials). A client certificate identity (client_identity.py) is checked by
the bridge itself before the body is read: GET needs `read`, POST `write`. Error bodies
are JSON:
{"error": {"status", "reason", "message"}}.

Binary bodies go to PutStream as they arrive and binary replies come from
GetStream chunk by chunk (AsyncBlobClient.put_chunks / open_reader), so a large
blob never sits in the bridge's memory whole. JSON bodies are read whole, with
the bridge's request size, JSON value and body time limits, as JSON-RPC bodies
are; JSON answers are held whole, up to the bridge's max get size. A binary body
must keep arriving: a wait of more than the body timeout for its next bytes is 408.
JSON values get their RFC 8785 id here as on every other path (Stepflow's own
server sorts keys but does not canonicalise numbers): see docs/stepflow.md.

X-Blob-Filename: HTTP header values are bytes; a file name outside ASCII is
sent either percent-encoded as an RFC 8187 ext-value (`UTF-8''na%C3%AFve.pdf`,
the form Content-Disposition's filename* uses) or as raw UTF-8 bytes. Both are
decoded here; bytes that are not UTF-8 are 400 INVALID_FILENAME.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote, unquote_to_bytes

import orjson
from aiohttp import web

from blobstore.client import AsyncBlobClient, BlobReader
from blobstore.errors import BlobStoreError, InvalidArgument
from blobstore.ids import hex_digest, parse_bare_id
from blobstore.metadata import check_meta
from blobstore.model import NO_META, BlobMeta, BlobType, PutResult
from blobstore.stepflow_names import (
    BINARY,
    OCTET_STREAM,
    blob_type_of,
    content_type_of,
    type_name,
)
from jsonrpc_bridge import client_identity, errors, upstream_auth
from jsonrpc_bridge.json_codec import InvalidValue, ParseError, encode_value
from jsonrpc_bridge.protocol import TooManyValues, decode_body

log = logging.getLogger("jsonrpc_bridge")

ROUTE = "/api/v1/blobs"
FILENAME_HEADER = "X-Blob-Filename"
CHUNK_SIZE = 1024 * 1024
_VALUE_KEYS = ("json_data", "jsonData", "data")
_EXT_VALUE_PREFIX = "utf-8''"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestError(Exception):
    """An HTTP error answer: status, a reason code for programs and a message for people."""

    def __init__(self, status: int, reason: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retryable = retryable


class RestRoutes:
    """The two routes, over the bridge's AsyncBlobClient."""

    def __init__(
        self,
        client: AsyncBlobClient,
        *,
        max_request_bytes: int,
        max_get_bytes: int,
        max_json_values: int,
        body_timeout: float,
    ) -> None:
        self._client = client
        self._max_request_bytes = max_request_bytes
        self._max_get_bytes = max_get_bytes
        self._max_json_values = max_json_values
        self._body_timeout = body_timeout

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(ROUTE, _answering(self.post, "write"))
        app.router.add_get(ROUTE + "/{blob_id}", _answering(self.get, "read"))

    async def post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == OCTET_STREAM:
            # Checked before any byte is sent on: a bad name must not cancel the stream.
            meta = check_meta(BlobMeta(filename=_filename(request)))
            body = _StreamedBody(request, self._body_timeout)
            try:
                result = await self._client.put_chunks(
                    body.chunks(), BlobType.BINARY, total_size=request.content_length, meta=meta
                )
            except asyncio.CancelledError:
                # The gRPC call is cancelled when the body fails to arrive; say why.
                if body.error is None:
                    raise
                raise body.error from None
        else:
            result = await self._put_json(request)
        answer = {"blobId": hex_digest(result.info.blob_id)}
        if result.info.meta.filename is not None:
            answer["filename"] = result.info.meta.filename
        return _json(answer)

    async def _put_json(self, request: web.Request) -> PutResult:
        parsed = await self._json_body(request)
        if not isinstance(parsed, dict):
            raise RestError(400, "INVALID_BODY", 'the body must be an object like {"data": ...}')
        key = next((k for k in _VALUE_KEYS if k in parsed), None)
        if key is None:
            raise RestError(
                400, "MISSING_DATA", "the body has no data (json_data, jsonData or data)"
            )
        name = parsed.get("blob_type", parsed.get("blobType", ""))
        if name == BINARY:
            raise RestError(
                400,
                "INVALID_BLOB_TYPE",
                f"a binary blob is sent as its raw bytes with Content-Type: {OCTET_STREAM}",
            )
        try:
            blob_type = blob_type_of(name)
        except InvalidArgument as exc:
            raise RestError(400, "INVALID_BLOB_TYPE", str(exc)) from None
        filename = parsed.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise RestError(400, "INVALID_FILENAME", "filename must be a string")
        meta = NO_META if filename is None else BlobMeta(filename=filename)
        try:
            text = encode_value(parsed[key], key)
        except InvalidValue as exc:
            raise RestError(400, "INVALID_JSON", f"{exc.path}: {exc.reason}") from None
        return await self._client.put_bytes(text, blob_type, meta=meta)

    async def _json_body(self, request: web.Request) -> object:
        limit = self._max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        try:
            async with asyncio.timeout(self._body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(limit) from None
        except TimeoutError:
            raise _body_timeout(self._body_timeout) from None
        try:
            return await decode_body(body, self._max_json_values)
        except ParseError as exc:
            raise RestError(400, "INVALID_JSON", f"the body is not JSON: {exc}") from None
        except TooManyValues as exc:
            raise RestError(
                413,
                "REQUEST_TOO_LARGE",
                f"the body holds about {exc.count} JSON values, over the limit of {exc.limit} "
                "(--max-json-values)",
            ) from None

    async def get(self, request: web.Request) -> web.StreamResponse:
        blob_id = parse_bare_id(request.match_info["blob_id"])
        async with await self._client.open_reader(blob_id, CHUNK_SIZE) as reader:
            if OCTET_STREAM in request.headers.get("Accept", ""):
                return await _stream_raw(request, reader)
            return await self._json_answer(reader)

    async def _json_answer(self, reader: BlobReader) -> web.Response:
        info = reader.info
        data: orjson.Fragment | None = None
        # Binary content is not part of a JSON answer ("data" is null): it is not read.
        if info.blob_type is not BlobType.BINARY:
            if info.size > self._max_get_bytes:
                raise RestError(
                    413,
                    "BLOB_TOO_LARGE",
                    f"blob is {info.size} bytes, over the bridge's JSON answer limit of "
                    f"{self._max_get_bytes} (--max-get-bytes); ask with Accept: {OCTET_STREAM} "
                    "to stream it",
                )
            data = orjson.Fragment(b"".join([chunk async for chunk in reader]))
        answer: dict[str, object] = {
            "data": data,
            "blobType": type_name(info.blob_type),
            "blobId": hex_digest(info.blob_id),
        }
        if info.meta.filename is not None:
            answer["filename"] = info.meta.filename
        content_type = content_type_of(info.blob_type, info.meta)
        if content_type is not None:
            answer["contentType"] = content_type
        return _json(answer)


class _StreamedBody:
    """An HTTP body read in chunks of up to CHUNK_SIZE, each within the body timeout.

    A failure is kept in `error` and ends the chunks with an exception, which
    makes the gRPC client cancel its PutStream: nothing is stored.
    """

    def __init__(self, request: web.Request, timeout: float) -> None:
        self._request = request
        self._timeout = timeout
        self.error: RestError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._request.content
        while True:
            parts: list[bytes] = []
            size = 0
            while size < CHUNK_SIZE:
                try:
                    async with asyncio.timeout(self._timeout):
                        part = await content.read(CHUNK_SIZE - size)
                except TimeoutError:
                    self.error = _body_timeout(self._timeout)
                    raise self.error from None
                except Exception as exc:  # a broken chunked encoding, a reset connection
                    self.error = RestError(
                        400, "INVALID_BODY", f"the request body could not be read: {exc}"
                    )
                    raise self.error from None
                if not part:
                    break
                parts.append(part)
                size += len(part)
            if not parts:
                return
            yield b"".join(parts)
            if size < CHUNK_SIZE:
                return


def _filename(request: web.Request) -> str | None:
    """The X-Blob-Filename header decoded (see the module docstring); None if absent."""
    raw = request.headers.get(FILENAME_HEADER)
    if raw is None or raw == "":
        return None
    if raw[: len(_EXT_VALUE_PREFIX)].lower() == _EXT_VALUE_PREFIX:
        encoded = raw[len(_EXT_VALUE_PREFIX) :].encode("utf-8", "surrogateescape")
        data = unquote_to_bytes(encoded)
    else:
        # aiohttp decodes header bytes as UTF-8, keeping bytes that are not as surrogates.
        data = raw.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RestError(
            400,
            "INVALID_FILENAME",
            f"{FILENAME_HEADER} is not UTF-8; send a name outside ASCII as UTF-8 or "
            f"percent-encoded: {FILENAME_HEADER}: UTF-8''na%C3%AFve.pdf",
        ) from None


async def _stream_raw(request: web.Request, reader: BlobReader) -> web.StreamResponse:
    info = reader.info
    response = web.StreamResponse(
        headers={"Content-Type": OCTET_STREAM, "x-blob-type": type_name(info.blob_type)}
    )
    response.content_length = info.size
    if info.meta.filename is not None:
        response.headers["Content-Disposition"] = disposition(info.meta.filename)
    chunks = aiter(reader)
    # The first chunk is read before the headers go out, so that an error found at once
    # (a corrupt blob) is still an error status; later ones cut the body short.
    first = await anext(chunks, None)
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
    except BlobStoreError as exc:
        # Too late for a status: the body stops short of its Content-Length and the
        # connection is closed, so the client sees a truncated transfer, never bad data.
        log.warning("GET %s: stream ended early: %s", request.path, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def disposition(filename: str) -> str:
    """A Content-Disposition that no file name can break (RFC 6266 filename*)."""
    return f"attachment; filename*=UTF-8''{quote(filename, safe='')}"


def _answering(handler: _Handler, scope: str) -> _Handler:
    """The handler, with errors answered as JSON error bodies, behind the bridge's own
    checks of the caller (a `scope` for a client certificate identity)."""

    async def route(request: web.Request) -> web.StreamResponse:
        caller = upstream_auth.caller_authorization.get()
        if caller is not None and not upstream_auth.acceptable(caller):
            return _error_response(RestError(401, "UNAUTHENTICATED", errors.BAD_AUTHORIZATION))
        refusal = client_identity.unauthenticated()
        if refusal is not None:
            log.warning("refused (401): %s", refusal)
            return _error_response(RestError(401, "UNAUTHENTICATED", refusal))
        denied = client_identity.denial(scope)
        if denied is not None:
            return _error_response(RestError(403, "PERMISSION_DENIED", str(denied)))
        try:
            return await handler(request)
        except RestError as exc:
            return _error_response(exc)
        except BlobStoreError as exc:
            status, reason, retryable = errors.http_error(exc)
            message = str(exc) if status != 502 else f"the blob service failed: {exc}"
            return _error_response(RestError(status, reason, message, retryable))

    return route


def _too_large(limit: int) -> RestError:
    return RestError(
        413, "REQUEST_TOO_LARGE", f"JSON body over the bridge's limit of {limit} bytes"
    )


def _body_timeout(timeout: float) -> RestError:
    return RestError(408, "BODY_TIMEOUT", f"the request body did not arrive within {timeout:g} s")


def _error_response(exc: RestError) -> web.Response:
    body = {
        "error": {"status": exc.status, "reason": exc.reason, "message": errors.clip(str(exc), 500)}
    }
    response = _json(body, exc.status)
    if exc.status == 503:
        response.headers["Retry-After"] = "1"
    challenge = _challenge(exc.status)
    if challenge is not None:
        response.headers["WWW-Authenticate"] = challenge
    if exc.status in (408, 413):
        response.force_close()  # the rest of the body is not read
    return response


def _challenge(status: int) -> str | None:
    """RFC 6750's WWW-Authenticate for a refusal: error="invalid_token" when the caller
    presented a credential that was refused, none when it presented none (401), and
    error="insufficient_scope" when its credential lacks the scope (403)."""
    if status == 401:
        if upstream_auth.caller_authorization.get() is None:
            return 'Bearer realm="blobstore"'
        return 'Bearer realm="blobstore", error="invalid_token"'
    if status == 403:
        return 'Bearer realm="blobstore", error="insufficient_scope"'
    return None


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")
