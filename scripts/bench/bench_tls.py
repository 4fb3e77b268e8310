"""The benchmark's secured server: TLS and a bearer token on, for the tls_* rows.

`start_secured_server` writes a self-signed certificate for 127.0.0.1 (made with
`cryptography`, an EC P-256 key as an operator would likely use) and a tokens file
holding the hash of a random token, and starts our server as shipped with
BLOBSTORE_TLS_CERT/KEY and BLOBSTORE_TOKENS_FILE. `secured_credentials` gives the
load generator's channel TLS trusting that certificate, and `metadata` the token for
every call, so tls_put_small / tls_get_small are the same calls as put_small / get_small
with the security on. The token goes as call metadata rather than grpc's
access_token_call_credentials, whose plug-in runs Python on a thread for every call in
the client: on the one core the load generator has, that client cost bounded the figure
(0.74 of get_small in a first run) before the server's did.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

import grpc
from bench_procs import Child, start_blobstore_server
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blobstore.grpc.auth import token_hash


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Secured:
    """The files of the secured server and the token its callers send."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = _self_signed(folder)
        self.token = secrets.token_hex(32)
        self.tokens = folder / "tokens"
        self.tokens.write_text(f"{token_hash(self.token)} bench read,write\n")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.cert.read_bytes())

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)


def start_secured_server(
    work: Path, cpus: frozenset[int] | None, env: dict[str, str]
) -> tuple[Child, Secured]:
    secured = Secured(work / "tls")
    env = {
        **env,
        "BLOBSTORE_TLS_CERT": str(secured.cert),
        "BLOBSTORE_TLS_KEY": str(secured.key),
        "BLOBSTORE_TOKENS_FILE": str(secured.tokens),
    }
    return start_blobstore_server(work, cpus, env), secured
