#!/usr/bin/env python3
"""The gRPC ceiling for the benchmark: a BlobService that stores nothing.

It is served exactly like ours (grpc.aio, asyncio.run, the same server
options and malloc tuning as blobstore/service/app.py) and speaks the same messages, so the load
generator drives it with the very same requests it sends to the real
service and the ratio between the two is the cost of our own code:

    Put        1 KiB in, 32 bytes out (a constant reply)
    Get        a small request in, 1 KiB of data out
    PutStream  drains the chunks, 32 bytes out
    GetStream  streams `int(request.id)` bytes from memory in chunks of
               `chunk_size` (0 = 1 MiB, as ours), one message per chunk
    BatchPut   N items in, N Put replies out
    BatchGet   N ids in, N Get replies (1 KiB each) out

Variants for scripts/bench/bench_variants.py (not the ceilings): --style sync (a
thread-pool grpc.server), --hops N (N no-op thread-pool round trips per
unary call), --durable-dir DIR
(Put stores request.data durably as the store does, with no canonicalising,
hashing or checks: temp file, write, fsync, link, fsync of the folder),
--group-commit batched|journal|pack with --durable-dir (aio only: the same, with the
puts that arrive together made durable together; see bench_commit.py).

Usage: python scripts/bench/bench_echo.py [--address 127.0.0.1:0] [variant options]
Prints "echo gRPC listening on HOST:PORT" on stderr once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import secrets
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from bench_commit import COMMITTERS, GroupCommitter

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.service.config import ServerConfig
from blobstore.service.malloc_tuning import tune_malloc

# Mirrors server/blobstore/service/app.py (_serve_store): keep both in step when either changes.
_MESSAGE_OVERHEAD = 64 * 1024
KIB = 1024
DEFAULT_CHUNK = 1024 * 1024
# A 28-character id plus the type: exactly 32 bytes on the wire.
PUT_REPLY = pb.PutResponse(id="x" * 28, blob_type=pb.BLOB_TYPE_JSON)
GET_REPLY = pb.GetResponse(blob_type=pb.BLOB_TYPE_JSON, data=b"7" * KIB)
_STREAM_BUFFER = b"\xa5" * (4 * DEFAULT_CHUNK)


def server_options() -> list[tuple[str, Any]]:
    message_limit = ServerConfig().max_unary_bytes + _MESSAGE_OVERHEAD
    return [
        ("grpc.max_receive_message_length", message_limit),
        ("grpc.max_send_message_length", message_limit),
        ("grpc.so_reuseport", 0),
    ]


class DurableWriter:
    """Stores bytes the way server/blobstore/storage/filesystem.py does, minus every check."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (root / "blobs" / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes) -> None:
        name = secrets.token_hex(16)
        tmp = os.path.join(self.root, "tmp", name)
        shard = os.path.join(self.root, "blobs", name[:2])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, os.path.join(shard, name))
        dir_fd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.unlink(tmp)


class EchoServicer(pb_grpc.BlobServiceServicer):
    """Answers every call from memory; see the module docstring.

    With `hops` > 0, unary calls first hand a no-op to a thread pool that many
    times, one after the other: what an extra run_in_executor costs per call.
    With `durable`, Put stores its data durably in one thread-pool call.
    """

    def __init__(
        self,
        hops: int = 0,
        durable: DurableWriter | None = None,
        committer: GroupCommitter | None = None,
    ) -> None:
        self._hops = hops
        self._durable = durable
        self._committer = committer
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=32)

    async def _hop(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._hops):
            await loop.run_in_executor(self._pool, _nothing)

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        if self._hops:
            await self._hop()
        if self._durable is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, self._durable.write, request.data)
        if self._committer is not None:
            await self._committer.write(request.data)
        return PUT_REPLY

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        if self._hops:
            await self._hop()
        return GET_REPLY

    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        return pb.StatResponse()

    async def BatchPut(self, request: pb.BatchPutRequest, context: Any) -> pb.BatchPutResponse:
        return _batch_put_reply(request)

    async def BatchGet(self, request: pb.BatchGetRequest, context: Any) -> pb.BatchGetResponse:
        return _batch_get_reply(request)

    async def FindMissing(
        self, request: pb.FindMissingRequest, context: Any
    ) -> pb.FindMissingResponse:
        return pb.FindMissingResponse()

    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse()

    async def Prune(self, request: pb.PruneRequest, context: Any) -> pb.PruneResponse:
        return pb.PruneResponse()

    async def PutStream(
        self, request_iterator: AsyncIterator[pb.PutStreamRequest], context: Any
    ) -> pb.PutResponse:
        async for _ in request_iterator:
            pass
        return PUT_REPLY

    async def GetStream(
        self, request: pb.GetStreamRequest, context: Any
    ) -> AsyncIterator[pb.GetStreamResponse]:
        size = int(request.id or "0")
        chunk_size = min(request.chunk_size or DEFAULT_CHUNK, len(_STREAM_BUFFER))
        yield pb.GetStreamResponse(info=pb.BlobInfo(id=request.id, size=size))
        full = _STREAM_BUFFER[:chunk_size]  # sliced once: no per-chunk copy here
        offset = 0
        while offset < size:
            chunk = full if size - offset >= chunk_size else full[: size - offset]
            yield pb.GetStreamResponse(offset=offset, chunk=chunk)
            offset += len(chunk)


