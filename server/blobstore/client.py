"""Python client of the BlobService, blocking (BlobClient) and asyncio (AsyncBlobClient).

Both raise the store's own errors (blobstore.errors: BlobNotFound, InvalidJson,
BlobTooLarge, StorageFull, DataLoss, Unavailable...), decoded from the
server's status details. Large blobs are streamed in chunks: put_file and
get_to_file never hold a whole blob in memory, and get_to_file checks what it
received against the id before the file appears under its name. Calls that
fail with a transient status are retried as server/blobstore/retry.py says: every call
is idempotent (a put of the same content stores the same blob), and a
streamed put or get that fails half way starts again from the beginning.

Why one module of ~740 lines: BlobClient and AsyncBlobClient mirror each other method
for method over shared request building and reply decoding (batching.py has the
batches'); side by side they stay in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc

from blobstore import batching, retry
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.batching import GetOutcome, NewBlob, PutOutcome
from blobstore.canonical_json import canonicalize_value
from blobstore.errors import BlobStoreError, BlobTooLarge, DataLoss, UseStreaming
from blobstore.ids import BlobId, blob_id_from_digest, hex_digest, parse_blob_id
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.proto_names import BLOB_TYPE_FROM_PB, BLOB_TYPE_TO_PB, meta_from_pb, meta_to_pb
from blobstore.retry import RetryPolicy
from blobstore.status import from_rpc_error
from blobstore.targets import channel_target

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK_SIZE = 1024 * 1024
# Blobs up to this size go in one message; larger ones are streamed.
UNARY_LIMIT = 4 * 1024 * 1024
_MESSAGE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
    ("grpc.max_send_message_length", _MESSAGE_LIMIT),
    # gRPC's own reconnect backoff grows to minutes; while it waits, calls fail at once
    # with UNAVAILABLE, so our retries would find a restarted server only much later.
    # Not grpc.min_reconnect_backoff_ms: gRPC takes it as the least time a connection
    # attempt is given (default 20 s); at 100 ms a server slow to send its HTTP/2
    # settings (a busy machine) made every attempt fail with UNAVAILABLE.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_T = TypeVar("_T")


def channel_args(target: str) -> tuple[str, list[tuple[str, Any]]]:
    """(target, options) of a channel to `target`: one server, several, or a DNS name
    (targets.py), with the client's options."""
    grpc_target, balancing = channel_target(target)
    return grpc_target, [*CHANNEL_OPTIONS, *balancing]


_TO_PB = BLOB_TYPE_TO_PB
_FROM_PB = BLOB_TYPE_FROM_PB


def decode_json(data: bytes) -> Any:
    """Parses a Json blob's content; integers of any size stay exact."""
    return json.loads(data)


# -- messages shared by both clients ---------------------------------------------


_Info = pb.PutResponse | pb.GetResponse | pb.StatResponse | pb.BlobInfo


def _blob_info(reply: _Info) -> BlobInfo:
    return BlobInfo(BlobId(reply.id), _FROM_PB[reply.blob_type], reply.size, meta_from_pb(reply))


def _put_result(reply: pb.PutResponse) -> PutResult:
    return PutResult(_blob_info(reply), reply.created)


def _put_request(data: bytes, blob_type: BlobType, meta: BlobMeta) -> pb.PutRequest:
    return pb.PutRequest(blob_type=_TO_PB[blob_type], data=data, **meta_to_pb(meta))


def _json_request(value: object, blob_type: BlobType, meta: BlobMeta) -> pb.PutRequest:
    return _put_request(canonicalize_value(value), blob_type, meta)


def _stream_head(
    blob_type: BlobType, total_size: int | None, meta: BlobMeta, expected_id: str | None = None
) -> pb.PutStreamRequest:
    """The first message of a PutStream: what the blob is, before its chunks."""
    head = pb.PutStreamRequest(blob_type=_TO_PB[blob_type], **meta_to_pb(meta))
    if total_size is not None:
        head.total_size = total_size
    if expected_id is not None:
        head.expected_id = expected_id
    return head


