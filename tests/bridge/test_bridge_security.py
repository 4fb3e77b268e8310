"""The bridge in front of a token-protected gRPC server: real TLS, real curl, real processes.

Callers' Authorization headers are forwarded (the gRPC server decides); the bridge's own
service token serves stdio and callers without a header; refusals come back as
JSON-RPC -32010/-32011 and REST 401/403 with WWW-Authenticate; the bridge listens over
HTTPS, talks TLS/mTLS to the service, never logs a token, and refuses to be an open
door beyond loopback. docs/security.md's bridge rows point at these tests. Every
refusal also checks that nothing was stored.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bridge_processes import BridgeFactory
from tests.https_clients import bearer, bridge_exit, curl, https, raw_https, rpc, upstream_tls
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id, wait_until
from tests.tls_certs import Pki, server_tls_args

READ_TOKEN = "bridge-read-token-71c3a9d2"
WRITE_TOKEN = "bridge-write-token-4e8f0b6a"
WRONG_TOKEN = "bridge-wrong-token-9d2c5e1f"
SECRETS = (READ_TOKEN, WRITE_TOKEN, WRONG_TOKEN)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    from blobstore.grpc.auth import token_hash

    path = tmp_path / "tokens"
    path.write_text(
        f"{token_hash(READ_TOKEN)} reader read\n{token_hash(WRITE_TOKEN)} writer read,write\n"
    )
    return path


@pytest.fixture
def tls_server(
    start_server: Callable[..., ServerProcess], tokens_file: Path, pki: Pki
) -> ServerProcess:
    """Tokens on, TLS on, debug logs (the most a log could say)."""
    return start_server(
        "--tokens-file",
        str(tokens_file),
        *server_tls_args(pki),
        "--log-level",
        "DEBUG",
    )


def assert_no_secret(*logs: str) -> None:
    for log in logs:
        for secret in SECRETS:
            assert secret not in log


def test_callers_tokens_pass_through_over_https(
    tls_server: ServerProcess, start_bridge: BridgeFactory, pki: Pki
) -> None:
    bridge = start_bridge(
        tls_server.target,
        *upstream_tls(pki),
        *https(pki),
        "--access-log",
        "--log-level",
        "DEBUG",
    )
    assert bridge.url.startswith("https://")
    url, rest = bridge.url, bridge.url + "api/v1/blobs"
    data_dir = tls_server.data_dir

    # JSON-RPC: the writer stores, the reader reads; the server decided both.
    stored = rpc(pki, url, "blobs/put", {"data": {"a": 1}}, bearer(WRITE_TOKEN))
    blob_id = stored["result"]["blob_id"]
    got = rpc(pki, url, "blobs/get", {"blob_id": blob_id}, bearer(READ_TOKEN))
    assert got["result"]["data"] == {"a": 1}

    refused = [
        ((), -32010, "UNAUTHENTICATED"),
        ((bearer(WRONG_TOKEN),), -32010, "UNAUTHENTICATED"),
        ((f"Authorization: Basic {WRITE_TOKEN}",), -32010, "UNAUTHENTICATED"),
        ((bearer(READ_TOKEN),), -32011, "PERMISSION_DENIED"),
    ]
    for n, (presented, code, reason) in enumerate(refused):
        content = f"refused over JSON-RPC {n}".encode()
        answer = rpc(pki, url, "blobs/put", {"data": content.decode()}, *presented)
        assert answer["error"]["code"] == code, answer
        assert answer["error"]["data"]["reason"] == reason, answer
        assert not answer["error"]["data"]["retryable"]
        assert not blob_path(data_dir, sha256_id(b'"' + content + b'"')).exists()
    unauthenticated_get = rpc(pki, url, "blobs/get", {"blob_id": blob_id})
    assert unauthenticated_get["error"]["code"] == -32010

    # REST: 401 with a Bearer challenge (invalid_token when one was presented), 403.
    binary = b"\x00rest binary through https\xff"
    octet = "Content-Type: application/octet-stream"
    status, headers, _ = curl(pki, "POST", rest, binary, octet)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="blobstore"'
    status, headers, _ = curl(pki, "POST", rest, binary, octet, bearer(WRONG_TOKEN))
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="blobstore", error="invalid_token"'
    status, headers, payload = curl(pki, "POST", rest, binary, octet, bearer(READ_TOKEN))
    assert status == 403, payload
    assert headers["www-authenticate"] == 'Bearer realm="blobstore", error="insufficient_scope"'
    assert json.loads(payload)["error"]["reason"] == "PERMISSION_DENIED"
    assert not blob_path(data_dir, sha256_id(binary)).exists()
    json_body = json.dumps({"data": {"rest": "json"}}).encode()
    json_type = "Content-Type: application/json"
    status, _, payload = curl(pki, "POST", rest, json_body, json_type, bearer(READ_TOKEN))
    assert status == 403, payload
    status, _, payload = curl(pki, "POST", rest, binary, octet, bearer(WRITE_TOKEN))
    assert status == 200, payload
    hex_id = json.loads(payload)["blobId"]
    raw = "Accept: application/octet-stream"
    status, headers, _ = curl(pki, "GET", f"{rest}/{hex_id}", None, raw)
    assert status == 401 and "www-authenticate" in headers
    status, _, payload = curl(pki, "GET", f"{rest}/{hex_id}", None, raw, bearer(READ_TOKEN))
    assert status == 200 and payload == binary

    # A header that cannot be gRPC metadata is refused by the bridge itself.
    for path in ("", "api/v1/blobs"):
        done = subprocess.run(
            [
                *("curl", "-sS", "--cacert", str(pki.ca), "-o", "/dev/null"),
                *("-w", "%{http_code} %header{www-authenticate}"),
                *("-H", "Content-Type: application/json", "--data-binary", '{"data": 1}'),
                *("-H", "Authorization: Bearer \u00e9t\u00e9", url + path),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert done.stdout == '401 Bearer realm="blobstore", error="invalid_token"', done.stderr

    # Malformed requests carrying a token: aiohttp refuses them and logs the bad line,
    # which the log redaction (blobstore/logs.py) rewrites before it is written (the
    # second report may be held back by the log throttle, as a repeat of the first).
    for raw in (
        f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITE_TOKEN}\x01\r\n\r\n",
        f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {READ_TOKEN}\r\n\r\n",
    ):
        assert raw_https(pki, bridge.port, raw.encode()).startswith(b"HTTP/1.0 400")
    assert wait_until(lambda: "Authorization: [redacted]" in bridge.log()), bridge.log()

    # Plaintext HTTP to the HTTPS port gets no answer.
    plain = subprocess.run(
        ["curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{bridge.port}/healthz"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert plain.returncode != 0
    assert "POST /api/v1/blobs 401" in bridge.log()  # the access log ran, without the header
    assert_no_secret(bridge.log(), tls_server.log())


def test_service_credentials_for_stdio_and_tokenless_callers(
    tls_server: ServerProcess, start_bridge: BridgeFactory, pki: Pki, tmp_path: Path
) -> None:
    import os

    # stdio: the service token from BLOBSTORE_TOKEN, always.
    env = {**os.environ, "BLOBSTORE_TOKEN": WRITE_TOKEN}
    stdio = start_bridge(
        tls_server.target, *upstream_tls(pki), "--log-format", "json", stdio=True, env=env
    )
    stdio.send({"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": [1, 2]}})
    blob_id = stdio.read_message()["result"]["blob_id"]
    assert blob_path(tls_server.data_dir, blob_id).exists()

    # HTTP with a read-only service token: tokenless callers read; a caller's own header
    # wins over the service token, both ways.
    token_file = tmp_path / "bridge-token"
    token_file.write_text(READ_TOKEN + "\n")
    bridge = start_bridge(
        tls_server.target, *upstream_tls(pki), *https(pki), "--upstream-token-file", str(token_file)
    )
    assert rpc(pki, bridge.url, "blobs/get", {"blob_id": blob_id})["result"]["data"] == [1, 2]
    refused = rpc(pki, bridge.url, "blobs/put", {"data": "service read only"})
    assert refused["error"]["code"] == -32011
    own = rpc(pki, bridge.url, "blobs/put", {"data": "caller wins"}, bearer(WRITE_TOKEN))
    assert "result" in own, own
    wrong = rpc(pki, bridge.url, "blobs/get", {"blob_id": blob_id}, bearer(WRONG_TOKEN))
    assert wrong["error"]["code"] == -32010
    assert_no_secret(stdio.log(), bridge.log(), tls_server.log())


def test_mtls_to_the_service(
    start_server: Callable[..., ServerProcess], start_bridge: BridgeFactory, pki: Pki
) -> None:
    server = start_server(
        *server_tls_args(pki, client_ca=True),
    )
    client_cert = ["--upstream-tls-cert", str(pki.client.cert)]
    client_cert += ["--upstream-tls-key", str(pki.client.key)]
    with_cert = start_bridge(server.target, *upstream_tls(pki), *client_cert, *https(pki))
    assert "result" in rpc(pki, with_cert.url, "blobs/put", {"data": "over mTLS"})
    without = start_bridge(server.target, *upstream_tls(pki), *https(pki), "--retry-attempts", "1")
    answer = rpc(pki, without.url, "blobs/put", {"data": "no client certificate"})
    assert answer["error"]["code"] == -32001, answer


def test_bad_credential_settings_are_clear_errors(tmp_path: Path, pki: Pki) -> None:
    import os

    env = {**os.environ, "BLOBSTORE_TOKEN": WRITE_TOKEN}
    cases = [
        # 192.0.2.1 (TEST-NET-1) is never contacted: the check comes before any channel.
        (["--grpc-target", "192.0.2.1:50051"], env, 1, "plaintext"),
        (["--upstream-token-file", str(tmp_path / "absent")], None, 1, "cannot read"),
        (["--upstream-tls-cert", str(pki.client.cert)], None, 1, "go together"),
        (["--tls-cert", str(pki.server.cert)], None, 2, "go together"),
        (["--tls-cert", str(pki.ca), "--tls-key", str(pki.ca)], None, 1, "not usable"),
        (["--stdio", *https(pki)], None, 2, "stdio"),
    ]
    for args, environ, code, words in cases:
        done = bridge_exit("--http", "127.0.0.1:0", *args, env=environ)
        assert done.returncode == code, (args, done.stderr)
        assert words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert WRITE_TOKEN not in done.stderr


def test_no_open_door_by_accident(
    start_server: Callable[..., ServerProcess],
    tls_server: ServerProcess,
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    exposed = ["--http", "0.0.0.0:0"]
    open_server = start_server(data_dir=tmp_path / "open")
    # An upstream that takes calls without a token: refused, nothing listens.
    done = bridge_exit("--grpc-target", open_server.target, *exposed)
    assert done.returncode == 1, done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert "answers calls without a token" in done.stderr
    # Allowed explicitly: starts, warns once.
    allowed = start_bridge(open_server.target, *exposed, "--allow-unauthenticated")
    assert allowed.log().count("anyone who connects can read and store blobs") == 1
    # A service token for tokenless callers is an open door too.
    token_file = tmp_path / "bridge-token"
    token_file.write_text(WRITE_TOKEN)
    done = bridge_exit(
        "--grpc-target",
        tls_server.target,
        *exposed,
        *upstream_tls(pki),
        "--upstream-token-file",
        str(token_file),
    )
    assert done.returncode == 1 and "service token" in done.stderr, done.stderr
    # Pass-through to a server that wants tokens: starts; without TLS it says so.
    plain = start_bridge(tls_server.target, *exposed, *upstream_tls(pki))
    assert "without TLS" in plain.log() and "refusing" not in plain.log()
    secure = start_bridge(tls_server.target, *exposed, *upstream_tls(pki), *https(pki))
    assert "without TLS" not in secure.log()
    # The server must be reachable to be asked.
    done = bridge_exit("--grpc-target", "127.0.0.1:1", *exposed, "--retry-attempts", "1")
    assert done.returncode == 1 and "cannot be asked" in done.stderr, done.stderr
    # Loopback stays as easy as it was.
    quiet = start_bridge(open_server.target)
    assert "refusing" not in quiet.log() and "TLS" not in quiet.log()
    assert_no_secret(plain.log(), secure.log(), done.stderr)


def test_binary_put_through_https_rest_is_stored_exactly(
    tls_server: ServerProcess, start_bridge: BridgeFactory, pki: Pki
) -> None:
    """A streamed REST put carries the caller's token on its PutStream."""
    bridge = start_bridge(tls_server.target, *upstream_tls(pki), *https(pki))
    content = bytes(range(256)) * 8192  # 2 MiB: more than one PutStream chunk
    status, _, payload = curl(
        pki,
        "POST",
        bridge.url + "api/v1/blobs",
        content,
        "Content-Type: application/octet-stream",
        bearer(WRITE_TOKEN),
    )
    assert status == 200, payload
    assert blob_path(tls_server.data_dir, sha256_id(content)).exists()
    answer = rpc(
        pki,
        bridge.url,
        "blobs/get",
        {"blob_id": str(sha256_id(content))},
        bearer(READ_TOKEN),
    )
    assert base64.b64decode(answer["result"]["data"]) == content


