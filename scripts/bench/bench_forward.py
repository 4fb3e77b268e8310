#!/usr/bin/env python3
"""The ceiling of a Python gRPC front on obstore: Get and GetStream forwarded, nothing else.

    python scripts/bench/bench_forward.py --storage s3://bucket/prefix?endpoint=...

A BlobService served like ours (grpc.aio, the echo's server options and malloc
tuning) whose Get and GetStream only forward to the object store with obstore,
the same calls our backend makes: Get is one GET and its body (`get_async`,
then `bytes_async`), GetStream one streamed GET cut into `chunk_size` pieces.
No id check, no hashing, no size or metadata checks, no limits, no metrics:
what any Python gRPC server in front of obstore reaches on this machine, so
bench_s3.py prints it beside our server's get_small and get_large.

The ids of the requests are our blob ids; the objects are read under our key
layout (blobstore.storage.objectstore.keys) and credentials come from AWS_*.
Prints "echo gRPC listening on HOST:PORT" on stderr once it serves (the echo's
line, so bench_procs starts it the same way).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import obstore
from bench_echo import DEFAULT_CHUNK, serve_servicer

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.ids import BlobId
from blobstore.model import BlobType
from blobstore.proto_names import BLOB_TYPE_TO_PB
from blobstore.service.malloc_tuning import tune_malloc
from blobstore.storage.objectstore import keys, location, metadata


class ForwardServicer(pb_grpc.BlobServiceServicer):
    """Get and GetStream straight to obstore; every other call is left unimplemented."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        result = await obstore.get_async(self._store, keys.blob_key(BlobId(request.id)))
        blob_type = BLOB_TYPE_TO_PB[BlobType(result.attributes.get(metadata.TYPE_KEY))]
        return pb.GetResponse(blob_type=blob_type, data=bytes(await result.bytes_async()))

    async def GetStream(
        self, request: pb.GetStreamRequest, context: Any
    ) -> AsyncIterator[pb.GetStreamResponse]:
        chunk_size = request.chunk_size or DEFAULT_CHUNK
        result = await obstore.get_async(self._store, keys.blob_key(BlobId(request.id)))
        yield pb.GetStreamResponse(info=pb.BlobInfo(id=request.id, size=result.range[1]))
        offset = 0
        async for piece in result.stream(min_chunk_size=chunk_size):
            view = memoryview(piece)
            for start in range(0, len(view), chunk_size):
                chunk = bytes(view[start : start + chunk_size])
                yield pb.GetStreamResponse(offset=offset, chunk=chunk)
                offset += len(chunk)


async def serve(address: str, storage: str) -> None:
    # Only Get and GetStream are served: the rest stay the generated base's UNIMPLEMENTED.
    servicer = ForwardServicer(location.parse(storage).store())  # type: ignore[abstract]
    await serve_servicer(servicer, address)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", default="127.0.0.1:0", help="host:port (port 0 = free)")
    parser.add_argument("--storage", required=True, help="an s3:// URL, as for blobstore serve")
    args = parser.parse_args()
    tune_malloc()  # as blobstore/service/app.py does at start-up
    asyncio.run(serve(args.address, args.storage))


if __name__ == "__main__":
    main()
