"""Idle streams: they end, give back their files and their share of the byte budget.

A PutStream that stops sending keeps a temp file open; a GetStream whose reader stops
reading keeps chunks buffered in gRPC. Real server, real gRPC: idle PutStreams end with
UNAVAILABLE and leave no temp file; unread GetStreams are charged the chunks gRPC
buffers for them (so past the budget new ones are refused OVERLOADED) and are ended
after the idle time, after which the budget is free again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import grpc

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import CHANNEL_OPTIONS, BlobClient
from tests.faults import HeldPut, held_admitted, status_of, wait_until
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB, temp_files


async def test_idle_streams_end_and_release_what_they_hold(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        "--stream-idle-seconds",
        "2",
        "--max-inflight-bytes",
        str(16 * MiB),
        "--max-concurrent-rpcs",
        "0",
    )
    with BlobClient(server.target, timeout=60) as client:
        blob_id = client.put_bytes(os.urandom(8 * MiB)).info.blob_id
    async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)

        idle_puts = [HeldPut(stub, os.urandom(64 * 1024 + i)) for i in range(5)]
        await held_admitted(server.data_dir, 5)
        for held in idle_puts:
            try:
                await held.call
                raise AssertionError("an idle PutStream was acknowledged")
            except grpc.RpcError as exc:
                code, _, message = status_of(exc)
                assert code == grpc.StatusCode.UNAVAILABLE and "--stream-idle-seconds" in message
        assert temp_files(server.data_dir) == []

        # Unread GetStreams: each is charged the 4 chunks of 1 MiB gRPC may buffer, so
        # the 16 MiB budget admits 4 at most (charged one chunk, it admitted 15).
        unread = []
        while True:
            call = stub.GetStream(pb.GetStreamRequest(id=blob_id))
            try:
                first = await call.read()
                assert isinstance(first, pb.GetStreamResponse) and first.HasField("info")
            except grpc.RpcError as exc:
                assert status_of(exc)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
                break
            unread.append(call)
            assert len(unread) <= 4, "unread GetStreams are not charged what gRPC buffers"
        assert unread
        wait_until(
            lambda: server.log().count("GetStream whose reader took no chunk") >= len(unread),
            60,
            "the unread GetStreams to be ended",
        )
        # Their share of the budget is back: an 8 MiB Get beside them fits again.
        with BlobClient(server.target, timeout=60) as client:
            assert len(client.get(blob_id).data) == 8 * MiB
        for call in unread:
            call.cancel()
    assert "Traceback" not in server.log()
