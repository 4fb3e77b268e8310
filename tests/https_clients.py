"""Clients of an HTTPS bridge for the security tests: real curl, raw TLS bytes, the CLI.

Shared by tests/bridge/test_bridge_security.py (tokens passed through) and
tests/bridge/test_bridge_mtls.py (client-certificate identities).
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from typing import Any

from tests.tls_certs import Pair, Pki


def upstream_tls(pki: Pki) -> list[str]:
    return ["--upstream-tls-ca", str(pki.ca)]


def https(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]


def curl(
    pki: Pki,
    method: str,
    url: str,
    body: bytes | None = None,
    *headers: str,
    cert: Pair | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the real curl over HTTPS (trusting the test CA): status, headers, body.
    `cert`: the client certificate curl presents (mTLS)."""
    argv = ["curl", "-sS", "--cacert", str(pki.ca), "-X", method, "-D", "-", "--max-time", "60"]
    if cert is not None:
        argv += ["--cert", str(cert.cert), "--key", str(cert.key)]
    for header in headers:
        argv += ["-H", header]
    if body is not None:
        argv += ["--data-binary", "@-"]
    done = subprocess.run(
        [*argv, url], input=body or b"", capture_output=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr
    head, _, payload = done.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # curl's Expect: 100-continue for large bodies
        head, _, payload = payload.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields, payload


def raw_https(pki: Pki, port: int, request: bytes) -> bytes:
    """Sends raw bytes over TLS (what curl would refuse to send); the first reply bytes."""
    context = ssl.create_default_context(cafile=pki.ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request)
        return tls.recv(4096)


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


def rpc(
    pki: Pki, url: str, method: str, params: object, *headers: str, cert: Pair | None = None
) -> Any:
    """One JSON-RPC request through curl; the decoded 200 body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode()
    status, _, payload = curl(
        pki, "POST", url, body, "Content-Type: application/json", *headers, cert=cert
    )
    assert status == 200, payload
    return json.loads(payload)


def bridge_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a bridge expected not to start: its exit and output."""
    return subprocess.run(
        [sys.executable, "-m", "jsonrpc_bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
