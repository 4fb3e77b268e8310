"""Client certificates on the bridge's own HTTPS listener: identities, scopes, SIGHUP.

A real gRPC server with tokens and TLS, a real bridge with --tls-client-ca and
--client-identities, real curl and Python ssl clients presenting certificates made at
test time (tests/tls_certs.py). The bridge decides for certificate callers and calls
upstream with its own service token; callers without a certificate keep passing their
Authorization header through. docs/security.md's rows for the bridge's mTLS point here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from blobstore.security.tokens import token_hash
from tests.bridge_processes import BridgeFactory, BridgeProcess
from tests.https_clients import bearer, bridge_exit, curl, https, rpc, upstream_tls
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id, wait_until
from tests.tls_certs import Pair, Pki, server_tls_args

READ_TOKEN = "mtls-read-token-3c5e7a91"
WRITE_TOKEN = "mtls-write-token-8b2d4f60"
SERVICE_TOKEN = "mtls-service-token-1f9e0c2b"
SECRETS = (READ_TOKEN, WRITE_TOKEN, SERVICE_TOKEN, "mtls-unknown-service-token-77")
# worker-1 (CN) reads; san-client's SPIFFE URI reads and writes (its DNS line, read only,
# loses: URIs are looked up first).
IDENTITIES = (
    "cn:worker-1 reader read\n"
    "dns:worker.internal san-dns read\n"
    "uri:spiffe://blobs/worker-2 builder read,write\n"
)
JSON = "Content-Type: application/json"
OCTET = "Content-Type: application/octet-stream"


@pytest.fixture
def server(start_server: Callable[..., ServerProcess], pki: Pki, tmp_path: Path) -> ServerProcess:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"{token_hash(READ_TOKEN)} reader-token read\n"
        f"{token_hash(WRITE_TOKEN)} writer-token read,write\n"
        f"{token_hash(SERVICE_TOKEN)} bridge read,write\n"
    )
    return start_server("--tokens-file", str(tokens), *server_tls_args(pki))


def identity_args(pki: Pki, tmp_path: Path, *extra: str) -> list[str]:
    """The bridge's flags: HTTPS, client CA, identities, service token, access log."""
    identities = tmp_path / "identities"
    identities.write_text(IDENTITIES)
    service = tmp_path / "service-token"
    service.write_text(SERVICE_TOKEN + "\n")
    return [
        *upstream_tls(pki),
        *("--upstream-token-file", str(service)),
        *("--tls-client-ca", str(pki.ca), "--client-identities", str(identities)),
        *("--access-log", "--log-level", "DEBUG"),
        *extra,
    ]


def handshake_fails(pki: Pki, url: str, cert: Pair | None) -> bool:
    """Whether curl fails to get any HTTP answer (the TLS handshake was refused)."""
    argv = ["curl", "-sS", "--cacert", str(pki.ca), "--max-time", "30", "-o", "/dev/null"]
    if cert is not None:
        argv += ["--cert", str(cert.cert), "--key", str(cert.key)]
    done = subprocess.run([*argv, url + "healthz"], capture_output=True, timeout=60, check=False)
    return done.returncode != 0


def assert_no_secret(*logs: str) -> None:
    for log in logs:
        for secret in SECRETS:
            assert secret not in log


