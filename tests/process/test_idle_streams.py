"""Idle streams: they end, give back their files and their share of the byte budget.

A PutStream that stops sending keeps a temp file open; a GetStream whose reader stops
reading keeps chunks buffered in gRPC. Real server, real gRPC: idle PutStreams end with
UNAVAILABLE and leave no temp file; unread GetStreams are charged the chunks gRPC
buffers for them (so past the budget new ones are refused OVERLOADED) and are ended
after the idle time, after which the budget is free again; once they are cancelled,
the memory they held goes back to the system.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import grpc
import psutil

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


async def test_memory_comes_back_after_unread_getstreams_are_cancelled(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Three rounds of 120 GetStreams of a 32 MiB blob, read one message each, cancelled.

    Each holds what gRPC buffered for it (about 4 MiB; 120 fit the default budget) until
    its cancel. Freed, that memory stayed with the server: 150-300 MiB above idle after
    each round (glibc kept the tops of 15 arenas and the free pages inside them); with at
    most 2 arenas and malloc_trim after large calls end it comes back to the idle value.
    """
    server = start_server()
    process = psutil.Process(server.pid)
    with BlobClient(server.target, timeout=120) as client:
        blob_id = client.put_bytes(os.urandom(32 * MiB)).info.blob_id
    idle = process.memory_info().rss
    # Three connections: at most 100 streams each (--max-streams-per-connection).
    own_pool = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(server.target, options=own_pool) for _ in range(3)]
    try:
        stubs = [pb_grpc.BlobServiceStub(channel) for channel in channels]
        for _ in range(3):
            calls = []
            for n in range(120):
                call = stubs[n % 3].GetStream(pb.GetStreamRequest(id=blob_id), timeout=120)
                first = await call.read()
                assert isinstance(first, pb.GetStreamResponse) and first.HasField("info")
                calls.append(call)
            held = process.memory_info().rss
            assert held - idle > 120 * MiB, "the streams did not hold what gRPC buffers"
            for call in calls:
                call.cancel()
            for _ in range(150):  # up to 15 s; the loop goes on serving the cancels
                if (after := process.memory_info().rss) - idle < 64 * MiB:
                    break
                await asyncio.sleep(0.1)
            assert after - idle < 64 * MiB, (
                f"RSS {after // MiB} MiB after the cancels, idle {idle // MiB}, held {held // MiB}"
            )
    finally:
        for channel in channels:
            await channel.close(None)
    assert "Traceback" not in server.log()
