"""Tokens, scopes, TLS and mTLS on a real server, with real grpcurl and real certificates.

Every refusal is checked three ways: the status (UNAUTHENTICATED / PERMISSION_DENIED
with its ErrorInfo reason), nothing stored (no blob file), and no token in the
server's log. docs/security.md's refusal table points at these tests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import string
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import AsyncBlobClient, BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, grpcurl_dir, sha256_id, wait_until
from tests.tls_certs import Pki, server_tls_args

READ_TOKEN = "read-token-3f9c1e7a"
WRITE_TOKEN = "write-token-8b2d4c6e"
OTHER_TOKEN = "other-token-5a7e9f1b"
SECRETS = (READ_TOKEN, WRITE_TOKEN, OTHER_TOKEN, "wrong-token-0d1e2f3a")


def write_tokens(path: Path, *tokens: tuple[str, str, str]) -> Path:
    path.write_text(
        "# hash name scopes\n"
        + "".join(f"{token_hash(token)} {name} {scopes}\n" for token, name, scopes in tokens)
    )
    return path


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(
        tmp_path / "tokens",
        (READ_TOKEN, "reader", "read"),
        (WRITE_TOKEN, "writer", "read,write"),
        (OTHER_TOKEN, "other", "read,write"),
    )


@pytest.fixture
def tls_server(
    start_server: Callable[..., ServerProcess], tokens_file: Path, pki: Pki
) -> ServerProcess:
    return start_server(
        "--tokens-file",
        str(tokens_file),
        "--anonymous",
        "stepflow.v1=read,write",
        *server_tls_args(pki),
    )


def grpcurl(*args: str, data: object | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(grpcurl_dir() / "grpcurl"), "-max-time", "30"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, check=False)


def put_body(content: bytes) -> dict[str, str]:
    return {"blob_type": "BLOB_TYPE_BINARY", "data": base64.b64encode(content).decode()}


def assert_refused(done: subprocess.CompletedProcess[str], code: str, reason: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"Code: {code}" in output, output
    assert f'"reason":"{reason}"' in output.replace(" ", ""), output


def assert_no_secret(server: ServerProcess) -> None:
    log = server.log()
    for secret in SECRETS:
        assert secret not in log


def test_tokens_and_scopes_over_tls_with_grpcurl(tls_server: ServerProcess, pki: Pki) -> None:
    tls = ["-cacert", str(pki.ca)]
    put = "blobstore.v1.BlobService/Put"

    def bearer(token: str) -> list[str]:
        return ["-H", f"authorization: Bearer {token}"]

    refused = [
        (b"no token", [], "Unauthenticated", "UNAUTHENTICATED"),
        (b"wrong token", bearer("wrong-token-0d1e2f3a"), "Unauthenticated", "UNAUTHENTICATED"),
        (
            b"not bearer",
            ["-H", f"authorization: Basic {WRITE_TOKEN}"],
            "Unauthenticated",
            "UNAUTHENTICATED",
        ),
        (b"read token", bearer(READ_TOKEN), "PermissionDenied", "PERMISSION_DENIED"),
    ]
    for content, headers, code, reason in refused:
        done = grpcurl(*tls, *headers, tls_server.target, put, data=put_body(content))
        assert_refused(done, code, reason)
        assert not blob_path(tls_server.data_dir, sha256_id(content)).exists()

    stored = b"written with the write token"
    done = grpcurl(*tls, *bearer(WRITE_TOKEN), tls_server.target, put, data=put_body(stored))
    assert done.returncode == 0, done.stderr
    assert blob_path(tls_server.data_dir, sha256_id(stored)).exists()
    stat = grpcurl(
        *tls,
        *bearer(READ_TOKEN),
        tls_server.target,
        "blobstore.v1.BlobService/Stat",
        data={"id": sha256_id(stored)},
    )
    assert stat.returncode == 0 and '"exists": true' in stat.stdout, stat.stderr
    assert_refused(
        grpcurl(
            *tls, tls_server.target, "blobstore.v1.BlobService/Stat", data={"id": sha256_id(stored)}
        ),
        "Unauthenticated",
        "UNAUTHENTICATED",
    )

    # stepflow.v1 is open to callers without a token (--anonymous), as Stepflow's workers are.
    flow = b"a stepflow worker's blob"
    done = grpcurl(
        *tls,
        tls_server.target,
        "stepflow.v1.BlobService/PutBlob",
        data={"raw_data": base64.b64encode(flow).decode(), "blob_type": "binary"},
    )
    assert done.returncode == 0, done.stderr
    assert blob_path(tls_server.data_dir, sha256_id(flow)).exists()

    # Health and reflection stay open.
    health = grpcurl(*tls, tls_server.target, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
    listed = grpcurl(*tls, tls_server.target, "list")
    assert listed.returncode == 0 and "blobstore.v1.BlobService" in listed.stdout, listed.stderr

    # Plaintext against the TLS port: no call gets through.
    plain = grpcurl(
        "-plaintext", *bearer(WRITE_TOKEN), tls_server.target, put, data=put_body(b"plain")
    )
    assert plain.returncode != 0
    assert not blob_path(tls_server.data_dir, sha256_id(b"plain")).exists()
    assert_no_secret(tls_server)


def test_python_client_with_tls_and_tokens(
    tls_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    def client(token: str | None) -> BlobClient:
        creds = channel_credentials(token=token, tls_ca=pki.ca)
        return BlobClient(tls_server.target, timeout=30, retry=RetryPolicy.off(), credentials=creds)

    with client(WRITE_TOKEN) as writer:
        stored = writer.put_bytes(b"python over TLS").info.blob_id
        assert writer.get(stored).data == b"python over TLS"
    with client(READ_TOKEN) as reader:
        assert reader.stat(stored) is not None
        with pytest.raises(errors.PermissionDenied, match="needs write"):
            reader.put_bytes(b"a reader writing")
        # A streamed put (over the unary limit) is refused as cleanly, and stores nothing.
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(5 * 1024 * 1024))
        with pytest.raises(errors.PermissionDenied):
            reader.put_file(big)
    with client(None) as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.stat(stored)

    async def with_asyncio() -> bytes:
        creds = channel_credentials(token=READ_TOKEN, tls_ca=pki.ca)
        async with AsyncBlobClient(tls_server.target, timeout=30, credentials=creds) as reader:
            with pytest.raises(errors.PermissionDenied):
                await reader.put_bytes(b"an asyncio reader writing")
            return (await reader.get(stored)).data

    assert asyncio.run(with_asyncio()) == b"python over TLS"
    assert not blob_path(tls_server.data_dir, sha256_id(b"an asyncio reader writing")).exists()
    assert not blob_path(tls_server.data_dir, sha256_id(b"a reader writing")).exists()
    assert not blob_path(tls_server.data_dir, sha256_id(big.read_bytes())).exists()
    assert_no_secret(tls_server)


def test_cli_takes_token_from_environment_and_tls_ca(
    tls_server: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    data = tmp_path / "f.txt"
    data.write_bytes(b"from the command line")

    def put(token: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["blobstore", "put", str(data), "--target", tls_server.target, "--tls-ca", str(pki.ca)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "BLOBSTORE_TOKEN": token},
        )

    refused = put(READ_TOKEN)
    assert refused.returncode == 1 and "PermissionDenied" in refused.stderr, refused.stderr
    done = put(WRITE_TOKEN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == sha256_id(b"from the command line")


@pytest.fixture
def mtls_server(start_server: Callable[..., ServerProcess], pki: Pki) -> ServerProcess:
    return start_server(
        *server_tls_args(pki, client_ca=True),
    )


def test_mtls_requires_a_client_certificate_of_the_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    put = "blobstore.v1.BlobService/Put"
    tls = ["-cacert", str(pki.ca)]
    ok = grpcurl(
        *tls,
        "-cert",
        str(pki.client.cert),
        "-key",
        str(pki.client.key),
        mtls_server.target,
        put,
        data=put_body(b"with a client certificate"),
    )
    assert ok.returncode == 0, ok.stderr
    assert blob_path(mtls_server.data_dir, sha256_id(b"with a client certificate")).exists()
    for name, pair in (
        ("none", None),
        ("untrusted", pki.untrusted_client),
        ("expired", pki.expired_client),
    ):
        content = f"client certificate: {name}".encode()
        cert = ["-cert", str(pair.cert), "-key", str(pair.key)] if pair else []
        done = grpcurl(*tls, *cert, mtls_server.target, put, data=put_body(content))
        assert done.returncode != 0, (name, done.stdout)
        assert not blob_path(mtls_server.data_dir, sha256_id(content)).exists(), name
        # The Python client is refused the same way, before any call is made.
        creds = channel_credentials(
            tls_ca=pki.ca, tls_cert=pair.cert if pair else None, tls_key=pair.key if pair else None
        )
        with (
            BlobClient(
                mtls_server.target, timeout=10, retry=RetryPolicy.off(), credentials=creds
            ) as c,
            pytest.raises(errors.Unavailable),
        ):
            c.put_bytes(content)
    assert mtls_server.alive()


def test_sighup_revokes_a_token_without_dropping_calls(
    start_server: Callable[..., ServerProcess], tokens_file: Path
) -> None:
    server = start_server("--tokens-file", str(tokens_file))
    creds = {t: channel_credentials(token=t) for t in (WRITE_TOKEN, OTHER_TOKEN)}
    chunks = [bytes([index]) * 300_000 for index in range(20)]
    release = threading.Event()

    def slow_stream() -> Iterator[pb.PutStreamRequest]:
        yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, chunk=chunks[0])
        release.wait(60)  # the token is revoked while this stream is under way
        for chunk in chunks[1:]:
            yield pb.PutStreamRequest(chunk=chunk)

    result: dict[str, object] = {}

    def stream_put() -> None:
        credentials = creds[OTHER_TOKEN]
        assert credentials is not None
        with grpc.secure_channel(server.target, credentials) as channel:
            try:
                result["id"] = (
                    pb_grpc.BlobServiceStub(channel).PutStream(slow_stream(), timeout=60).id
                )
            except grpc.RpcError as exc:  # reported by the assertion below
                result["error"] = exc

    thread = threading.Thread(target=stream_put)
    thread.start()
    try:
        # The stream is past the authenticator once its first chunk is in a temp file.
        tmp = server.data_dir / "tmp"
        assert wait_until(lambda: _has_data(tmp), 30)
        write_tokens(tokens_file, (WRITE_TOKEN, "writer", "read,write"))  # OTHER_TOKEN revoked
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: "tokens reloaded" in server.log(), 30), server.log()
    finally:
        release.set()
        thread.join(60)
    assert result.get("id") == sha256_id(b"".join(chunks)), result
    with (
        BlobClient(
            server.target, timeout=30, retry=RetryPolicy.off(), credentials=creds[OTHER_TOKEN]
        ) as c,
        pytest.raises(errors.Unauthenticated, match="unknown or revoked"),
    ):
        c.put_bytes(b"after revocation")
    with BlobClient(
        server.target, timeout=30, retry=RetryPolicy.off(), credentials=creds[WRITE_TOKEN]
    ) as c:
        c.put_bytes(b"a token still in force")
    assert not blob_path(server.data_dir, sha256_id(b"after revocation")).exists()
    # A tokens file that does not parse on SIGHUP keeps the tokens in force.
    tokens_file.write_text(f"{WRITE_TOKEN} writer read,write\n")  # a token instead of its hash
    server.signal(signal.SIGHUP)
    assert wait_until(lambda: "tokens not reloaded" in server.log(), 30), server.log()
    with BlobClient(
        server.target, timeout=30, retry=RetryPolicy.off(), credentials=creds[WRITE_TOKEN]
    ) as c:
        assert c.stat(sha256_id(b"a token still in force")) is not None
    assert server.alive()
    assert_no_secret(server)


def _has_data(folder: Path) -> bool:
    """True once a non-empty file is in `folder` (files may vanish while it looks)."""
    for path in folder.iterdir():
        try:
            if path.stat().st_size:
                return True
        except FileNotFoundError:
            continue
    return False


def serve_and_wait(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `blobstore serve ARGS` that must exit by itself (a refused configuration)."""
    return subprocess.run(
        ["blobstore", "serve", "--data-dir", str(tmp_path / "refused-data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_open_door_by_accident(
    start_server: Callable[..., ServerProcess], tmp_path: Path, tokens_file: Path
) -> None:
    refused = serve_and_wait(tmp_path, "--address", "0.0.0.0:0")
    assert refused.returncode == 1
    assert (
        "refusing to listen on 0.0.0.0" in refused.stderr
        and "--allow-unauthenticated" in refused.stderr
    )
    assert not (tmp_path / "refused-data").exists()  # refused before anything was opened

    allowed = start_server(
        "--address", "0.0.0.0:0", "--allow-unauthenticated", data_dir=tmp_path / "a"
    )
    assert allowed.log().count("with no authentication") == 1
    with BlobClient(allowed.target, timeout=30, retry=RetryPolicy.off()) as client:
        client.put_bytes(b"open by choice")
    authenticated = start_server(
        "--address", "0.0.0.0:0", "--tokens-file", str(tokens_file), data_dir=tmp_path / "b"
    )
    assert "with no authentication" not in authenticated.log()
    assert "without TLS" in authenticated.log()  # tokens in plaintext beyond loopback: said
    quiet = start_server(data_dir=tmp_path / "c")
    assert "authentication" not in quiet.log() and "without TLS" not in quiet.log()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tokens-file", "{tokens}"], "the first field must be sha256:"),
        (["--tokens-file", "{missing}"], "cannot read the tokens file"),
        (["--anonymous", "stepflow.v1=read"], "only applies with --tokens-file"),
        (["--tokens-file", "{good}", "--anonymous", "other.v1=read"], "API one of"),
        (
            ["--tokens-file", "{good}", "--anonymous", "stepflow.v1=delete"],
            "unknown scope(s) delete",
        ),
        (["--tls-cert", "{good}"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "{good}"], "--tls-client-ca needs --tls-cert"),
    ],
)
def test_bad_security_settings_are_clear_errors(
    tmp_path: Path, tokens_file: Path, args: list[str], words: str
) -> None:
    bad = tmp_path / "bad-tokens"
    bad.write_text(f"# a token where its hash belongs\n{WRITE_TOKEN} writer write\n")
    paths = {"tokens": str(bad), "missing": str(tmp_path / "nope"), "good": str(tokens_file)}
    done = serve_and_wait(tmp_path, "--address", "127.0.0.1:0", *[a.format(**paths) for a in args])
    assert done.returncode == 1, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr
    assert WRITE_TOKEN not in done.stderr


