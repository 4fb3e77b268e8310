"""The bridge's HTTP side under hostile connections: silent, slow, lying and too many.

A real bridge process started with the common soft open-file limit of 1024 raises it to
the hard limit and keeps serving past 1,100 silent connections, closing them after the
idle timeout without filling its log; a request that stops half way through its headers
is closed, one whose body never arrives gets 408; past --max-connections new connections
get 503; a 10,000-element batch of puts is stored whole; and a bridge allowed to listen
beyond loopback in front of a server without tokens warns that anyone can get in (without
--allow-unauthenticated it does not start: tests/bridge/test_bridge_security.py).
"""

from __future__ import annotations

import json
import resource
import socket
from collections.abc import Callable
from pathlib import Path

import psutil

from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.faults import raise_own_file_limit, read_until_closed, soft_file_limit, wait_until
from tests.processes import ServerProcess

PUT = {"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": {"ok": True}}}


def _connect(bridge: BridgeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", bridge.port))


def test_silent_slow_and_lying_connections(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    raise_own_file_limit()
    args = ("--idle-timeout-seconds", "2", "--body-timeout-seconds", "2")
    with soft_file_limit(1024) as hard:
        bridge = BridgeProcess(server.target, tmp_path / "bridge.log", *args).start()
    try:
        assert psutil.Process(bridge.pid).rlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        silent = [_connect(bridge) for _ in range(1100)]
        try:
            rpc = HttpRpc(bridge.url)
            assert "result" in rpc.call(PUT)
            rpc.close()
            for sock in silent:  # closed by the bridge after the idle timeout
                read_until_closed(sock)
        finally:
            for sock in silent:
                sock.close()

        with _connect(bridge) as slow_headers:
            slow_headers.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
            read_until_closed(slow_headers)  # never finished its headers: closed

        with _connect(bridge) as lying:
            lying.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 30000000\r\n\r\n{"a":'
            )
            reply = read_until_closed(lying)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
            assert "did not arrive within 2 s" in body["error"]["data"]["detail"]
    finally:
        bridge.kill()
    log = bridge.log()
    assert "Traceback" not in log
    assert len(log) < 20_000, log[-2000:]


def test_connections_past_the_cap_get_503(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log", "--max-connections", "3").start()
    held = [HttpRpc(bridge.url) for _ in range(3)]
    try:
        for rpc in held:  # a request answered: the connection is surely open and counted
            assert "result" in rpc.call(PUT)
        with _connect(bridge) as extra:
            assert read_until_closed(extra, timeout=10).startswith(b"HTTP/1.1 503")
        held.pop().close()

        def room_again() -> bool:
            rpc = HttpRpc(bridge.url)
            try:
                return rpc.post(json.dumps(PUT).encode()).status == 200
            except OSError:
                return False
            finally:
                rpc.close()

        wait_until(room_again, 30, "room for a connection once one has closed")
    finally:
        for rpc in held:
            rpc.close()
        bridge.kill()


def test_a_batch_of_10000_puts_is_stored_whole(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """At most --max-batch-concurrency elements run at once, and overload is retried."""
    server = start_server("--max-concurrent-rpcs", "16")
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log").start()
    try:
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": "blobs/put", "params": {"data": {"n": i}}}
            for i in range(10_000)
        ]
        rpc = HttpRpc(bridge.url, timeout=600)
        answers = rpc.call(json.dumps(batch).encode())
        errors = [answer["error"] for answer in answers if "error" in answer]
        assert not errors, errors[:3]
        assert sorted(answer["id"] for answer in answers) == list(range(10_000))
        rpc.close()
    finally:
        bridge.kill()


def test_a_bridge_beyond_loopback_warns_that_it_has_no_authentication(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    bridge = BridgeProcess(
        server.target, tmp_path / "bridge.log", "--http", "0.0.0.0:0", "--allow-unauthenticated"
    ).start()
    try:
        rpc = HttpRpc(bridge.url)
        assert "result" in rpc.call(PUT)
        rpc.close()
    finally:
        bridge.kill()
    log = bridge.log()
    assert log.count("anyone who connects can read and store blobs") == 1, log
    assert "answers calls without a token" in log and "without TLS" in log