def test_sighup_rotates_the_bridges_upstream_client_certificate(
    start_server: Callable[..., ServerProcess],
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """--upstream-tls-cert/-key are read again on SIGHUP and new upstream calls use them
    (a new channel); files that do not load leave the ones in force."""
    tokens = tmp_path / "tokens"
    tokens.write_text("cn:worker-1 bridge read,write\n")
    server = start_server(*server_tls_args(pki, client_ca=True), "--tokens-file", str(tokens))
    cert, key = tmp_path / "upstream.crt", tmp_path / "upstream.key"
    shutil.copy(pki.client.cert, cert)  # CN worker-1
    shutil.copy(pki.client.key, key)
    bridge = start_bridge(
        server.target,
        *upstream_tls(pki),
        *("--upstream-tls-cert", str(cert), "--upstream-tls-key", str(key)),
        *https(pki),
        "--retry-attempts",
        "1",
    )
    assert "result" in rpc(pki, bridge.url, "blobs/put", {"data": "as worker-1"})
    # The service now knows the new certificate only: the bridge's old one is refused.
    tokens.write_text("cn:san-client bridge read,write\n")
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: "tokens reloaded" in server.log(), 30)
    refused = rpc(pki, bridge.url, "blobs/put", {"data": "old certificate"})
    assert refused["error"]["code"] == -32010, refused
    # A certificate file that does not load: logged, the credentials in force stay.
    cert.write_text("not a certificate\n")
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "upstream TLS files not reloaded" in bridge.log(), 30)
    refused = rpc(pki, bridge.url, "blobs/put", {"data": "still the old certificate"})
    assert refused["error"]["code"] == -32010, refused
    # The rotated files (CN san-client), then SIGHUP: the bridge calls with them.
    shutil.copy(pki.san_client.cert, cert)
    shutil.copy(pki.san_client.key, key)
    bridge.signal(signal.SIGHUP)
    assert wait_until(lambda: "upstream TLS files reloaded" in bridge.log(), 30)
    stored = rpc(pki, bridge.url, "blobs/put", {"data": "as san-client"})
    assert "result" in stored, stored
    got = rpc(pki, bridge.url, "blobs/get", {"blob_id": stored["result"]["blob_id"]})
    assert got["result"]["data"] == "as san-client", got
    assert bridge.alive() and "Traceback" not in bridge.log()