def test_reflection_can_be_switched_off(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--no-reflection")
    listed = grpcurl("-plaintext", server.target, "list")
    assert listed.returncode != 0
    health = grpcurl("-plaintext", "-d", "{}", server.target, "grpc.health.v1.Health/Check")
    assert health.returncode != 0  # grpcurl needs reflection for the schema...
    with BlobClient(server.target, timeout=30) as client:  # ...the service itself still serves
        client.put_bytes(b"no reflection")


def test_random_authorization_metadata_is_refused_cleanly(
    start_server: Callable[..., ServerProcess], tokens_file: Path
) -> None:
    """200 random printable `authorization` values (and other metadata) on a real server.

    The brute-force slow-down is set out of reach here (it has its own test)."""
    server = start_server("--tokens-file", str(tokens_file), "--auth-failures-free", "100000")
    rng = random.Random(14)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " "
    sent: list[str] = []
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        for index in range(200):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 120)))
            if index % 2:
                value = "Bearer " + value
            sent.append(value.strip())
            metadata = (("authorization", value), ("x-noise", value))
            try:
                stub.Put(
                    pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, data=b"fuzz"),
                    metadata=metadata,
                    timeout=30,
                )
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, (value, exc)
            else:
                raise AssertionError(f"accepted {value!r}")
    assert not blob_path(server.data_dir, sha256_id(b"fuzz")).exists()
    assert server.alive()
    log = server.log()
    assert "Traceback" not in log
    assert not [v for v in sent if len(v) > 12 and v in log]
