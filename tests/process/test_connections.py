"""Connections: silent, idle and excess connections cannot stop the gRPC service.

Real server processes, real sockets. A server started with the common soft open-file
limit of 1024 raises it to the hard limit; 1,100 connections that never speak do not
keep it from serving, and it closes them after the handshake timeout; past
--max-connections new connections are closed at once while the others are served.
It also warns when it listens beyond loopback, and a burst of calls on one channel
reaches admission control instead of being CANCELLED by gRPC's own queue, without
holding up the calls of another connection.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.retry import RetryPolicy
from tests.faults import raise_own_file_limit, read_until_closed, soft_file_limit, status_of
from tests.processes import ServerProcess

ABSENT = "sha256:" + "0" * 64


def test_silent_connections_past_the_soft_file_limit_do_not_stop_the_service(
    tmp_path: Path,
) -> None:
    raise_own_file_limit()
    with soft_file_limit(1024) as hard:
        server = ServerProcess(
            tmp_path / "data", tmp_path / "server.log", "--handshake-timeout-seconds", "2"
        ).start()
    try:
        assert psutil.Process(server.pid).rlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(1100)]
        try:
            with BlobClient(server.target, timeout=30) as client:
                stored = client.put_bytes(b"served past 1,100 silent connections")
                assert client.get(stored.info.blob_id).data.startswith(b"served")
            for sock in silent:  # the server closes each after the handshake timeout
                read_until_closed(sock)
        finally:
            for sock in silent:
                sock.close()
    finally:
        server.kill()
    assert "Traceback" not in server.log()


def test_connections_past_the_cap_are_closed_at_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-connections", "4", "--handshake-timeout-seconds", "3")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port))
        with extra:
            # Closed without the server's HTTP/2 settings: gRPC never took it on.
            assert read_until_closed(extra, timeout=10) == b""
        for sock in held:  # these got the settings frame, then the handshake timeout
            assert read_until_closed(sock) != b""
        with BlobClient(server.target, timeout=30) as client:
            assert client.stat(ABSENT) is None  # room again once the silent ones are gone
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("streams_per_connection", ["0", "100"])
@pytest.mark.parametrize(("method", "count"), [("Stat", 10_000), ("Get", 3_000)])
def test_a_burst_on_one_channel_reaches_admission_control(
    start_server: Callable[..., ServerProcess],
    method: str,
    count: int,
    streams_per_connection: str,
) -> None:
    """10,000 Stat or 3,000 Get calls at once on one channel: each answered or OVERLOADED.

    gRPC core's queue of calls not yet taken by the server drops calls past 1000-3000
    as CANCELLED unless it is made long enough. Without a cap on streams per connection
    ("0") the whole burst reaches the server at once, and past --max-concurrent-rpcs the
    guard refuses; with it (the default, 100) the client holds the rest of its calls.
    """
    server = start_server(
        "--max-concurrent-rpcs", "64", "--max-streams-per-connection", streams_per_connection
    )
    with BlobClient(server.target, timeout=30) as client:
        blob_id = client.put_bytes(b"a blob read by the burst " * 40).info.blob_id

    async def burst() -> Counter[str]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.BlobServiceStub(channel)

            async def call() -> str:
                try:
                    if method == "Get":
                        reply = await stub.Get(pb.GetRequest(id=blob_id), timeout=120)
                        assert reply.id == blob_id
                    else:
                        await stub.Stat(pb.StatRequest(id=ABSENT), timeout=120)
                except grpc.RpcError as exc:
                    code, reason, message = status_of(exc)
                    return f"{code.name} {reason or message}"
                return "OK"

            return Counter(await asyncio.gather(*(call() for _ in range(count))))

    outcomes = asyncio.run(burst())
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED OVERLOADED"}, outcomes
    assert outcomes["OK"] > 0


def test_a_burst_on_one_connection_does_not_hold_up_the_calls_of_another(
    start_server: Callable[..., ServerProcess],
) -> None:
    """5,000 Stat calls at once on one connection; a Stat on another is answered in between.

    gRPC core queues the calls the server has not taken yet per method, and grpc.aio
    takes them one at a time, so without a cap on streams per connection the other
    connection's Stat waited for the whole burst (the hostile soak's Stat p99: ~4 s
    beside bursts of 3,000, quiet ~0.15 s). With --max-streams-per-connection (100) the
    burst's client holds all but 100 of its calls, and the probe passes them. Judged
    by order, not time: how much of the burst was answered when the probe was.
    """
    server = start_server()
    burst_size = 5000

    async def run() -> tuple[int, int]:
        answered = 0
        first_answer = asyncio.Event()
        # A pool of its own, so the probe's channel does not share the burst's connection.
        separate = [("grpc.use_local_subchannel_pool", 1)]
        async with (
            grpc.aio.insecure_channel(server.target) as burst_channel,
            grpc.aio.insecure_channel(server.target, options=separate) as probe_channel,
        ):
            burst = pb_grpc.BlobServiceStub(burst_channel)
            probe = pb_grpc.BlobServiceStub(probe_channel)
            for stub in (burst, probe):  # both connected before the burst
                await stub.Stat(pb.StatRequest(id=ABSENT), timeout=60)

            async def stat() -> None:
                nonlocal answered
                await burst.Stat(pb.StatRequest(id=ABSENT), timeout=120)
                answered += 1
                first_answer.set()

            calls = [asyncio.ensure_future(stat()) for _ in range(burst_size)]
            await first_answer.wait()  # the server is working through the burst
            await probe.Stat(pb.StatRequest(id=ABSENT), timeout=120)
            at_probe = answered
            await asyncio.gather(*calls)
            return at_probe, answered

    at_probe, total = asyncio.run(run())
    assert total == burst_size
    assert at_probe < burst_size // 2, f"the probe waited for {at_probe} of the burst's calls"


def test_a_server_beyond_loopback_warns_that_it_has_no_authentication(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Allowed explicitly (--allow-unauthenticated), it warns once; without it, it refuses
    to start (tests/process/test_security.py::test_no_open_door_by_accident)."""
    quiet = start_server()
    exposed = start_server(
        "--address", "0.0.0.0:0", "--allow-unauthenticated", data_dir=tmp_path / "exposed"
    )
    with BlobClient(exposed.target, timeout=30, retry=RetryPolicy.off()) as client:
        assert client.stat(ABSENT) is None
    assert exposed.log().count("no authentication and no TLS") == 1
    assert "0.0.0.0" in exposed.log()
    assert "no authentication" not in quiet.log()