def test_certificates_get_the_scopes_of_their_lines(
    server: ServerProcess, start_bridge: BridgeFactory, pki: Pki, tmp_path: Path
) -> None:
    bridge = start_bridge(
        server.target, *https(pki), *identity_args(pki, tmp_path, "--tls-client-auth", "optional")
    )
    url, rest, data = bridge.url, bridge.url + "api/v1/blobs", server.data_dir
    reader, builder = pki.client, pki.san_client

    # The builder (SAN URI line, read,write) stores over JSON-RPC and REST; the reader reads.
    stored = rpc(pki, url, "blobs/put", {"data": {"by": "builder"}}, cert=builder)
    blob_id = stored["result"]["blob_id"]
    binary = b"\x00built by a certificate\xff"
    status, _, payload = curl(pki, "POST", rest, binary, OCTET, cert=builder)
    assert status == 200, payload
    hex_id = json.loads(payload)["blobId"]
    got = rpc(pki, url, "blobs/get", {"blob_id": blob_id}, cert=reader)
    assert got["result"]["data"] == {"by": "builder"}
    raw = "Accept: application/octet-stream"
    status, _, payload = curl(pki, "GET", f"{rest}/{hex_id}", None, raw, cert=reader)
    assert (status, payload) == (200, binary)

    # The reader may not write: the bridge refuses, though its service token could write.
    answer = rpc(pki, url, "blobs/put", {"data": "reader writing"}, cert=reader)
    assert answer["error"]["code"] == -32011, answer
    assert answer["error"]["data"]["reason"] == "PERMISSION_DENIED"
    assert "certificate 'reader'" in answer["error"]["data"]["detail"]
    assert not blob_path(data, sha256_id(b'"reader writing"')).exists()
    for body, kind in ((b"\x01reader binary", OCTET), (b'{"data": "reader rest"}', JSON)):
        status, headers, payload = curl(pki, "POST", rest, body, kind, cert=reader)
        assert status == 403, payload
        assert headers["www-authenticate"] == 'Bearer realm="blobstore", error="insufficient_scope"'
        assert json.loads(payload)["error"]["reason"] == "PERMISSION_DENIED"
    assert not blob_path(data, sha256_id(b"\x01reader binary")).exists()

    # A batch: each element by its method (the put is refused, the gets are served).
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "blobs/get", "params": {"blob_id": blob_id}},
        {"jsonrpc": "2.0", "id": 2, "method": "blobs/put", "params": {"data": "batched"}},
        {"jsonrpc": "2.0", "id": 3, "method": "blobs/get", "params": [blob_id]},
    ]
    status, _, payload = curl(pki, "POST", url, json.dumps(batch).encode(), JSON, cert=reader)
    answers = {a["id"]: a for a in json.loads(payload)}
    assert answers[1]["result"]["data"] == answers[3]["result"]["data"] == {"by": "builder"}
    assert answers[2]["error"]["code"] == -32011
    assert not blob_path(data, sha256_id(b'"batched"')).exists()

    # A certificate of the CA without a line: 401 / -32010 from the bridge, nothing sent on.
    put_x = b'{"jsonrpc":"2.0","id":1,"method":"blobs/put","params":["x"]}'
    status, headers, payload = curl(pki, "POST", url, put_x, JSON, cert=pki.stranger_client)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="blobstore"'
    error = json.loads(payload)["error"]
    assert (error["code"], error["data"]["reason"]) == (-32010, "UNAUTHENTICATED")
    assert "'cn:stranger' has no line" in error["data"]["detail"]
    status, headers, payload = curl(pki, "GET", f"{rest}/{hex_id}", None, cert=pki.stranger_client)
    assert status == 401 and "www-authenticate" in headers, payload
    assert json.loads(payload)["error"]["reason"] == "UNAUTHENTICATED"

    # Certificates that must not even connect: another CA's, an expired one.
    assert handshake_fails(pki, url, pki.untrusted_client)
    assert handshake_fails(pki, url, pki.expired_client)

    # Without a certificate (optional): the caller's header passes through, the server decides.
    passed = rpc(pki, url, "blobs/put", {"data": "token writer"}, bearer(WRITE_TOKEN))
    assert "result" in passed, passed
    denied = rpc(pki, url, "blobs/put", {"data": "token reader"}, bearer(READ_TOKEN))
    assert denied["error"]["data"]["reason"] == "PERMISSION_DENIED"
    # A header wins over a certificate, as on the gRPC server: the builder's certificate
    # with a read token cannot write.
    mixed = rpc(pki, url, "blobs/put", {"data": "mixed"}, bearer(READ_TOKEN), cert=builder)
    assert mixed["error"]["code"] == -32011, mixed
    # Neither header nor certificate: refused by the bridge (never its service token).
    status, headers, payload = curl(pki, "POST", rest, b"\x02anonymous", OCTET)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="blobstore"'
    nothing = rpc_status(pki, url, {"data": "anonymous"})
    assert nothing[0] == 401 and nothing[1]["error"]["code"] == -32010
    assert not blob_path(data, sha256_id(b"\x02anonymous")).exists()

    # Logs: the identity by name, with the request id; never a token.
    log = bridge.log()
    assert "caller=certificate 'builder' (uri:spiffe://blobs/worker-2)" in log
    assert "POST / 200" in log and "caller=certificate 'reader' (cn:worker-1)" in log
    refusal = next(line for line in log.splitlines() if "'cn:stranger' has no line" in line)
    assert "[request_id=" in refusal
    assert "HTTPS, client certificates optional" in log
    assert_no_secret(log, server.log())