def _stream_requests(
    blob_type: BlobType,
    chunks: Iterable[bytes],
    total_size: int | None,
    meta: BlobMeta,
    expected_id: str | None = None,
) -> Iterator[pb.PutStreamRequest]:
    yield _stream_head(blob_type, total_size, meta, expected_id)
    for chunk in chunks:
        yield pb.PutStreamRequest(chunk=chunk)


def _promised_id(data: bytes, blob_type: BlobType) -> str | None:
    """The id a streamed Binary put promises (its SHA-256, cheap beside sending the bytes):
    the server then answers at once if it has the blob, and an object-store server
    uploads in place instead of copying (docs/scale-out.md). JSON is canonicalised by
    the server, so its id is not the hash of these bytes."""
    if blob_type is not BlobType.BINARY:
        return None
    return blob_id_from_digest(hashlib.sha256(data).hexdigest())


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_SIZE):
        yield chunk


ProgressHook = Callable[[int, int | None], object]
"""Told (bytes done, total bytes or None if not known yet) as a transfer advances; a
retried call starts again from 0. blobstore/progress.py draws it as a bar."""


def _reported(chunks: Iterable[bytes], total: int, progress: ProgressHook) -> Iterator[bytes]:
    done = 0
    progress(done, total)
    for chunk in chunks:
        yield chunk
        done += len(chunk)  # counted once gRPC took the chunk
        progress(done, total)


def _memory_chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


def _stat_result(reply: pb.StatResponse) -> BlobInfo | None:
    if not reply.exists:
        return None
    return _blob_info(reply)


def _last_used(reply: pb.StatResponse) -> float | None:
    if not reply.HasField("last_used"):
        return None
    return float(reply.last_used.ToNanoseconds()) / 1e9


class _FileReceiver:
    """Writes a streamed blob to a temp file beside `path`, then verifies and renames it."""

    def __init__(self, path: Path, blob_id: BlobId, progress: ProgressHook | None = None) -> None:
        self._path = path
        self._blob_id = blob_id
        self._progress = progress
        self._done = 0
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hasher = hashlib.sha256()
        self.info: BlobInfo | None = None

    def take(self, reply: pb.GetStreamResponse) -> None:
        if reply.HasField("info"):
            self.info = _blob_info(reply.info)
        if reply.chunk:
            self._hasher.update(reply.chunk)
            self._file.write(reply.chunk)
            self._done += len(reply.chunk)
        if self._progress is not None:
            self._progress(self._done, None if self.info is None else self.info.size)

    def finish(self) -> BlobInfo:
        self._file.close()
        if self.info is None or self._hasher.hexdigest() != hex_digest(self._blob_id):
            raise DataLoss(self._blob_id, "the received content does not match its id")
        os.replace(self._tmp, self._path)
        return self.info

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class _Gatherer:
    """Collects a GetStream into memory and checks it against its id."""

    def __init__(self, blob_id: BlobId, max_size: int | None) -> None:
        self._blob_id = blob_id
        self._max_size = max_size
        self._info: BlobInfo | None = None
        self._parts: list[bytes] = []

    def take(self, reply: pb.GetStreamResponse) -> None:
        if reply.HasField("info"):
            self._info = _blob_info(reply.info)
            _check_max_size(self._info, self._max_size)
        self._parts.append(reply.chunk)

    def finish(self) -> Blob:
        data = b"".join(self._parts)
        if self._info is None or hashlib.sha256(data).hexdigest() != hex_digest(self._blob_id):
            raise DataLoss(self._blob_id, "the received content does not match its id")
        return Blob(self._info, data)


def _check_max_size(info: BlobInfo, max_size: int | None) -> BlobInfo:
    if max_size is not None and info.size > max_size:
        raise BlobTooLarge(
            f"blob {info.blob_id} is {info.size} bytes, over this reader's limit of "
            f"{max_size} bytes; stream it to a file instead"
        )
    return info


# -- blocking client ------------------------------------------------------------


