"""The gRPC server's security settings, checked and built before it listens.

* `build_security`: the Authority (security/authority.py: tokens file, JWT keys,
  anonymous policy) and the interceptors that apply it (grpc/auth.py), when
  authentication is on (--tokens-file and/or a JWT key); the failed-attempt limits.
* `ReloadableTls`: TLS, and mTLS with --tls-client-ca, for the gRPC port, as gRPC's
  dynamic server credentials: SIGHUP reads the certificate, key and client CA again
  and checks them; gRPC's certificate-configuration fetcher hands the new ones to the
  next TLS handshake. Connections already open (and their calls) keep the ones they
  were made with, so nothing is dropped; files that do not load keep the old ones.
* `check_exposure`: a listener beyond loopback with no authentication (neither tokens,
  JWTs nor client certificates) refuses to start unless --allow-unauthenticated, which
  then warns once; loopback stays as easy as it was.

Every problem is a SecurityConfigError with a message for the operator, before any
port is open.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from blobstore.grpc.auth import Authenticator, CertificateGate
from blobstore.security.authority import Authority, parse_anonymous
from blobstore.security.failures import FailedAttempts, FailureLimits
from blobstore.security.jwts import JwtSettings, JwtVerifier
from blobstore.security.tokens import AuthConfigError, TokenTable
from blobstore.service.config import ServerConfig
from blobstore.service.hardening import is_loopback

log = logging.getLogger("blobstore.security")


class SecurityConfigError(Exception):
    """Settings that would leave the server unsafe or cannot be used; it does not start."""


@dataclass
class Security:
    """What authentication the server runs with (all None: every caller may do everything)."""

    authority: Authority | None = None
    authenticator: Authenticator | None = None
    gate: CertificateGate | None = None

    def describe(self) -> str:
        if self.authority is None:
            return "no bearer tokens"
        tokens = self.authority.tokens
        parts = []
        if tokens is not None:
            parts.append(f"{len(tokens)} bearer token(s)")
            if self.gate is not None:
                parts.append(f"{tokens.identities} client certificate identit(ies)")
        if self.authority.jwt is not None:
            parts.append(self.authority.jwt.describe())
        return f"{', '.join(parts)}; without credentials: {self.authority.describe_anonymous()}"


def jwt_settings(config: ServerConfig) -> JwtSettings:
    return JwtSettings(
        secret_file=config.jwt_secret_file,
        public_key=config.jwt_public_key,
        jwks_file=config.jwt_jwks_file,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        leeway_seconds=config.jwt_leeway_seconds,
    )


def authentication_on(config: ServerConfig) -> bool:
    return bool(config.tokens_file) or jwt_settings(config).enabled


def build_security(config: ServerConfig) -> Security:
    """The authority and its interceptors, or an empty Security when authentication is off."""
    try:
        anonymous = parse_anonymous(config.anonymous)
        if not authentication_on(config):
            if anonymous:
                raise SecurityConfigError(
                    "--anonymous only applies with --tokens-file or a JWT key: without "
                    "them every caller may do everything"
                )
            if config.jwt_audience or config.jwt_issuer:
                raise SecurityConfigError(
                    "--jwt-audience/--jwt-issuer need a JWT key: --jwt-secret-file, "
                    "--jwt-public-key or --jwt-jwks-file"
                )
            return Security()
        tokens = TokenTable(Path(config.tokens_file)) if config.tokens_file else None
        settings = jwt_settings(config)
        verifier = JwtVerifier(settings) if settings.enabled else None
    except AuthConfigError as exc:
        raise SecurityConfigError(str(exc)) from None
    authority = Authority(tokens, anonymous, verifier)
    limits = FailureLimits(
        free=config.auth_failures_free, max_delay=config.auth_failure_max_delay_seconds
    )
    certificates = bool(config.tls_client_ca) and tokens is not None
    authenticator = Authenticator(
        authority, config.stream_idle_seconds, FailedAttempts(limits), certificates
    )
    return Security(authority, authenticator, CertificateGate(authority) if certificates else None)


class ReloadableTls:
    """The TLS files of the gRPC port, reloadable on SIGHUP (see the module docstring)."""

    def __init__(self, cert: str, key: str, client_ca: str) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._initial = self._load()
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = _read_pem(self.cert, "--tls-cert")
        key = _read_pem(self.key, "--tls-key")
        client_ca = _read_pem(self.client_ca, "--tls-client-ca") if self.client_ca else None
        _check_pair(cert, key, client_ca)
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # None means "unchanged" (grpc's docs)
            require_client_authentication=bool(self.client_ca),
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called for each new TLS handshake: a new configuration once
        after a reload, else None (keep the current one). Plain code: no I/O, no logs."""
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        try:
            self._pending = self._load()
        except SecurityConfigError as exc:
            log.error("TLS certificate not reloaded, the previous one stays in force: %s", exc)
            return False
        log.info("TLS certificate, key and client CA reloaded; new connections use them")
        return True


def server_credentials(config: ServerConfig) -> ReloadableTls | None:
    """TLS of the gRPC port (mTLS with a client CA), or None for plaintext."""
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    return ReloadableTls(config.tls_cert, config.tls_key, config.tls_client_ca)


def check_exposure(config: ServerConfig, host: str, log: logging.Logger) -> None:
    """Refuses (or, allowed, warns once about) an unauthenticated listener beyond loopback."""
    if host.startswith("unix:") or is_loopback(host):
        return
    if authentication_on(config) or config.tls_client_ca:
        if not config.tls_cert:
            log.warning(
                "the gRPC server listens on %s without TLS: bearer tokens and blobs cross "
                "the network in plaintext; set --tls-cert/--tls-key",
                host or "all addresses",
            )
        return
    if not config.allow_unauthenticated:
        raise SecurityConfigError(
            f"refusing to listen on {host or 'all addresses'}, which other machines can "
            "reach, without authentication: set --tokens-file or a JWT key (and --anonymous "
            "for APIs that may be used without a token) or --tls-client-ca, or bind "
            "127.0.0.1, or pass --allow-unauthenticated to accept that anyone who connects "
            "can read and store blobs (see docs/security.md)"
        )
    log.warning(
        "the gRPC server listens on %s, which other machines can reach, with no "
        "authentication%s (--allow-unauthenticated): anyone who can connect can read and "
        "store blobs",
        host or "all addresses",
        "" if config.tls_cert else " and no TLS",
    )


def _read_pem(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


def _check_pair(cert: bytes, key: bytes, client_ca: bytes | None) -> None:
    """Checks that the key is the certificate's and the CA parses, with Python's ssl
    (gRPC would only fail the handshakes). The PEM text is never part of a message."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.touch(0o600)
        key_path.write_bytes(key)
        try:
            context.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as exc:
            why = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            raise SecurityConfigError(
                f"--tls-cert/--tls-key: not a certificate chain and its private key ({why})"
            ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise SecurityConfigError(
                f"--tls-client-ca: no usable CA certificate ({exc})"
            ) from None