def rpc_status(pki: Pki, url: str, params: object, cert: Pair | None = None) -> tuple[int, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": params})
    status, _, payload = curl(pki, "POST", url, body.encode(), JSON, cert=cert)
    return status, json.loads(payload)


class Connection:
    """One kept-alive HTTPS connection presenting a client certificate (Python's ssl)."""

    def __init__(self, bridge: BridgeProcess, ca: Path, cert: Pair) -> None:
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert.cert, cert.key)
        self.http = http.client.HTTPSConnection("127.0.0.1", bridge.port, context=context)

    def put(self, value: object) -> tuple[int, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": [value]})
        self.http.request("POST", "/", body, {"Content-Type": "application/json"})
        reply = self.http.getresponse()
        return reply.status, json.loads(reply.read())


def connects(bridge: BridgeProcess, ca: Path, cert: Pair) -> bool:
    """Whether a new connection with this certificate gets an answer (with TLS 1.3 a
    refused client certificate shows at the first read, not in the handshake)."""
    try:
        Connection(bridge, ca, cert).put("probe")
    except (OSError, http.client.HTTPException):
        return False
    return True


def handshake(
    bridge: BridgeProcess, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> ssl.SSLSession | None:
    """A TLS connection (resuming `session` if the bridge allows it) that reads /healthz;
    its session. Raises OSError if the bridge refuses the certificate."""
    with (
        socket.create_connection(("127.0.0.1", bridge.port), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname="127.0.0.1", session=session) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if not tls.recv(100).startswith(b"HTTP/1.1 "):
            raise OSError("no HTTP answer")
        return tls.session


def test_sighup_revokes_identities_and_rotates_tls_without_dropping_connections(
    server: ServerProcess, start_bridge: BridgeFactory, pki: Pki, tmp_path: Path
) -> None:
    # The listener's files at paths the test rewrites; client certificates required.
    cert, key, client_ca = tmp_path / "bridge.crt", tmp_path / "bridge.key", tmp_path / "ca.crt"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    shutil.copy(pki.ca, client_ca)
    args = identity_args(pki, tmp_path)
    args[args.index("--tls-client-ca") + 1] = str(client_ca)
    bridge = start_bridge(server.target, "--tls-cert", str(cert), "--tls-key", str(key), *args)
    assert "HTTPS, client certificates required" in bridge.log()
    # Required: no certificate, no connection, whatever the header.
    assert handshake_fails(pki, bridge.url, None)

    builder = Connection(bridge, pki.ca, pki.san_client)
    # A client trusting both CAs, keeping its TLS session for later.
    resuming = ssl.create_default_context(cafile=pki.ca)
    resuming.load_verify_locations(pki.untrusted_ca)
    resuming.load_cert_chain(pki.san_client.cert, pki.san_client.key)
    session = handshake(bridge, resuming)
    assert session is not None
    reader = Connection(bridge, pki.ca, pki.client)
    assert builder.put("before")[0] == 200
    assert reader.put("reader before")[1]["error"]["code"] == -32011

    # Revoke the reader (its line removed); a broken file first keeps the lines in force.
    identities = tmp_path / "identities"
    identities.write_text("cn:worker-1 reader read,bogus\n")
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "tokens not reloaded" in bridge.log(), 30)
    assert reader.put("still known")[1]["error"]["code"] == -32011
    identities.write_text(IDENTITIES.replace("cn:worker-1 reader read\n", "cn:intruder in read\n"))
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "tokens reloaded from" in bridge.log(), 30)
    # The same kept-alive connections: the reader is now unknown, the builder goes on.
    status, answer = reader.put("revoked")
    assert status == 401 and answer["error"]["code"] == -32010, answer
    assert builder.put("after revocation")[0] == 200
    assert not blob_path(server.data_dir, sha256_id(b'"revoked"')).exists()
    fresh = rpc_status(pki, bridge.url, ["fresh reader"], cert=pki.client)
    assert fresh[0] == 401

    # Rotate the listener: a certificate of the other CA, and that CA for clients.
    shutil.copy(pki.rotated_server.cert, cert)
    shutil.copy(pki.rotated_server.key, key)
    shutil.copy(pki.untrusted_ca, client_ca)
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "HTTPS certificate, key and client CA reloaded" in bridge.log(), 30)
    # New connections: the old CA's certificates no longer connect; the new CA's do, and
    # intruder's new line lets it read (not write).
    assert not connects(bridge, pki.untrusted_ca, pki.san_client)
    # Nor by resuming a TLS session of before (a resumption skips the certificate check).
    with pytest.raises(OSError):
        handshake(bridge, resuming, session)
    intruder = Connection(bridge, pki.untrusted_ca, pki.untrusted_client)
    assert intruder.put("intruder")[1]["error"]["code"] == -32011
    # The builder's connection, made before the rotation, was not dropped.
    assert builder.put("on the old connection")[0] == 200
    assert blob_path(server.data_dir, sha256_id(b'"on the old connection"')).exists()

    # The service token rotates on SIGHUP too: one the server does not know is refused there.
    (tmp_path / "service-token").write_text("mtls-unknown-service-token-77\n")
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "service token reloaded" in bridge.log(), 30)
    status, answer = builder.put("with an unknown service token")
    assert status == 200 and answer["error"]["code"] == -32010, answer

    # A broken certificate file: logged, the certificate in force stays.
    cert.write_text("not a certificate")
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "HTTPS certificate not reloaded" in bridge.log(), 30)
    assert Connection(bridge, pki.untrusted_ca, pki.untrusted_client).put("x")[0] == 200
    assert bridge.alive()
    assert_no_secret(bridge.log(), server.log())


