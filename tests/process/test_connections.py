"""Connections: silent, idle and excess connections cannot stop the gRPC service.

Real server processes, real sockets. A server started with the common soft open-file
limit of 1024 raises it to the hard limit; 1,100 connections that never speak do not
keep it from serving, and it closes them after the handshake timeout; past
--max-connections new connections are closed at once while the others are served.
It also warns when it listens beyond loopback, and a burst of calls on one channel
reaches admission control instead of being CANCELLED by gRPC's own queue.
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


def test_a_burst_on_one_channel_reaches_admission_control(
    start_server: Callable[..., ServerProcess],
) -> None:
    """10,000 Stat calls at once on one channel: each is answered or refused OVERLOADED.

    gRPC core's queue of calls not yet taken by the server drops calls past 1000-3000
    as CANCELLED unless it is made long enough.
    """
    server = start_server("--max-concurrent-rpcs", "64")

    async def burst() -> Counter[str]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.BlobServiceStub(channel)

            async def stat() -> str:
                try:
                    await stub.Stat(pb.StatRequest(id=ABSENT), timeout=120)
                except grpc.RpcError as exc:
                    code, reason, message = status_of(exc)
                    return f"{code.name} {reason or message}"
                return "OK"

            return Counter(await asyncio.gather(*(stat() for _ in range(10_000))))

    outcomes = asyncio.run(burst())
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED OVERLOADED"}, outcomes
    assert outcomes["OK"] > 0


def test_a_server_beyond_loopback_warns_that_it_has_no_authentication(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    quiet = start_server()
    exposed = start_server("--address", "0.0.0.0:0", data_dir=tmp_path / "exposed")
    with BlobClient(exposed.target, timeout=30, retry=RetryPolicy.off()) as client:
        assert client.stat(ABSENT) is None
    assert "no authentication and no TLS" in exposed.log()
    assert "0.0.0.0" in exposed.log()
    assert "no authentication" not in quiet.log()
