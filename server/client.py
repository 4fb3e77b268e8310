"""Python client of the BlobService, blocking (BlobClient) and asyncio (AsyncBlobClient).

Both raise the store's own errors (server.errors: BlobNotFound, InvalidJson,
BlobTooLarge, StorageFull, DataLoss, Unavailable...), decoded from the
server's status details. Large blobs are streamed in chunks: put_file and
get_to_file never hold a whole blob in memory, and get_to_file checks what it
received against the id before the file appears under its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from server.api.blobstore.v1 import blobstore_pb2 as pb
from server.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from server.canonical_json import canonicalize_value
from server.errors import DataLoss
from server.ids import BlobId, hex_digest, parse_blob_id
from server.model import Blob, BlobInfo, BlobType, PutResult
from server.status import from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50051"
CHUNK_SIZE = 1024 * 1024
# Blobs up to this size go in one message; larger ones are streamed.
UNARY_LIMIT = 4 * 1024 * 1024
_MESSAGE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MESSAGE_LIMIT),
    ("grpc.max_send_message_length", _MESSAGE_LIMIT),
]

_TO_PB = {BlobType.JSON: pb.BLOB_TYPE_JSON, BlobType.BINARY: pb.BLOB_TYPE_BINARY}
_FROM_PB = {value: key for key, value in _TO_PB.items()}


def decode_json(data: bytes) -> Any:
    """Parses a Json blob's content; integers of any size stay exact."""
    return json.loads(data)


# -- messages shared by both clients ---------------------------------------------


def _put_result(reply: pb.PutResponse) -> PutResult:
    info = BlobInfo(BlobId(reply.id), _FROM_PB[reply.blob_type], reply.size)
    return PutResult(info, reply.created)


def _json_request(value: object) -> pb.PutRequest:
    return pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=canonicalize_value(value))


def _stream_requests(
    blob_type: BlobType, chunks: Iterable[bytes], total_size: int | None
) -> Iterator[pb.PutStreamRequest]:
    first = pb.PutStreamRequest(blob_type=_TO_PB[blob_type])
    if total_size is not None:
        first.total_size = total_size
    yield first
    for chunk in chunks:
        yield pb.PutStreamRequest(chunk=chunk)


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_SIZE):
        yield chunk


def _memory_chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


def _stat_result(reply: pb.StatResponse) -> BlobInfo | None:
    if not reply.exists:
        return None
    return BlobInfo(BlobId(reply.id), _FROM_PB[reply.blob_type], reply.size)


class _FileReceiver:
    """Writes a streamed blob to a temp file beside `path`, then verifies and renames it."""

    def __init__(self, path: Path, blob_id: BlobId) -> None:
        self._path = path
        self._blob_id = blob_id
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hasher = hashlib.sha256()
        self.info: BlobInfo | None = None

    def take(self, reply: pb.GetStreamResponse) -> None:
        if reply.HasField("info"):
            self.info = BlobInfo(
                BlobId(reply.info.id), _FROM_PB[reply.info.blob_type], reply.info.size
            )
        if reply.chunk:
            self._hasher.update(reply.chunk)
            self._file.write(reply.chunk)

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


# -- blocking client ------------------------------------------------------------


