"""mTLS identities mapped to scopes, TLS files reloaded on SIGHUP, and the brute-force slow-down.

Real servers, real TLS handshakes with certificates made at test time, real grpcurl.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from blobstore.status import reason_of
from tests.process.test_security import assert_refused, grpcurl, put_body
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id, wait_until
from tests.tls_certs import Pair, Pki, make_pki, server_tls_args

WRITE_TOKEN = "identity-write-token-4e8a1c"
READ_TOKEN = "identity-read-token-9b3f2d"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def identities(path: Path, *lines: str) -> Path:
    path.write_text(
        f"{token_hash(WRITE_TOKEN)} writer read,write\n"
        f"{token_hash(READ_TOKEN)} reader read\n" + "".join(f"{line}\n" for line in lines)
    )
    return path


def client_of(server: ServerProcess, pki: Pki, pair: Pair, token: str | None = None) -> BlobClient:
    creds = channel_credentials(token=token, tls_ca=pki.ca, tls_cert=pair.cert, tls_key=pair.key)
    return BlobClient(server.target, timeout=30, retry=RetryPolicy.off(), credentials=creds)


def test_client_certificates_get_the_scopes_of_their_lines(
    start_server: Callable[..., ServerProcess], pki: Pki, tmp_path: Path
) -> None:
    tokens = identities(
        tmp_path / "tokens", "cn:worker-1 worker read,write", "dns:worker.internal san-worker read"
    )
    server = start_server(
        "--tokens-file",
        str(tokens),
        *server_tls_args(pki, client_ca=True),
    )
    assert "2 client certificate identit(ies)" in server.log()
    put = "blobstore.v1.BlobService/Put"

    def with_cert(pair: Pair, *more: str) -> list[str]:
        return ["-cacert", str(pki.ca), "-cert", str(pair.cert), "-key", str(pair.key), *more]

    # CN worker-1: read,write, no token needed.
    done = grpcurl(*with_cert(pki.client), server.target, put, data=put_body(b"by CN"))
    assert done.returncode == 0, done.stderr
    assert blob_path(server.data_dir, sha256_id(b"by CN")).exists()
    # SAN DNS worker.internal: read only.
    with client_of(server, pki, pki.san_client) as san:
        assert san.stat(sha256_id(b"by CN")) is not None
        with pytest.raises(errors.PermissionDenied, match="san-worker"):
            san.put_bytes(b"dns writing")
        big = tmp_path / "big.bin"
        big.write_bytes(b"s" * (5 * 1024 * 1024))
        with pytest.raises(errors.PermissionDenied):  # PutStream: read to its end, then refused
            san.put_file(big)
    assert not blob_path(server.data_dir, sha256_id(b"dns writing")).exists()
    assert not blob_path(server.data_dir, sha256_id(big.read_bytes())).exists()
    # A token decides over the certificate: a read token with worker-1's certificate.
    refused = grpcurl(
        *with_cert(pki.client, "-H", f"authorization: Bearer {READ_TOKEN}"),
        server.target,
        put,
        data=put_body(b"read token, write certificate"),
    )
    assert_refused(refused, "PermissionDenied", "PERMISSION_DENIED")

    # The URI line (more specific than the DNS one) gives san-client write; worker-1 is removed.
    identities(
        tokens,
        "dns:worker.internal san-worker read",
        "uri:spiffe://blobs/worker-2 spiffe read,write",
    )
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: "tokens reloaded" in server.log(), 30)
    with client_of(server, pki, pki.san_client) as san:
        san.put_bytes(b"uri writing")
        # GetStream through the gate: allowed for a certificate with read...
        san.get_to_file(sha256_id(b"by CN"), tmp_path / "streamed")
        assert san.get(sha256_id(b"by CN")).data == b"by CN"  # unary Get (a reserving call)
        assert (tmp_path / "streamed").read_bytes() == b"by CN"
    with client_of(server, pki, pki.client) as removed, pytest.raises(errors.Unauthenticated):
        removed.get_to_file(sha256_id(b"by CN"), tmp_path / "refused")  # ...refused without
    assert not (tmp_path / "refused").exists()
    # A certificate without a line names no caller: UNAUTHENTICATED, as the bridge's 401.
    refused = grpcurl(*with_cert(pki.client), server.target, put, data=put_body(b"CN removed"))
    assert_refused(refused, "Unauthenticated", "UNAUTHENTICATED")
    assert "has no line in the tokens file" in refused.stderr
    assert not blob_path(server.data_dir, sha256_id(b"CN removed")).exists()
    # Without a certificate there is no TLS handshake at all.
    assert grpcurl("-cacert", str(pki.ca), server.target, put, data=put_body(b"x")).returncode
    assert server.alive()
    log = server.log()
    assert WRITE_TOKEN not in log and READ_TOKEN not in log


def _slow_stream(chunks: list[bytes], release: threading.Event) -> Iterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, chunk=chunks[0])
    release.wait(60)
    for chunk in chunks[1:]:
        yield pb.PutStreamRequest(chunk=chunk)


def test_sighup_rotates_the_tls_certificate_without_dropping_calls(
    start_server: Callable[..., ServerProcess], pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key))
    chunks = [bytes([i]) * 200_000 for i in range(10)]
    release = threading.Event()
    result: dict[str, object] = {}
    old = channel_credentials(tls_ca=pki.ca)
    assert old is not None

    def stream_put() -> None:
        with grpc.secure_channel(server.target, old) as channel:
            try:
                stub = pb_grpc.BlobServiceStub(channel)
                result["id"] = stub.PutStream(_slow_stream(chunks, release), timeout=60).id
            except grpc.RpcError as exc:
                result["error"] = exc

    thread = threading.Thread(target=stream_put)
    thread.start()
    try:
        assert wait_until(
            lambda: any(p.stat().st_size for p in (server.data_dir / "tmp").iterdir()), 30
        )
        shutil.copy(pki.rotated_server.cert, cert)
        shutil.copy(pki.rotated_server.key, key)
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: "TLS certificate, key and client CA reloaded" in server.log(), 30)
        # New connections get the new certificate: trusted by the new CA only.
        with BlobClient(
            server.target,
            timeout=30,
            retry=RetryPolicy.off(),
            credentials=channel_credentials(tls_ca=pki.untrusted_ca),
        ) as rotated:
            rotated.put_bytes(b"after the rotation")
        with (
            BlobClient(
                server.target,
                timeout=10,
                retry=RetryPolicy.off(),
                credentials=channel_credentials(tls_ca=pki.ca),
            ) as stale,
            pytest.raises(errors.Unavailable),
        ):
            stale.put_bytes(b"trusting the old CA")
    finally:
        release.set()
        thread.join(60)
    # The stream that was under way on the old connection finished and is stored.
    assert result.get("id") == sha256_id(b"".join(chunks)), result
    # Broken files on SIGHUP: logged, the certificate in force stays.
    cert.write_text("not a certificate\n")
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: "TLS certificate not reloaded" in server.log(), 30)
    with BlobClient(
        server.target,
        timeout=30,
        retry=RetryPolicy.off(),
        credentials=channel_credentials(tls_ca=pki.untrusted_ca),
    ) as rotated:
        assert rotated.stat(sha256_id(b"after the rotation")) is not None
    assert server.alive() and "Traceback" not in server.log()


def _h2_handshake(
    server: ServerProcess, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession | None, bool, bytes]:
    """A TLS connection speaking HTTP/2's preface: its session, whether it resumed
    `session`, and the server's first bytes (its SETTINGS frame if it let us in; none if
    it refused our certificate, which under TLS 1.3 shows after the handshake)."""
    host, port = server.target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=30) as plain,
        context.wrap_socket(plain, server_hostname="127.0.0.1", session=session) as tls,
    ):
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        try:
            answer = tls.recv(64)
        except OSError:
            answer = b""
        # TLS 1.3 tickets arrive after the handshake: read on so the session holds one.
        with contextlib.suppress(OSError):
            tls.settimeout(0.5)
            tls.recv(64)
        return tls.session, bool(tls.session_reused), answer


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_tls_session_of_before_a_client_ca_rotation_is_not_resumed(
    start_server: Callable[..., ServerProcess],
    pki: Pki,
    tmp_path: Path,
    version: ssl.TLSVersion,
) -> None:
    """A resumed TLS session skips the client-certificate check. After SIGHUP replaces
    the client CA, a session made with the old CA's certificate must not bring it back:
    gRPC core makes a new TLS context for the new files, whose tickets the old ones are
    not (the bridge, on Python's ssl, issues no tickets at all with a client CA)."""
    cert, key, ca = tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.crt"
    for source, target in ((pki.server.cert, cert), (pki.server.key, key), (pki.ca, ca)):
        shutil.copy(source, target)
    tokens = identities(tmp_path / "tokens", "cn:worker-1 worker read,write")
    server = start_server(
        "--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca),
        "--tokens-file", str(tokens),
    )  # fmt: skip
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_verify_locations(pki.untrusted_ca)  # trusts the server before and after
    context.load_cert_chain(pki.client.cert, pki.client.key)
    context.set_alpn_protocols(["h2"])
    context.minimum_version = context.maximum_version = version
    session, resumed, answer = _h2_handshake(server, context)
    assert session is not None and not resumed and answer, answer
    # Resumption works while nothing changed (so the check below can fail).
    _, resumed, answer = _h2_handshake(server, context, session)
    assert resumed and answer

    shutil.copy(pki.rotated_server.cert, cert)
    shutil.copy(pki.rotated_server.key, key)
    shutil.copy(pki.untrusted_ca, ca)
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: "TLS certificate, key and client CA reloaded" in server.log(), 30)
    try:
        _, resumed, answer = _h2_handshake(server, context, session)
    except OSError:  # TLS 1.2: the server refuses in the handshake
        resumed, answer = False, b""
    assert not resumed and not answer, (resumed, answer)
    assert server.alive() and "Traceback" not in server.log()


