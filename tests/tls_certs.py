"""Certificates made at test time with `cryptography`: real keys, real signatures.

`make_pki(folder)` writes a CA, a server certificate for 127.0.0.1/localhost, a
client certificate signed by the CA, a second (untrusted) CA with a client
certificate of its own, an expired client certificate of the trusted CA, and more
(see Pki).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    client: Pair
    untrusted_ca: Path
    untrusted_client: Pair
    expired_client: Pair
    # SAN DNS worker.internal and URI spiffe://blobs/worker-2, CN san-client.
    san_client: Pair
    # A server certificate (127.0.0.1/localhost) of the untrusted CA: a rotation to a new CA.
    rotated_server: Pair
    # A valid client certificate of the trusted CA, CN stranger, that no test lists.
    stranger_client: Pair


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    folder: Path,
    stem: str,
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
    expired: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Pair]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif issuer is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    pair = Pair(folder / f"{stem}.crt", folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key, pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, ca = _issue(folder, "ca", "test CA", None)
    other_cert, other_key, other = _issue(folder, "untrusted-ca", "untrusted CA", None)
    trusted = (ca_cert, ca_key)
    return Pki(
        ca=ca.cert,
        server=_issue(folder, "server", "blobstore server", trusted, server=True)[2],
        client=_issue(folder, "client", "worker-1", trusted)[2],
        untrusted_ca=other.cert,
        untrusted_client=_issue(folder, "untrusted-client", "intruder", (other_cert, other_key))[2],
        expired_client=_issue(folder, "expired-client", "old", trusted, expired=True)[2],
        san_client=_issue(
            folder,
            "san-client",
            "san-client",
            trusted,
            sans=[
                x509.DNSName("worker.internal"),
                x509.UniformResourceIdentifier("spiffe://blobs/worker-2"),
            ],
        )[2],
        rotated_server=_issue(
            folder, "rotated-server", "rotated server", (other_cert, other_key), server=True
        )[2],
        stranger_client=_issue(folder, "stranger-client", "stranger", trusted)[2],
    )


def server_tls_args(pki: Pki, *, client_ca: bool = False) -> list[str]:
    """`blobstore serve` flags for TLS with the run's server certificate; with `client_ca`,
    also mTLS against the run's CA."""
    args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    if client_ca:
        args += ["--tls-client-ca", str(pki.ca)]
    return args