class BlobClient:
    """Blocking client. Use as a context manager, or call close()."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.BlobServiceStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> BlobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def put_json(self, value: object) -> PutResult:
        """Stores a JSON value (dict, list, str, int, float, bool, None)."""
        with _translated():
            return _put_result(self._stub.Put(_json_request(value), timeout=self.timeout))

    def put_json_text(self, text: bytes | str) -> PutResult:
        """Stores JSON given as text; the server canonicalises it."""
        data = text.encode() if isinstance(text, str) else text
        return self.put_bytes(data, BlobType.JSON)

    def put_bytes(self, data: bytes, blob_type: BlobType = BlobType.BINARY) -> PutResult:
        """Stores bytes (or JSON text with BlobType.JSON); large data is streamed."""
        with _translated():
            if len(data) <= UNARY_LIMIT:
                request = pb.PutRequest(blob_type=_TO_PB[blob_type], data=data)
                return _put_result(self._stub.Put(request, timeout=self.timeout))
            requests = _stream_requests(blob_type, _memory_chunks(data), len(data))
            return _put_result(self._stub.PutStream(requests, timeout=self.timeout))

    def put_file(
        self, path: str | os.PathLike[str], blob_type: BlobType = BlobType.BINARY
    ) -> PutResult:
        """Streams a file of any size to the store."""
        with open(path, "rb") as stream, _translated():
            size = os.fstat(stream.fileno()).st_size
            requests = _stream_requests(blob_type, _read_chunks(stream), size)
            return _put_result(self._stub.PutStream(requests, timeout=self.timeout))

    def get(self, blob_id: str) -> Blob:
        """Returns a whole blob; blobs over the server's unary limit are streamed in."""
        parsed = parse_blob_id(blob_id)
        with _translated():
            try:
                reply = self._stub.Get(pb.GetRequest(id=parsed), timeout=self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return self._get_streamed(parsed)
        info = BlobInfo(BlobId(reply.id), _FROM_PB[reply.blob_type], reply.size)
        return Blob(info, reply.data)

    def _get_streamed(self, blob_id: BlobId) -> Blob:
        info: BlobInfo | None = None
        parts: list[bytes] = []
        for reply in self._stub.GetStream(pb.GetStreamRequest(id=blob_id), timeout=self.timeout):
            if reply.HasField("info"):
                info = BlobInfo(
                    BlobId(reply.info.id), _FROM_PB[reply.info.blob_type], reply.info.size
                )
            parts.append(reply.chunk)
        data = b"".join(parts)
        if info is None or hashlib.sha256(data).hexdigest() != hex_digest(blob_id):
            raise DataLoss(blob_id, "the received content does not match its id")
        return Blob(info, data)

    def get_to_file(self, blob_id: str, path: str | os.PathLike[str]) -> BlobInfo:
        """Streams a blob into `path`; the file appears only once complete and verified."""
        parsed = parse_blob_id(blob_id)
        receiver = _FileReceiver(Path(path), parsed)
        try:
            with _translated():
                for reply in self._stub.GetStream(
                    pb.GetStreamRequest(id=parsed), timeout=self.timeout
                ):
                    receiver.take(reply)
            return receiver.finish()
        finally:
            receiver.discard()

    def stat(self, blob_id: str) -> BlobInfo | None:
        """Returns the blob's metadata, or None if it is not stored."""
        with _translated():
            reply = self._stub.Stat(pb.StatRequest(id=parse_blob_id(blob_id)), timeout=self.timeout)
        return _stat_result(reply)

    def find_missing(self, blob_ids: Sequence[str]) -> list[str]:
        """Returns the ids, out of `blob_ids`, that are not stored."""
        request = pb.FindMissingRequest(ids=[parse_blob_id(i) for i in blob_ids])
        with _translated():
            return list(self._stub.FindMissing(request, timeout=self.timeout).missing_ids)


# -- asyncio client -------------------------------------------------------------


class AsyncBlobClient:
    """asyncio client with the same methods as BlobClient, as coroutines."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 60.0,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.BlobServiceStub(self._channel)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncBlobClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def put_json(self, value: object) -> PutResult:
        with _translated():
            return _put_result(await self._stub.Put(_json_request(value), timeout=self.timeout))

    async def put_json_text(self, text: bytes | str) -> PutResult:
        data = text.encode() if isinstance(text, str) else text
        return await self.put_bytes(data, BlobType.JSON)

    async def put_bytes(self, data: bytes, blob_type: BlobType = BlobType.BINARY) -> PutResult:
        with _translated():
            if len(data) <= UNARY_LIMIT:
                request = pb.PutRequest(blob_type=_TO_PB[blob_type], data=data)
                return _put_result(await self._stub.Put(request, timeout=self.timeout))
            requests = _stream_requests(blob_type, _memory_chunks(data), len(data))
            return _put_result(await self._stub.PutStream(requests, timeout=self.timeout))

    async def put_file(
        self, path: str | os.PathLike[str], blob_type: BlobType = BlobType.BINARY
    ) -> PutResult:
        with open(path, "rb") as stream, _translated():  # noqa: ASYNC230 - reads go via to_thread
            size = os.fstat(stream.fileno()).st_size

            async def requests() -> AsyncIterator[pb.PutStreamRequest]:
                head = pb.PutStreamRequest(blob_type=_TO_PB[blob_type], total_size=size)
                yield head
                while chunk := await asyncio.to_thread(stream.read, CHUNK_SIZE):
                    yield pb.PutStreamRequest(chunk=chunk)

            return _put_result(await self._stub.PutStream(requests(), timeout=self.timeout))

    async def get(self, blob_id: str) -> Blob:
        parsed = parse_blob_id(blob_id)
        with _translated():
            try:
                reply = await self._stub.Get(pb.GetRequest(id=parsed), timeout=self.timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return await self._get_streamed(parsed)
        info = BlobInfo(BlobId(reply.id), _FROM_PB[reply.blob_type], reply.size)
        return Blob(info, reply.data)

    async def _get_streamed(self, blob_id: BlobId) -> Blob:
        info: BlobInfo | None = None
        parts: list[bytes] = []
        async for reply in self._stub.GetStream(
            pb.GetStreamRequest(id=blob_id), timeout=self.timeout
        ):
            if reply.HasField("info"):
                info = BlobInfo(
                    BlobId(reply.info.id), _FROM_PB[reply.info.blob_type], reply.info.size
                )
            parts.append(reply.chunk)
        data = b"".join(parts)
        if info is None or hashlib.sha256(data).hexdigest() != hex_digest(blob_id):
            raise DataLoss(blob_id, "the received content does not match its id")
        return Blob(info, data)

    async def get_to_file(self, blob_id: str, path: str | os.PathLike[str]) -> BlobInfo:
        parsed = parse_blob_id(blob_id)
        receiver = _FileReceiver(Path(path), parsed)
        try:
            with _translated():
                async for reply in self._stub.GetStream(
                    pb.GetStreamRequest(id=parsed), timeout=self.timeout
                ):
                    await asyncio.to_thread(receiver.take, reply)
            return receiver.finish()
        finally:
            receiver.discard()

    async def stat(self, blob_id: str) -> BlobInfo | None:
        with _translated():
            reply = await self._stub.Stat(
                pb.StatRequest(id=parse_blob_id(blob_id)), timeout=self.timeout
            )
        return _stat_result(reply)

    async def find_missing(self, blob_ids: Sequence[str]) -> list[str]:
        request = pb.FindMissingRequest(ids=[parse_blob_id(i) for i in blob_ids])
        with _translated():
            reply = await self._stub.FindMissing(request, timeout=self.timeout)
        return list(reply.missing_ids)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