class BlobClient:
    """Blocking client. Use as a context manager, or call close().

    `timeout` bounds each call, its retries included; `retry` says which
    failures are retried and how (see server/blobstore/retry.py; RetryPolicy.off()
    makes one attempt only).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS and/or a token (blobstore.credentials.channel_credentials)."""
        self._channel = channel or (
            grpc.secure_channel(channel_args(target)[0], credentials, channel_args(target)[1])
            if credentials is not None
            else grpc.insecure_channel(*channel_args(target))
        )
        self._stub = pb_grpc.BlobServiceStub(self._channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def __enter__(self) -> BlobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, attempt: Callable[[float | None], _T]) -> _T:
        with _translated():
            return retry.call(self.retry, self.timeout, attempt)

    def put_json(
        self, value: object, blob_type: BlobType = BlobType.JSON, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Stores a JSON value (dict, list, str, int, float, bool, None) as Json or Flow.

        `meta` (a filename, a content type) is kept if this put stores the blob.
        """
        request = _json_request(value, blob_type, meta)
        return _put_result(self._call(lambda t: self._stub.Put(request, timeout=t)))

    def put_json_text(
        self, text: bytes | str, blob_type: BlobType = BlobType.JSON, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Stores JSON given as text; the server canonicalises it."""
        data = text.encode() if isinstance(text, str) else text
        return self.put_bytes(data, blob_type, meta=meta)

    def put_bytes(
        self, data: bytes, blob_type: BlobType = BlobType.BINARY, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        """Stores bytes (Binary, or JSON text for Json and Flow); large ones are streamed."""
        if len(data) <= UNARY_LIMIT:
            request = _put_request(data, blob_type, meta)
            return _put_result(self._call(lambda t: self._stub.Put(request, timeout=t)))

        promised = _promised_id(data, blob_type)

        def attempt(timeout: float | None) -> pb.PutResponse:
            chunks = _memory_chunks(data)
            requests = _stream_requests(blob_type, chunks, len(data), meta, promised)
            return self._stub.PutStream(requests, timeout=timeout)

        return _put_result(self._call(attempt))

    def put_file(
        self,
        path: str | os.PathLike[str],
        blob_type: BlobType = BlobType.BINARY,
        *,
        meta: BlobMeta = NO_META,
        progress: ProgressHook | None = None,
    ) -> PutResult:
        """Streams a file of any size to the store; a retry starts again from the top."""

        def attempt(timeout: float | None) -> pb.PutResponse:
            with open(path, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                chunks: Iterable[bytes] = _read_chunks(stream)
                if progress is not None:
                    chunks = _reported(chunks, size, progress)
                requests = _stream_requests(blob_type, chunks, size, meta)
                return self._stub.PutStream(requests, timeout=timeout)

        return _put_result(self._call(attempt))

    def get(self, blob_id: str, *, max_size: int | None = None) -> Blob:
        """Returns a whole blob; blobs over the server's unary limit are streamed in.

        With `max_size`, a larger blob raises BlobTooLarge before it is read whole.
        """
        parsed = parse_blob_id(blob_id)

        def attempt(timeout: float | None) -> Blob:
            try:
                reply = self._stub.Get(pb.GetRequest(id=parsed), timeout=timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return self._get_streamed(parsed, timeout, max_size)
            return Blob(_check_max_size(_blob_info(reply), max_size), reply.data)

        return self._call(attempt)

    def _get_streamed(self, blob_id: BlobId, timeout: float | None, max_size: int | None) -> Blob:
        gatherer = _Gatherer(blob_id, max_size)
        call = self._stub.GetStream(pb.GetStreamRequest(id=blob_id), timeout=timeout)
        try:
            for reply in call:
                gatherer.take(reply)
        except BlobTooLarge:
            call.cancel()  # type: ignore[no-untyped-call]
            raise
        return gatherer.finish()

    def get_to_file(
        self,
        blob_id: str,
        path: str | os.PathLike[str],
        *,
        progress: ProgressHook | None = None,
    ) -> BlobInfo:
        """Streams a blob into `path`; the file appears only once complete and verified."""
        parsed = parse_blob_id(blob_id)

        def attempt(timeout: float | None) -> BlobInfo:
            receiver = _FileReceiver(Path(path), parsed, progress)
            try:
                for reply in self._stub.GetStream(pb.GetStreamRequest(id=parsed), timeout=timeout):
                    receiver.take(reply)
                return receiver.finish()
            finally:
                receiver.discard()

        return self._call(attempt)

    def stat(self, blob_id: str) -> BlobInfo | None:
        """Returns the blob's metadata, or None if it is not stored."""
        request = pb.StatRequest(id=parse_blob_id(blob_id))
        return _stat_result(self._call(lambda t: self._stub.Stat(request, timeout=t)))

    def find_missing(self, blob_ids: Sequence[str]) -> list[str]:
        """Returns the ids, out of `blob_ids`, that are not stored."""
        request = pb.FindMissingRequest(ids=[parse_blob_id(i) for i in blob_ids])
        reply = self._call(lambda t: self._stub.FindMissing(request, timeout=t))
        return list(reply.missing_ids)

    def put_many(self, items: Sequence[NewBlob]) -> list[PutOutcome]:
        """Stores many blobs in few calls (BatchPut): one result or error per item, in order.

        Each call's items are durable when it returns; blobs too large for one message
        are streamed. A failure of a whole call (UNAVAILABLE after retries...) raises.
        """
        outcomes: list[PutOutcome | None] = [None] * len(items)
        for group in batching.put_groups(items, UNARY_LIMIT):
            first = items[group[0]]
            if len(first.data) > UNARY_LIMIT:
                outcomes[group[0]] = _outcome(
                    functools.partial(self.put_bytes, first.data, first.blob_type, meta=first.meta)
                )
                continue
            reply = self._batch_put(batching.put_request([items[i] for i in group]))
            for index, outcome in zip(group, batching.put_outcomes(reply, len(group)), strict=True):
                outcomes[index] = outcome
        return _filled(outcomes)

    def get_many(self, blob_ids: Sequence[str], *, max_size: int | None = None) -> list[GetOutcome]:
        """Reads many blobs in few calls (BatchGet): each blob, verified, or its own error.

        Blobs the batch reply had no room for (over the server's unary limit together)
        are read one by one with get(). A blob over `max_size` gets BlobTooLarge.
        """
        outcomes, parsed = _parse_ids(blob_ids)
        for group in batching.get_groups(len(parsed)):
            ids = [parsed[i][1] for i in group]
            reply = self._batch_get(pb.BatchGetRequest(ids=ids))
            for i, outcome in zip(group, batching.get_outcomes(reply, ids), strict=True):
                index, blob_id = parsed[i]
                if isinstance(outcome, UseStreaming):
                    outcome = _outcome(functools.partial(self.get, blob_id, max_size=max_size))
                outcomes[index] = _within(outcome, max_size)
        return _filled(outcomes)

    def _batch_put(self, request: pb.BatchPutRequest) -> pb.BatchPutResponse:
        return self._call(lambda t: self._stub.BatchPut(request, timeout=t))

    def _batch_get(self, request: pb.BatchGetRequest) -> pb.BatchGetResponse:
        return self._call(lambda t: self._stub.BatchGet(request, timeout=t))

    def stat_last_used(self, blob_id: str) -> tuple[BlobInfo, float | None] | None:
        """Like stat(), with when the blob was last put or read (seconds since the epoch;
        None if the server does not keep that)."""
        request = pb.StatRequest(id=parse_blob_id(blob_id))
        reply = self._call(lambda t: self._stub.Stat(request, timeout=t))
        info = _stat_result(reply)
        return None if info is None else (info, _last_used(reply))

    def delete(self, blob_ids: Sequence[str]) -> list[str]:
        """Removes the blobs (an admin call); returns the ids that were stored. Idempotent."""
        request = pb.DeleteRequest(ids=[parse_blob_id(i) for i in blob_ids])
        return list(self._call(lambda t: self._stub.Delete(request, timeout=t)).deleted_ids)

    def prune(self, older_than: float, *, dry_run: bool = False) -> tuple[list[str], int]:
        """Removes the blobs not used for `older_than` seconds (an admin call); returns
        their ids and content bytes (with dry_run, what would be removed)."""
        request = pb.PruneRequest(older_than_seconds=older_than, dry_run=dry_run)
        reply = self._call(lambda t: self._stub.Prune(request, timeout=t))
        return list(reply.ids), reply.total_bytes


# -- asyncio client -------------------------------------------------------------


class AsyncBlobClient:
    """asyncio client with the same methods (and retries) as BlobClient, as coroutines."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS and/or a token (blobstore.credentials.channel_credentials)."""
        self._channel = channel or (
            grpc.aio.secure_channel(channel_args(target)[0], credentials, channel_args(target)[1])
            if credentials is not None
            else grpc.aio.insecure_channel(*channel_args(target))
        )
        self._stub = pb_grpc.BlobServiceStub(self._channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    async def __aenter__(self) -> AsyncBlobClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    def use_channel(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """Makes calls from now on on `channel` (new credentials, e.g. a rotated client
        certificate); returns the channel used until now, for the caller to close once
        the calls still on it are done."""
        old, self._channel = self._channel, channel
        self._stub = pb_grpc.BlobServiceStub(channel)
        return old

    async def _call(self, attempt: Callable[[float | None], Awaitable[_T]]) -> _T:
        with _translated():
            return await retry.call_async(self.retry, self.timeout, attempt)

    async def put_json(
        self, value: object, blob_type: BlobType = BlobType.JSON, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        request = _json_request(value, blob_type, meta)
        return _put_result(await self._call(lambda t: self._stub.Put(request, timeout=t)))

    async def put_json_text(
        self, text: bytes | str, blob_type: BlobType = BlobType.JSON, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        data = text.encode() if isinstance(text, str) else text
        return await self.put_bytes(data, blob_type, meta=meta)

    async def put_bytes(
        self, data: bytes, blob_type: BlobType = BlobType.BINARY, *, meta: BlobMeta = NO_META
    ) -> PutResult:
        if len(data) <= UNARY_LIMIT:
            request = _put_request(data, blob_type, meta)
            return _put_result(await self._call(lambda t: self._stub.Put(request, timeout=t)))

        promised = await asyncio.to_thread(_promised_id, data, blob_type)

        async def attempt(limit: float | None) -> pb.PutResponse:
            chunks = _memory_chunks(data)
            requests = _stream_requests(blob_type, chunks, len(data), meta, promised)
            return await self._stub.PutStream(requests, timeout=limit)

        return _put_result(await self._call(attempt))

    async def put_file(
        self,
        path: str | os.PathLike[str],
        blob_type: BlobType = BlobType.BINARY,
        *,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        async def attempt(limit: float | None) -> pb.PutResponse:
            with open(path, "rb") as stream:  # noqa: ASYNC230 - reads go via to_thread
                size = os.fstat(stream.fileno()).st_size

                async def requests() -> AsyncIterator[pb.PutStreamRequest]:
                    yield _stream_head(blob_type, size, meta)
                    while chunk := await asyncio.to_thread(stream.read, CHUNK_SIZE):
                        yield pb.PutStreamRequest(chunk=chunk)

                return await self._stub.PutStream(requests(), timeout=limit)

        return _put_result(await self._call(attempt))

    async def get(self, blob_id: str, *, max_size: int | None = None) -> Blob:
        parsed = parse_blob_id(blob_id)

        async def attempt(limit: float | None) -> Blob:
            try:
                reply = await self._stub.Get(pb.GetRequest(id=parsed), timeout=limit)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return await self._get_streamed(parsed, limit, max_size)
            return Blob(_check_max_size(_blob_info(reply), max_size), reply.data)

        return await self._call(attempt)

    async def _get_streamed(
        self, blob_id: BlobId, limit: float | None, max_size: int | None
    ) -> Blob:
        gatherer = _Gatherer(blob_id, max_size)
        call = self._stub.GetStream(pb.GetStreamRequest(id=blob_id), timeout=limit)
        try:
            async for reply in call:
                gatherer.take(reply)
        except BlobTooLarge:
            call.cancel()
            raise
        return gatherer.finish()

    async def get_to_file(self, blob_id: str, path: str | os.PathLike[str]) -> BlobInfo:
        parsed = parse_blob_id(blob_id)

        async def attempt(limit: float | None) -> BlobInfo:
            receiver = _FileReceiver(Path(path), parsed)
            try:
                async for reply in self._stub.GetStream(
                    pb.GetStreamRequest(id=parsed), timeout=limit
                ):
                    await asyncio.to_thread(receiver.take, reply)
                return receiver.finish()
            finally:
                receiver.discard()

        return await self._call(attempt)

    async def stat(self, blob_id: str) -> BlobInfo | None:
        request = pb.StatRequest(id=parse_blob_id(blob_id))
        return _stat_result(await self._call(lambda t: self._stub.Stat(request, timeout=t)))

    async def find_missing(self, blob_ids: Sequence[str]) -> list[str]:
        request = pb.FindMissingRequest(ids=[parse_blob_id(i) for i in blob_ids])
        reply = await self._call(lambda t: self._stub.FindMissing(request, timeout=t))
        return list(reply.missing_ids)

    async def put_many(self, items: Sequence[NewBlob]) -> list[PutOutcome]:
        """Stores many blobs in few calls (BatchPut): one result or error per item, in order.

        Each call's items are durable when it returns; blobs too large for one message
        are streamed. A failure of a whole call (UNAVAILABLE after retries...) raises.
        """
        outcomes: list[PutOutcome | None] = [None] * len(items)
        for group in batching.put_groups(items, UNARY_LIMIT):
            first = items[group[0]]
            if len(first.data) > UNARY_LIMIT:
                outcomes[group[0]] = await _outcome_async(
                    self.put_bytes(first.data, first.blob_type, meta=first.meta)
                )
                continue
            reply = await self._batch_put(batching.put_request([items[i] for i in group]))
            for index, outcome in zip(group, batching.put_outcomes(reply, len(group)), strict=True):
                outcomes[index] = outcome
        return _filled(outcomes)

    async def get_many(
        self, blob_ids: Sequence[str], *, max_size: int | None = None
    ) -> list[GetOutcome]:
        """Reads many blobs in few calls (BatchGet): each blob, verified, or its own error.

        Blobs the batch reply had no room for (over the server's unary limit together)
        are read one by one with get(). A blob over `max_size` gets BlobTooLarge.
        """
        outcomes, parsed = _parse_ids(blob_ids)
        for group in batching.get_groups(len(parsed)):
            ids = [parsed[i][1] for i in group]
            reply = await self._batch_get(pb.BatchGetRequest(ids=ids))
            for i, outcome in zip(group, batching.get_outcomes(reply, ids), strict=True):
                index, blob_id = parsed[i]
                if isinstance(outcome, UseStreaming):
                    outcome = await _outcome_async(self.get(blob_id, max_size=max_size))
                outcomes[index] = _within(outcome, max_size)
        return _filled(outcomes)

    async def _batch_put(self, request: pb.BatchPutRequest) -> pb.BatchPutResponse:
        return await self._call(lambda t: self._stub.BatchPut(request, timeout=t))

    async def _batch_get(self, request: pb.BatchGetRequest) -> pb.BatchGetResponse:
        return await self._call(lambda t: self._stub.BatchGet(request, timeout=t))

    async def delete(self, blob_ids: Sequence[str]) -> list[str]:
        request = pb.DeleteRequest(ids=[parse_blob_id(i) for i in blob_ids])
        reply = await self._call(lambda t: self._stub.Delete(request, timeout=t))
        return list(reply.deleted_ids)

    async def put_chunks(
        self,
        chunks: AsyncIterable[bytes],
        blob_type: BlobType = BlobType.BINARY,
        *,
        total_size: int | None = None,
        meta: BlobMeta = NO_META,
    ) -> PutResult:
        """Stores a blob given as chunks as they come (PutStream), in bounded memory.

        Made once, never retried: the chunks are consumed as they are sent. Used by
        the bridge to pass an HTTP body through without holding it whole.
        """

        async def requests() -> AsyncIterator[pb.PutStreamRequest]:
            yield _stream_head(blob_type, total_size, meta)
            async for chunk in chunks:
                if chunk:
                    yield pb.PutStreamRequest(chunk=chunk)

        with _translated():
            return _put_result(await self._stub.PutStream(requests(), timeout=self.timeout))

    async def open_reader(self, blob_id: str, chunk_size: int = CHUNK_SIZE) -> BlobReader:
        """Opens a blob for reading chunk by chunk (GetStream); its info is known at once.

        Opening is retried like any call; the chunks are not (the caller has used
        those before). The reader must be closed (`aclose`, or `async with`).
        """
        parsed = parse_blob_id(blob_id)

        async def attempt(limit: float | None) -> BlobReader:
            call = self._stub.GetStream(
                pb.GetStreamRequest(id=parsed, chunk_size=chunk_size), timeout=limit
            )
            replies: AsyncIterator[pb.GetStreamResponse] = aiter(call)
            try:
                first = await anext(replies, None)
            except BaseException:
                call.cancel()
                raise
            if first is None or not first.HasField("info"):
                call.cancel()
                raise DataLoss(parsed, "the service's stream did not start with the blob's info")
            return BlobReader(call, replies, _blob_info(first.info), first.chunk)

        return await self._call(attempt)


class BlobReader:
    """A blob being read chunk by chunk: `info`, then `async for chunk in reader`.

    The chunks are hashed as they pass: if they do not add up to the blob's id,
    the last iteration raises DataLoss (the service checks too, and would never
    send such a blob; this guards the path between). Errors are the store's own.
    """

    def __init__(
        self,
        call: Any,
        replies: AsyncIterator[pb.GetStreamResponse],
        info: BlobInfo,
        first_chunk: bytes,
    ) -> None:
        self._call = call
        self._replies = replies
        self.info = info
        self._first = first_chunk
        self._hasher = hashlib.sha256()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _translated():
            if self._first:
                self._hasher.update(self._first)
                yield self._first
            async for reply in self._replies:
                if reply.chunk:
                    self._hasher.update(reply.chunk)
                    yield reply.chunk
        if self._hasher.hexdigest() != hex_digest(self.info.blob_id):
            raise DataLoss(self.info.blob_id, "the received content does not match its id")


def _parse_ids(
    blob_ids: Sequence[str],
) -> tuple[list[GetOutcome | None], list[tuple[int, BlobId]]]:
    """(outcomes with the malformed ids' errors filled in, the (index, id) of the others)."""
    outcomes: list[GetOutcome | None] = [None] * len(blob_ids)
    parsed: list[tuple[int, BlobId]] = []
    for index, text in enumerate(blob_ids):
        try:
            parsed.append((index, parse_blob_id(text)))
        except BlobStoreError as exc:
            outcomes[index] = exc
    return outcomes, parsed


def _within(outcome: GetOutcome, max_size: int | None) -> GetOutcome:
    """A blob over `max_size` (a batch reply's) becomes BlobTooLarge, as get() raises."""
    if isinstance(outcome, Blob):
        try:
            _check_max_size(outcome.info, max_size)
        except BlobTooLarge as exc:
            return exc
    return outcome


def _outcome(call: Callable[[], _T]) -> _T | BlobStoreError:
    try:
        return call()
    except BlobStoreError as exc:
        return exc


async def _outcome_async(call: Awaitable[_T]) -> _T | BlobStoreError:
    try:
        return await call
    except BlobStoreError as exc:
        return exc


def _filled(outcomes: Sequence[_T | None]) -> list[_T]:
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(outcomes), "every item of a batch gets an outcome"
    return done


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
