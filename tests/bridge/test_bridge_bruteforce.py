"""Brute force through the bridge: failed authentications counted per HTTP client, slowed.

A real bridge in front of a real gRPC server with --tokens-file. The server's own
slow-down is switched off (--auth-failures-free 100000), so every wait measured here is
the bridge's: it counts the wrong tokens it passed through per client IP (the server
only ever sees the bridge) and delays its refusals past the free ones, by at least the
documented 0.25 s doubling to the maximum (lower bounds on a sleep; no upper bounds).
Ordering, not timing, shows that nobody else waits: a good caller of the same address
and a guesser from another loopback address (127.0.0.2) are answered while the slowed
guesser is still waiting. The bridge's own refusals of presented credentials (a header
it cannot forward, a client certificate without a line) count too; presenting nothing
does not. docs/security.md's brute-force row for the bridge points here.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blobstore.security.tokens import token_hash
from tests.bridge.test_bridge_mtls import JSON, SERVICE_TOKEN, identity_args
from tests.bridge_processes import BridgeFactory, BridgeProcess
from tests.https_clients import curl, https
from tests.processes import ServerProcess
from tests.rpc_helpers import wait_until
from tests.tls_certs import Pki, server_tls_args

GOOD_TOKEN = "bruteforce-good-token-5b1e7c0d"
WRONG_TOKEN = "bruteforce-wrong-token-a83f6e92"
FREE = 2
MAX_DELAY = 4.0


@pytest.fixture
def bridge(
    start_server: Callable[..., ServerProcess], start_bridge: BridgeFactory, tmp_path: Path
) -> BridgeProcess:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(GOOD_TOKEN)} writer read,write\n")
    server = start_server("--tokens-file", str(tokens), "--auth-failures-free", "100000")
    return start_bridge(
        server.target,
        "--auth-failures-free",
        str(FREE),
        "--auth-failure-max-delay-seconds",
        str(MAX_DELAY),
    )


class Reply:
    def __init__(self, status: int, body: bytes, seconds: float) -> None:
        self.status, self.body, self.seconds = status, body, seconds

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


def post(
    bridge: BridgeProcess,
    path: str,
    body: bytes,
    token: str | None,
    *,
    source: str = "127.0.0.1",
    content_type: str = "application/json",
    forwarded_for: str | None = None,
) -> Reply:
    """One POST on a new connection from `source`, timed from before the connect."""
    headers = {"Content-Type": content_type}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    started = time.monotonic()
    connection = http.client.HTTPConnection(
        "127.0.0.1", bridge.port, timeout=60, source_address=(source, 0)
    )
    try:
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    return Reply(response.status, payload, time.monotonic() - started)


def rpc_put(bridge: BridgeProcess, token: str | None, value: object, **kw: Any) -> Reply:
    message = {"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": value}}
    return post(bridge, "/", json.dumps(message).encode(), token, **kw)


def rest_put(bridge: BridgeProcess, token: str | None, data: bytes) -> Reply:
    return post(bridge, "/api/v1/blobs", data, token, content_type="application/octet-stream")


def assert_refused(reply: Reply, rest: bool) -> None:
    if rest:
        assert reply.status == 401, reply.body
        assert reply.json()["error"] == {
            "status": 401,
            "reason": "UNAUTHENTICATED",
            "message": reply.json()["error"]["message"],  # type: ignore[index]
        }
    else:
        assert reply.status == 200, reply.body
        assert reply.json()["error"]["code"] == -32010, reply.body  # type: ignore[index]


def expected_delay(failure: int) -> float:
    """The documented wait of the n-th failure (1-based) of a peer in its window."""
    over = failure - FREE
    return 0.0 if over <= 0 else min(0.25 * 2 ** (over - 1), MAX_DELAY)


def test_wrong_tokens_are_slowed_per_client_and_nobody_else_waits(bridge: BridgeProcess) -> None:
    # Calls without credentials are not guesses: not counted (the log shows 1 below).
    for n in range(FREE + 3):
        assert_refused(rpc_put(bridge, None, f"anonymous {n}", source="127.0.0.3"), rest=False)

    # Wrong tokens from 127.0.0.1, over JSON-RPC and REST alike: the first FREE are
    # answered at once, the later ones after 0.25 s, 0.5 s, 1 s, 2 s (at least).
    failures = 0
    for n in range(FREE + 4):
        rest = n % 2 == 1
        if rest:
            reply = rest_put(bridge, WRONG_TOKEN, f"guess {n}".encode())
        else:
            reply = rpc_put(bridge, WRONG_TOKEN, f"guess {n}")
        failures += 1
        assert_refused(reply, rest)
        assert reply.seconds >= expected_delay(failures), (failures, reply.seconds)
    assert expected_delay(failures) == 2.0

    # The next guess waits MAX_DELAY; meanwhile a good caller of the same address and a
    # first-time guesser from another address are answered.
    slowed: list[Reply] = []
    guesser = threading.Thread(
        target=lambda: slowed.append(rpc_put(bridge, WRONG_TOKEN, "slowed guess")), daemon=True
    )
    guesser.start()
    good = rpc_put(bridge, GOOD_TOKEN, {"stored": "while a guesser waits"})
    other = rpc_put(bridge, WRONG_TOKEN, "another address", source="127.0.0.2")
    still_waiting = guesser.is_alive()
    guesser.join(60)
    assert still_waiting, "the guesser's refusal came back before the other callers' answers"
    assert "result" in good.json(), good.body
    assert_refused(other, rest=False)
    assert_refused(slowed[0], rest=False)
    failures += 1
    assert expected_delay(failures) == MAX_DELAY
    assert slowed[0].seconds >= MAX_DELAY, slowed[0].seconds

    # The bridge's log names each client's address, never the token.
    assert_refused(rpc_put(bridge, WRONG_TOKEN, "from .3", source="127.0.0.3"), rest=False)
    wait_until(lambda: "failed authentication from 127.0.0.3" in bridge.log(), timeout=10)
    log = bridge.log()
    assert "failed authentication from 127.0.0.1 (1 in its current 60 s window)" in log, log
    assert "failed authentication from 127.0.0.2 (1 in its current 60 s window)" in log, log
    assert "failed authentication from 127.0.0.3 (1 in its current 60 s window)" in log, log
    assert "the gRPC service refused the credentials passed through" in log, log
    assert WRONG_TOKEN not in log and GOOD_TOKEN not in log
    assert "Traceback" not in log


def test_an_unusable_header_counts_too(bridge: BridgeProcess) -> None:
    """The bridge's own refusal of a header it cannot forward is a failed attempt."""
    header = "Bearer caf\xe9"  # latin-1 on the wire: not printable ASCII
    for failure in range(1, FREE + 3):
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", bridge.port, timeout=60)
        try:
            connection.putrequest("POST", "/")
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Authorization", header.encode("latin-1"))
            body = b'{"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": 1}}'
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        assert response.status == 401, payload
        assert time.monotonic() - started >= expected_delay(failure)
    log = bridge.log()
    assert "failed authentication from 127.0.0.1" in log, log
    assert "not a usable credential" in log


