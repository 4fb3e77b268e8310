"""Overload: past the caps on concurrent calls and in-flight bytes, calls are refused at once.

Admitted calls are held open with PutStreams that wait half way (no sleeps): the
refusals therefore arrive while the admitted work is still in progress, which shows
they were not queued behind it. The held calls then complete successfully.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.blobstore.v1 import blobstore_pb2 as pb
from server.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from server.client import CHANNEL_OPTIONS
from tests.faults import (
    HeldPut,
    MiB,
    RssSampler,
    check_blob_file,
    status_of,
    stored_files,
    temp_files,
)
from tests.processes import ServerProcess

if TYPE_CHECKING:
    from server.api.blobstore.v1.blobstore_pb2_grpc import BlobServiceAsyncStub

OVERLOADED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _wait_overloaded(stub: BlobServiceAsyncStub, request: pb.StatRequest) -> str:
    """Probes with Stat until one is refused (the held calls have all been admitted)."""
    for _ in range(500):
        try:
            await stub.Stat(request, timeout=10)
        except grpc.RpcError as exc:
            code, reason, message = status_of(exc)
            assert (code, reason) == OVERLOADED, message
            return message
        await asyncio.sleep(0.01)
    raise AssertionError("the server never refused a call past its cap")


async def test_calls_past_the_cap_are_refused_at_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-concurrent-rpcs", "4")
    async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        held = [HeldPut(stub, os.urandom(64 * 1024 + i)) for i in range(4)]
        probe = pb.StatRequest(id=_sha(b"probe"))
        message = await _wait_overloaded(stub, probe)
        assert "4 calls in progress" in message and "--max-concurrent-rpcs" in message

        # Many clients at once, every kind of call: all refused while the held calls wait.
        extra: list[Awaitable[object]] = [stub.Stat(probe, timeout=10) for _ in range(40)]
        extra += [stub.Put(pb.PutRequest(data=os.urandom(1024)), timeout=10) for _ in range(20)]
        extra += [stub.Get(pb.GetRequest(id=_sha(b"x")), timeout=10) for _ in range(20)]
        results = await asyncio.gather(*extra, return_exceptions=True)
        assert all(isinstance(r, grpc.RpcError) for r in results)
        assert {status_of(r)[:2] for r in results if isinstance(r, grpc.RpcError)} == {OVERLOADED}
        assert all(not h.call.done() for h in held)

        # Operators can still probe a saturated server.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # What was admitted completes, and the server takes new work again.
        replies = [await h.finish() for h in held]
        assert [r.id for r in replies] == [_sha(h.data) for h in held]
        assert (await stub.Stat(pb.StatRequest(id=replies[0].id), timeout=10)).exists
    assert len(stored_files(server.data_dir)) == 4
    for path in stored_files(server.data_dir):
        check_blob_file(path)


async def test_bytes_past_the_budget_are_refused_at_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-concurrent-rpcs", "0", "--max-inflight-bytes", str(3 * MiB))
    big = os.urandom(3 * MiB // 2)
    async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        big_id = (await stub.Put(pb.PutRequest(data=big), timeout=30)).id
        # Two streams hold about 2 MiB of the 3 MiB budget for their chunks in flight.
        held = [HeldPut(stub, os.urandom(256 * 1024 + i)) for i in range(2)]
        for _ in range(500):
            try:
                await stub.Put(pb.PutRequest(data=big), timeout=10)
            except grpc.RpcError as exc:
                code, reason, message = status_of(exc)
                assert (code, reason) == OVERLOADED, message
                assert "--max-inflight-bytes" in message
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("a unary put past the byte budget was never refused")

        # A Get whose reply would not fit is refused before the blob is read...
        with pytest.raises(grpc.RpcError) as get_error:
            await stub.Get(pb.GetRequest(id=big_id), timeout=10)
        assert status_of(get_error.value)[:2] == OVERLOADED
        # ...as is a Json stream that gathers more than the budget leaves...
        with pytest.raises(grpc.RpcError) as json_error:
            await stub.PutStream(_json_stream(2 * MiB), timeout=30)
        assert status_of(json_error.value)[:2] == OVERLOADED
        # ...while small calls still fit.
        small = await stub.Put(pb.PutRequest(data=b"small"), timeout=10)
        assert small.id == _sha(b"small")
        assert (await stub.Get(pb.GetRequest(id=small.id), timeout=10)).data == b"small"

        replies = [await h.finish() for h in held]
        assert [r.id for r in replies] == [_sha(h.data) for h in held]
        assert (await stub.Get(pb.GetRequest(id=big_id), timeout=30)).data == big
    assert temp_files(server.data_dir) == []


async def _json_stream(size: int) -> AsyncIterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_JSON, chunk=b"[")
    piece = b'"' + b"j" * (256 * 1024) + b'",'
    for _ in range(size // len(piece)):
        yield pb.PutStreamRequest(chunk=piece)
    yield pb.PutStreamRequest(chunk=b"0]")


async def test_flood_of_large_puts_keeps_memory_bounded(
    start_server: Callable[..., ServerProcess],
) -> None:
    """64 clients push 4 MiB puts as fast as they can; caps 8 calls / 16 MiB.

    Every call either succeeds (and its blob is stored intact) or is refused with
    OVERLOADED; nothing else happens, and the server's memory stays far below what
    64 x 4 MiB payloads held at once would take.
    """
    server = start_server("--max-concurrent-rpcs", "8", "--max-inflight-bytes", str(16 * MiB))
    payloads = [os.urandom(4 * MiB) for _ in range(8)]
    outcomes: dict[str, int] = {"ok": 0, "overloaded": 0}
    stored: set[str] = set()

    async def client(index: int, stub: BlobServiceAsyncStub) -> None:
        for round_ in range(6):
            data = payloads[(index + round_) % len(payloads)][: 4 * MiB - index]
            try:
                reply = await stub.Put(pb.PutRequest(data=data), timeout=60)
            except grpc.RpcError as exc:
                assert status_of(exc)[:2] == OVERLOADED, status_of(exc)
                outcomes["overloaded"] += 1
            else:
                assert reply.id == _sha(data)
                stored.add(reply.id)
                outcomes["ok"] += 1

    async with RssSampler(server.pid) as rss:
        before = rss.rss()
        channels = [
            grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) for _ in range(8)
        ]
        try:
            stubs = [pb_grpc.BlobServiceStub(c) for c in channels]
            await asyncio.gather(*(client(i, stubs[i % len(stubs)]) for i in range(64)))
        finally:
            for channel in channels:
                await channel.close(None)
    assert outcomes["ok"] > 0 and outcomes["overloaded"] > 0, outcomes
    growth = max(rss.samples) - before
    # 64 payloads of 4 MiB held at once would be 256 MiB (twice that with copies).
    assert growth < 160 * MiB, f"server RSS grew by {growth / MiB:.0f} MiB"
    on_disk = {"sha256:" + p.name for p in stored_files(server.data_dir)}
    assert stored <= on_disk
    for path in stored_files(server.data_dir):
        check_blob_file(path)
