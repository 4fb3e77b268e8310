"""JWT bearer tokens on a real server: HS256 secret, RS256 public key, JWKS (RS256 + ES256).

Tokens are signed at test time with keys made by `cryptography`. Every refusal is
checked for its status and ErrorInfo reason, that nothing was stored, and that the
server's log holds neither the token nor the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.status import reason_of
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, sha256_id

AUDIENCE = "blobstore-test"
ISSUER = "https://issuer.test"
HS_SECRET = "a-shared-secret-of-more-than-32-bytes-7d1f0c9e"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(scope: str = "read write", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "ci-job-17",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "scope": scope,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """`alg: none`: no signature at all."""
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def hs256_with(secret: bytes, payload: dict[str, Any]) -> str:
    """HS256 signed by hand: PyJWT refuses a PEM public key as HMAC secret, attackers do not."""
    signing = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + b64(json.dumps(payload).encode())
    )
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


def put(server: ServerProcess, token: str, content: bytes) -> grpc.RpcError | None:
    with grpc.insecure_channel(server.target) as channel:
        try:
            pb_grpc.BlobServiceStub(channel).Put(
                pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, data=content),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return exc
    return None


def stat(server: ServerProcess, token: str, content: bytes) -> grpc.RpcError | None:
    with grpc.insecure_channel(server.target) as channel:
        try:
            pb_grpc.BlobServiceStub(channel).Stat(
                pb.StatRequest(id=sha256_id(content)),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=30,
            )
        except grpc.RpcError as exc:
            return exc
    return None


def assert_refused(
    server: ServerProcess, token: str, content: bytes, code: grpc.StatusCode, words: str
) -> None:
    error = put(server, token, content)
    assert error is not None, f"accepted: {words}"
    assert error.code() == code, (words, error)
    assert reason_of(error) == code.name, (words, error)
    assert words in (error.details() or ""), (words, error.details())
    assert token not in (error.details() or "")
    assert not blob_path(server.data_dir, sha256_id(content)).exists()


def jwt_server(
    start: Callable[..., ServerProcess], tmp_path: Path, *key_args: str
) -> ServerProcess:
    return start(
        *key_args,
        "--jwt-audience",
        AUDIENCE,
        "--jwt-issuer",
        ISSUER,
        "--jwt-leeway-seconds",
        "5",
        "--auth-failures-free",
        "1000",
        data_dir=tmp_path / f"data-{key_args[0]}",
    )


def test_rs256_public_key_and_every_refusal(
    start_server: Callable[..., ServerProcess], tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = tmp_path / "rsa.pub.pem"
    pem.write_bytes(public_pem(rsa_key))
    server = jwt_server(start_server, tmp_path, "--jwt-public-key", str(pem))
    now = int(time.time())

    def rs(**changes: Any) -> str:
        return jwt.encode(claims(**changes), rsa_key, algorithm="RS256")

    good = rs()
    assert put(server, good, b"stored with an RS256 JWT") is None
    # One configured key: the kid an identity provider sets is not looked at.
    with_kid = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "idp-key-7"})
    assert put(server, with_kid, b"a kid from the IdP") is None
    assert blob_path(server.data_dir, sha256_id(b"stored with an RS256 JWT")).exists()
    reader = rs(scope="read")
    assert stat(server, reader, b"stored with an RS256 JWT") is None
    # `scopes` as a list is read too.
    assert put(server, rs(scope=None, scopes=["write"]), b"scopes as a list") is None

    unauth, denied = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
    cases = [
        (b"expired", rs(exp=now - 60, iat=now - 700, nbf=now - 700), unauth, "expired"),
        (b"not yet valid", rs(nbf=now + 300), unauth, "not valid yet"),
        (b"wrong audience", rs(aud="another-service"), unauth, "audience"),
        (b"wrong issuer", rs(iss="https://evil.test"), unauth, "issuer"),
        (b"no exp", rs(exp=None), unauth, "'exp'"),
        (b"alg none", unsigned(claims()), unauth, "algorithm is not accepted"),
        (
            b"hs/rs confusion",
            hs256_with(public_pem(rsa_key), claims()),
            unauth,
            "algorithm is not accepted",
        ),
        (
            b"another rsa key",
            jwt.encode(claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256"),
            unauth,
            "signature does not verify",
        ),
        (b"garbage", "eyJhbGciOi.not-a.jwt", unauth, "well-formed"),
        (b"read scope writing", reader, denied, "needs write"),
        (b"no scope", rs(scope="delete everything"), denied, "needs write"),
    ]
    tokens = [good, reader]
    for content, token, code, words in cases:
        assert_refused(server, token, content, code, words)
        tokens.append(token)
    assert server.alive()
    log = server.log()
    assert "Traceback" not in log
    for token in tokens:
        signature = token.rsplit(".", 1)[-1]
        assert token not in log and (len(signature) < 16 or signature not in log)


def test_jwks_picks_the_key_by_kid(
    start_server: Callable[..., ServerProcess],
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    keys = []
    for kid, key in (("rsa-1", rsa_key), ("ec-1", ec_key)):
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[
                "RS256" if kid.startswith("rsa") else "ES256"
            ].to_jwk(key.public_key())
        )
        keys.append({**jwk, "kid": kid})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": keys}))
    server = jwt_server(start_server, tmp_path, "--jwt-jwks-file", str(jwks))
    es = jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec-1"})
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    assert put(server, es, b"ES256 by kid") is None
    assert put(server, rs, b"RS256 by kid") is None
    # The EC key's kid on an RSA signature, an unknown kid, no kid with two keys.
    wrong = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec-1"})
    assert_refused(server, wrong, b"kid mismatch", grpc.StatusCode.UNAUTHENTICATED, "algorithm")
    unknown = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-9"})
    assert_refused(server, unknown, b"unknown kid", grpc.StatusCode.UNAUTHENTICATED, "kid")
    no_kid = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert_refused(server, no_kid, b"no kid", grpc.StatusCode.UNAUTHENTICATED, "kid")


def test_hs256_shared_secret(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text(HS_SECRET + "\n")
    server = jwt_server(start_server, tmp_path, "--jwt-secret-file", str(secret))
    good = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    assert put(server, good, b"HS256") is None
    forged = jwt.encode(claims(), "another-secret-of-more-than-32-bytes-0000", algorithm="HS256")
    assert_refused(server, forged, b"forged", grpc.StatusCode.UNAUTHENTICATED, "signature")
    assert HS_SECRET not in server.log()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--jwt-secret-file", "{short}", "--jwt-audience", "a"], "needs at least 32"),
        (["--jwt-public-key", "{short}", "--jwt-audience", "a"], "not a PEM public key"),
        (["--jwt-jwks-file", "{short}", "--jwt-audience", "a"], "not a usable JWKS"),
        (["--jwt-secret-file", "{long}"], "--jwt-audience is required"),
        (
            ["--jwt-secret-file", "{long}", "--jwt-public-key", "{long}", "--jwt-audience", "a"],
            "give one of",
        ),
        (["--jwt-audience", "a"], "need a JWT key"),
    ],
)
def test_bad_jwt_settings_are_clear_errors(tmp_path: Path, args: list[str], words: str) -> None:
    import subprocess

    short, long = tmp_path / "short", tmp_path / "long"
    short.write_text("too-short")
    long.write_text(HS_SECRET)
    argv = [a.format(short=short, long=long) for a in args]
    done = subprocess.run(
        [
            "blobstore",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--address",
            "127.0.0.1:0",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr and HS_SECRET not in done.stderr
