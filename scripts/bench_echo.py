#!/usr/bin/env python3
"""The gRPC ceiling for the benchmark: a BlobService that stores nothing.

It is served exactly like ours (grpc.aio, asyncio.run, the same server
options as server/app.py) and speaks the same messages, so the load
generator drives it with the very same requests it sends to the real
service and the ratio between the two is the cost of our own code:

    Put        1 KiB in, 32 bytes out (a constant reply)
    Get        a small request in, 1 KiB of data out
    PutStream  drains the chunks, 32 bytes out
    GetStream  streams `int(request.id)` bytes from memory in chunks of
               `chunk_size` (0 = 1 MiB, as ours), one message per chunk

Usage: python scripts/bench_echo.py [--address 127.0.0.1:0]
Prints "echo gRPC listening on HOST:PORT" on stderr once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import signal
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.api.blobstore.v1 import blobstore_pb2 as pb
from server.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from server.config import ServerConfig

# Mirrors server/app.py (_serve_store): keep both in step when either changes.
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


class EchoServicer(pb_grpc.BlobServiceServicer):
    """Answers every call from memory; see the module docstring."""

    async def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return PUT_REPLY

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return GET_REPLY

    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        return pb.StatResponse()

    async def FindMissing(
        self, request: pb.FindMissingRequest, context: Any
    ) -> pb.FindMissingResponse:
        return pb.FindMissingResponse()

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


async def serve(address: str) -> None:
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_BlobServiceServicer_to_server(EchoServicer(), server)
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

    def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        return PUT_REPLY

    def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return GET_REPLY

    def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        return pb.StatResponse()

    def FindMissing(self, request: pb.FindMissingRequest, context: Any) -> pb.FindMissingResponse:
        return pb.FindMissingResponse()

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


def serve_sync(address: str, threads: int) -> None:
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads), options=server_options()
    )
    pb_grpc.add_BlobServiceServicer_to_server(SyncEchoServicer(), server)
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
    args = parser.parse_args()
    if args.style == "sync":
        serve_sync(args.address, args.threads)
    else:
        asyncio.run(serve(args.address))


if __name__ == "__main__":
    main()