def _nothing() -> None:
    pass


def _batch_put_reply(request: pb.BatchPutRequest) -> pb.BatchPutResponse:
    return pb.BatchPutResponse(
        results=[pb.BatchPutResult(response=PUT_REPLY)] * len(request.requests)
    )


def _batch_get_reply(request: pb.BatchGetRequest) -> pb.BatchGetResponse:
    return pb.BatchGetResponse(results=[pb.BatchGetResult(response=GET_REPLY)] * len(request.ids))


async def serve(
    address: str,
    hops: int = 0,
    durable: DurableWriter | None = None,
    committer: GroupCommitter | None = None,
) -> None:
    await serve_servicer(EchoServicer(hops, durable, committer), address)


async def serve_servicer(servicer: Any, address: str) -> None:
    """Serves `servicer` as the echo is served, until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_BlobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"echo gRPC listening on {address.rsplit(':', 1)[0]}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


class SyncEchoServicer(pb_grpc.BlobServiceServicer):
    """The same answers from a thread-pool (non-asyncio) server, for comparison."""

    def __init__(self, durable: DurableWriter | None = None) -> None:
        self._durable = durable

    def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        if self._durable is not None:
            self._durable.write(request.data)
        return PUT_REPLY

    def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return GET_REPLY

    def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        return pb.StatResponse()

    def BatchPut(self, request: pb.BatchPutRequest, context: Any) -> pb.BatchPutResponse:
        return _batch_put_reply(request)

    def BatchGet(self, request: pb.BatchGetRequest, context: Any) -> pb.BatchGetResponse:
        return _batch_get_reply(request)

    def FindMissing(self, request: pb.FindMissingRequest, context: Any) -> pb.FindMissingResponse:
        return pb.FindMissingResponse()

    def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse()

    def Prune(self, request: pb.PruneRequest, context: Any) -> pb.PruneResponse:
        return pb.PruneResponse()

    def PutStream(self, request_iterator: Any, context: Any) -> pb.PutResponse:
        for _ in request_iterator:
            pass
        return PUT_REPLY

    def GetStream(self, request: pb.GetStreamRequest, context: Any) -> Any:
        size = int(request.id or "0")
        chunk_size = min(request.chunk_size or DEFAULT_CHUNK, len(_STREAM_BUFFER))
        yield pb.GetStreamResponse(info=pb.BlobInfo(id=request.id, size=size))
        full = _STREAM_BUFFER[:chunk_size]
        offset = 0
        while offset < size:
            chunk = full if size - offset >= chunk_size else full[: size - offset]
            yield pb.GetStreamResponse(offset=offset, chunk=chunk)
            offset += len(chunk)


def serve_sync(address: str, threads: int, durable: DurableWriter | None = None) -> None:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads), options=server_options()
    )
    pb_grpc.add_BlobServiceServicer_to_server(SyncEchoServicer(durable), server)
    port = server.add_insecure_port(address)
    server.start()
    print(f"echo gRPC listening on {address.rsplit(':', 1)[0]}:{port}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port (port 0 = free)")
    parser.add_argument(
        "--style",
        choices=["aio", "sync"],
        default="aio",
        help="aio = served like ours (default); sync = grpc.server with a thread pool",
    )
    parser.add_argument("--threads", type=int, default=16, help="thread pool size for --style sync")
    parser.add_argument(
        "--hops", type=int, default=0, help="aio only: thread-pool round trips per unary call"
    )
    parser.add_argument("--durable-dir", type=Path, help="Put stores its data durably here")
    parser.add_argument(
        "--group-commit",
        choices=sorted(COMMITTERS),
        help="aio only, with --durable-dir: puts arriving together are made durable together",
    )
    args = parser.parse_args()
    committer: GroupCommitter | None = None
    durable = None
    if args.group_commit:
        committer = COMMITTERS[args.group_commit](args.durable_dir)
    elif args.durable_dir:
        durable = DurableWriter(args.durable_dir)
    tune_malloc()  # as blobstore/service/app.py does at start-up: the same allocator for both
    if args.style == "sync":
        serve_sync(args.address, args.threads, durable)
    else:
        asyncio.run(serve(args.address, args.hops, durable, committer))


if __name__ == "__main__":
    main()