def test_an_unknown_client_certificate_counts_and_presenting_nothing_does_not(
    start_server: Callable[..., ServerProcess],
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """The bridge's own refusal of a certificate its identities file does not list is a
    failed attempt of that client; a caller with neither certificate nor header is not."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(SERVICE_TOKEN)} bridge read,write\n")
    server = start_server("--tokens-file", str(tokens), *server_tls_args(pki))
    bridge = start_bridge(
        server.target,
        *https(pki),
        *identity_args(pki, tmp_path, "--tls-client-auth", "optional"),
        *("--auth-failures-free", str(FREE), "--auth-failure-max-delay-seconds", str(MAX_DELAY)),
    )
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blobs/get", "params": {}}).encode()
    for _ in range(FREE + 2):
        status, _, _ = curl(pki, "POST", bridge.url, body, JSON)
        assert status == 401
    for failure in range(1, FREE + 4):
        started = time.monotonic()
        status, _, payload = curl(pki, "POST", bridge.url, body, JSON, cert=pki.stranger_client)
        assert status == 401 and b"'cn:stranger' has no line" in payload, payload
        assert time.monotonic() - started >= expected_delay(failure), failure
    log = bridge.log()
    assert "failed authentication from 127.0.0.1 (1 in its current 60 s window)" in log, log
    assert "'cn:stranger' has no line" in log
    assert SERVICE_TOKEN not in log


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted(
    start_server: Callable[..., ServerProcess], start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    """With --trusted-proxies, the clients a proxy forwards (X-Forwarded-For) are counted
    and slowed one by one, not as the proxy; a client's own forged header, and the header
    of a peer that is not a trusted proxy, change nothing."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(GOOD_TOKEN)} writer read,write\n")
    server = start_server("--tokens-file", str(tokens), "--auth-failures-free", "100000")
    bridge = start_bridge(
        server.target,
        "--auth-failures-free",
        str(FREE),
        "--auth-failure-max-delay-seconds",
        str(MAX_DELAY),
        "--trusted-proxies",
        "127.0.0.1, 10.0.0.0/8",
    )
    # The proxy (127.0.0.1) forwards a guesser at 203.0.113.7, which forged a header of
    # its own: "198.51.100.1" on the left, and the proxy's hop (10.1.2.3) on the right.
    guesser = "198.51.100.1, 203.0.113.7, 10.1.2.3"
    for failure in range(1, FREE + 3):
        reply = rpc_put(bridge, WRONG_TOKEN, f"guess {failure}", forwarded_for=guesser)
        assert_refused(reply, rest=False)
        assert reply.seconds >= expected_delay(failure), (failure, reply.seconds)
    # Another client behind the same proxy is not slowed by the guesser's count: its
    # first failures are free (the guesser's next refusal would wait 0.5 s or more).
    other = rpc_put(bridge, WRONG_TOKEN, "other client", forwarded_for="203.0.113.8")
    assert_refused(other, rest=False)
    assert other.seconds < expected_delay(FREE + 3), other.seconds
    # A peer that is not a trusted proxy (127.0.0.2) is counted as itself, whatever it
    # writes in X-Forwarded-For.
    spoof = rpc_put(bridge, WRONG_TOKEN, "spoofed", source="127.0.0.2", forwarded_for="10.9.9.9")
    assert_refused(spoof, rest=False)
    wait_until(lambda: "failed authentication from 127.0.0.2" in bridge.log(), timeout=10)
    log = bridge.log()
    # (One line per client and window: the delays above showed the counts.)
    assert "failed authentication from 203.0.113.7 (1 in its" in log, log
    assert "failed authentication from 203.0.113.8 (1 in its" in log, log
    for never in ("198.51.100.1", "10.1.2.3", "10.9.9.9", "from 127.0.0.1 "):
        assert f"failed authentication from {never}" not in log, (never, log)
    # A good caller through the proxy works, and a proxy's header that is not a list of
    # addresses is refused with a message saying so.
    good = rpc_put(bridge, GOOD_TOKEN, {"through": "the proxy"}, forwarded_for="203.0.113.9")
    assert "result" in good.json(), good.body
    bad = rpc_put(bridge, GOOD_TOKEN, "bad header", forwarded_for="203.0.113.9, not-an-ip")
    assert bad.status == 400, bad.body
    assert b"X-Forwarded-For from a trusted proxy holds 'not-an-ip'" in bad.body
    assert "Traceback" not in bridge.log()


def test_trusted_proxies_that_are_not_addresses_stop_the_start() -> None:
    flags = ["--http", "127.0.0.1:0", "--trusted-proxies", "10.0.0.0/8, proxy.example"]
    started = subprocess.run(
        [sys.executable, "-m", "jsonrpc_bridge.cli", "--grpc-target", "127.0.0.1:1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2, started
    assert "'proxy.example' is neither an IP address nor a network" in started.stderr
    assert "Traceback" not in started.stderr