def test_bad_client_certificate_settings_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    identities = tmp_path / "identities"
    identities.write_text(IDENTITIES)
    service = tmp_path / "service-token"
    service.write_text(SERVICE_TOKEN)
    tls = [*https(pki), "--tls-client-ca", str(pki.ca)]
    ids = ["--client-identities", str(identities)]
    no_identity = tmp_path / "tokens-only"
    no_identity.write_text(f"{token_hash(READ_TOKEN)} reader read\n")
    bad_line = tmp_path / "bad-line"
    bad_line.write_text("cn:worker-1 reader\n")
    token = ["--upstream-token-file", str(service)]
    env = {k: v for k, v in os.environ.items() if k != "BLOBSTORE_TOKEN"}
    cases = [
        ([*tls, *ids], 1, "has none: give --upstream-token-file"),
        ([*https(pki), *ids, *token], 2, "--client-identities needs --tls-client-ca"),
        (["--tls-client-ca", str(pki.ca)], 2, "--tls-client-ca needs the HTTPS listener"),
        ([*https(pki), "--tls-client-auth", "optional"], 2, "needs --tls-client-ca"),
        ([*tls, "--tls-client-auth", "sometimes"], 2, "expected optional or required"),
        ([*tls, "--client-identities", str(no_identity), *token], 1, "no cn:, dns: or uri:"),
        ([*tls, "--client-identities", str(bad_line), *token], 1, "line 1"),
        ([*tls, "--client-identities", str(tmp_path / "absent"), *token], 1, "cannot read"),
        ([*https(pki), "--tls-client-ca", str(service)], 1, "--tls-client-ca"),
    ]
    for args, code, words in cases:
        done = bridge_exit("--http", "127.0.0.1:0", *upstream_tls(pki), *args, env=env)
        assert done.returncode == code, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and SERVICE_TOKEN not in done.stderr


def test_identities_close_the_door_beyond_loopback(
    server: ServerProcess, start_bridge: BridgeFactory, pki: Pki, tmp_path: Path
) -> None:
    """A service token normally makes an open door; with identities it serves listed
    certificates only, so the bridge may listen beyond loopback without the override."""
    args = identity_args(pki, tmp_path, "--tls-client-auth", "optional")
    bridge = start_bridge(server.target, "--http", "0.0.0.0:0", *https(pki), *args)
    assert "refusing" not in bridge.log() and "anyone who connects" not in bridge.log()
    answer = rpc(pki, bridge.url, "blobs/put", {"data": "door"}, cert=pki.san_client)
    assert "result" in answer, answer
    status, answer = rpc_status(pki, bridge.url, {"data": "no door"})
    assert status == 401


def test_upstream_mtls_as_the_only_service_credential(
    start_server: Callable[..., ServerProcess],
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """No service token: the bridge's own client certificate (worker-1) is its credential
    upstream, and the gRPC server's line for it decides what the bridge may do at most."""
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"cn:worker-1 bridge read,write\n{token_hash(WRITE_TOKEN)} writer read,write\n"
    )
    server = start_server("--tokens-file", str(tokens), *server_tls_args(pki, client_ca=True))
    identities = tmp_path / "identities"
    identities.write_text("uri:spiffe://blobs/worker-2 builder read,write\ncn:stranger st read\n")
    env = {k: v for k, v in os.environ.items() if k != "BLOBSTORE_TOKEN"}
    bridge = start_bridge(
        server.target,
        *upstream_tls(pki),
        *("--upstream-tls-cert", str(pki.client.cert), "--upstream-tls-key", str(pki.client.key)),
        *https(pki),
        *("--tls-client-ca", str(pki.ca), "--tls-client-auth", "optional"),
        *("--client-identities", str(identities)),
        env=env,
    )
    stored = rpc(pki, bridge.url, "blobs/put", {"data": "over two mTLS hops"}, cert=pki.san_client)
    blob_id = stored["result"]["blob_id"]
    got = rpc(pki, bridge.url, "blobs/get", {"blob_id": blob_id}, cert=pki.stranger_client)
    assert got["result"]["data"] == "over two mTLS hops"
    refused = rpc(pki, bridge.url, "blobs/put", {"data": "stranger"}, cert=pki.stranger_client)
    assert refused["error"]["code"] == -32011
    assert not blob_path(server.data_dir, sha256_id(b'"stranger"')).exists()
    # Without a certificate a caller's token still decides at the server.
    passed = rpc(pki, bridge.url, "blobs/put", {"data": "token"}, bearer(WRITE_TOKEN))
    assert "result" in passed, passed
    assert rpc_status(pki, bridge.url, {"data": "nothing presented"})[0] == 401
    assert_no_secret(bridge.log(), server.log())