def test_a_failing_peer_is_slowed_down_and_others_are_not(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = identities(tmp_path / "tokens")
    server = start_server(
        "--tokens-file",
        str(tokens),
        "--auth-failures-free",
        "3",
        "--auth-failure-max-delay-seconds",
        "3",
    )
    wrong = "wrong-token-c0ffee-1234"
    bad_md = (("authorization", f"Bearer {wrong}"),)
    good_md = (("authorization", f"Bearer {WRITE_TOKEN}"),)
    request = pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, data=b"guess")

    def bad_call(stub: pb_grpc.BlobServiceStub) -> tuple[float, grpc.RpcError]:
        started = time.monotonic()
        try:
            stub.Put(request, metadata=bad_md, timeout=60)
        except grpc.RpcError as exc:
            return time.monotonic() - started, exc
        raise AssertionError("a wrong token was accepted")

    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        # Failures 1-3 are free; 4..7 wait 0.25, 0.5, 1, 2 s (at least: never less).
        for expected in (0, 0, 0, 0.25, 0.5, 1.0, 2.0):
            took, error = bad_call(stub)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(error) == "UNAUTHENTICATED"
            assert took >= expected * 0.95, (expected, took)
        # The 8th waits the cap (3 s); meanwhile a good caller's calls go through at once.
        pending: dict[str, object] = {}
        waiting = threading.Thread(target=lambda: pending.update(result=bad_call(stub)))
        waiting.start()
        time.sleep(0.1)
        with BlobClient(
            server.target,
            timeout=30,
            retry=RetryPolicy.off(),
            credentials=channel_credentials(token=WRITE_TOKEN),
        ) as good:
            for index in range(10):
                good.put_bytes(f"good call {index}".encode())
        assert waiting.is_alive(), "the delayed refusal ended before the good calls"
        waiting.join(30)
        took, error = pending["result"]  # type: ignore[misc]
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and took >= 3 * 0.95
        # A good token from the failing peer is not delayed either (only refusals wait).
        stub.Put(
            pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, data=b"same peer, good"),
            metadata=good_md,
            timeout=60,
        )
    assert not blob_path(server.data_dir, sha256_id(b"guess")).exists()
    log = server.log()
    assert wrong not in log
    # Logged at a limited rate: one line for the first failure within the 10 s interval.
    lines = [line for line in log.splitlines() if "failed authentication from 127.0.0.1" in line]
    assert 1 <= len(lines) <= 2, lines
