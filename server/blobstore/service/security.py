"""The gRPC server's security settings, checked and built before it listens.

* `authenticator`: the token interceptor (grpc/auth.py) when --tokens-file is set.
* `server_credentials`: TLS, and mTLS with --tls-client-ca, for the gRPC port.
* `check_exposure`: a listener beyond loopback with no authentication (neither tokens
  nor client certificates) refuses to start unless --allow-unauthenticated, which
  then warns once; loopback stays as easy as it was.

Every problem is a SecurityConfigError with a message for the operator, before any
port is open.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from blobstore.grpc.auth import AuthConfigError, Authenticator, TokenTable, parse_anonymous
from blobstore.service.config import ServerConfig
from blobstore.service.hardening import is_loopback


class SecurityConfigError(Exception):
    """Settings that would leave the server unsafe or cannot be used; it does not start."""


def authenticator(config: ServerConfig) -> Authenticator | None:
    """The token interceptor, or None when authentication by token is off."""
    try:
        anonymous = parse_anonymous(config.anonymous)
        if not config.tokens_file:
            if anonymous:
                raise SecurityConfigError(
                    "--anonymous only applies with --tokens-file: without tokens every caller "
                    "may do everything"
                )
            return None
        tokens = TokenTable(Path(config.tokens_file))
    except AuthConfigError as exc:
        raise SecurityConfigError(str(exc)) from None
    return Authenticator(tokens, anonymous, config.stream_idle_seconds)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC port (mTLS with a client CA), or None for plaintext."""
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise SecurityConfigError("--tls-cert and --tls-key go together")
    cert = _read_pem(config.tls_cert, "--tls-cert")
    key = _read_pem(config.tls_key, "--tls-key")
    client_ca = _read_pem(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except Exception as exc:  # grpc's own message; the PEM text is never part of it
        raise SecurityConfigError(f"TLS settings not usable: {exc}") from None


def check_exposure(config: ServerConfig, host: str, log: logging.Logger) -> None:
    """Refuses (or, allowed, warns once about) an unauthenticated listener beyond loopback."""
    if host.startswith("unix:") or is_loopback(host):
        return
    if config.tokens_file or config.tls_client_ca:
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
            "reach, without authentication: set --tokens-file (and --anonymous for APIs "
            "that may be used without a token) or --tls-client-ca, or bind 127.0.0.1, or "
            "pass --allow-unauthenticated to accept that anyone who connects can read and "
            "store blobs (see docs/security.md)"
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
