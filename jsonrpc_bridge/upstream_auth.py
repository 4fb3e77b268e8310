"""Which credentials the bridge's calls to the gRPC service carry, and over what channel.

Precedence, per call (docs/bridge.md, "Credentials"):
1. the caller's `Authorization` header (HTTP only), forwarded verbatim as the gRPC
   `authorization` metadata, so the gRPC server decides who may do what;
2. otherwise the bridge's service token (`--upstream-token-file`, else `BLOBSTORE_TOKEN`),
   the only choice over stdio, which has no headers;
3. otherwise no token: the server's policy for unauthenticated callers applies.

With client-certificate identities on the listener (`--client-identities`,
client_identity.py) step 2 serves only requests of a listed certificate, which the
bridge has authorized itself: a caller that presents neither header nor certificate
is refused before any upstream call, and never acts with the bridge's credentials.
Such a bridge must have service credentials (a token and/or `--upstream-tls-cert`).

A token is sent only where it cannot be read on the way: over TLS
(`--upstream-tls-ca`/`--upstream-tls-cert`), or in plaintext to a loopback target.
A plaintext target beyond loopback gets no token (the bridge says so at start).
SIGHUP reads `--upstream-token-file` again (`reload`), so the service token rotates
without a restart; `BLOBSTORE_TOKEN` is read once. It reads the `--upstream-tls-*`
files again too (`reload_tls`): the bridge then moves to a new channel with them.

The caller's header travels in a context variable set by the HTTP transport for the
request's task; the interceptors here read it on every upstream call, retries and
streams included. Nothing here logs a token, and no error message quotes one.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from blobstore.credentials import channel_credentials
from blobstore.service.hardening import is_loopback
from jsonrpc_bridge.client_identity import acting_for_certificate

log = logging.getLogger("jsonrpc_bridge")

AUTHORIZATION = "authorization"
TOKEN_ENV = "BLOBSTORE_TOKEN"
# What a gRPC metadata value may hold (printable ASCII), and a bound on its size:
# anything else is refused by the bridge before a call is made.
_VALID_VALUE = re.compile(r"[\x20-\x7e]{1,8192}")

caller_authorization: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "caller_authorization", default=None
)
"""The current HTTP request's Authorization header (None: it sent none)."""


class UpstreamConfigError(Exception):
    """Upstream credentials that cannot be used; the bridge does not start."""


def acceptable(value: str) -> bool:
    """Whether an Authorization header can be forwarded as gRPC metadata."""
    return _VALID_VALUE.fullmatch(value) is not None


@dataclass
class UpstreamAuth:
    """The bridge's own credentials and whether tokens may go on its channel."""

    service_token: str | None
    channel: grpc.ChannelCredentials | None  # TLS (and mTLS) of the channel; None: plaintext
    sends_tokens: bool
    certificate_callers: bool = False
    """The service token serves only requests of a listed client certificate."""
    token_file: str = ""
    """Where the service token was read from (reload() reads it again); "": not a file."""
    tls_files: tuple[str, str, str] = ("", "", "")
    """--upstream-tls-ca, -cert and -key (reload_tls() reads them again)."""

    def reload_tls(self) -> grpc.ChannelCredentials | None:
        """Reads the --upstream-tls-* files again (SIGHUP): the channel credentials to use
        from now on, or None if there are no such files or they do not load (logged; the
        credentials in force stay). A channel's credentials are fixed when it is made, so
        the caller makes a new channel with them (service.BlobService.use_credentials)."""
        ca, cert, key = self.tls_files
        if not (ca or cert):
            return None
        try:
            _check_tls_files(ca, cert, key)
            channel = channel_credentials(tls_ca=ca or None, tls_cert=cert, tls_key=key)
        except (ValueError, OSError) as exc:
            log.error("upstream TLS files not reloaded, the ones in force stay: %s", exc)
            return None
        self.channel = channel
        log.info("upstream TLS files reloaded; new upstream calls use them")
        return channel

    def reload(self) -> bool:
        """Reads --upstream-token-file again (SIGHUP): calls from now on carry the new
        token. A file that cannot serve is logged and the token in force stays."""
        if not self.token_file:
            return False
        try:
            token = _service_token(self.token_file, {})
        except UpstreamConfigError as exc:
            log.error("service token not reloaded, the one in force stays: %s", exc)
            return False
        self.service_token = token  # one assignment: a call sees the old token or the new
        log.info("service token reloaded from %s", self.token_file)
        return True

    def token_for_call(self) -> str | None:
        """The `authorization` value of an upstream call made now (None: none is sent)."""
        if not self.sends_tokens:
            return None
        caller = caller_authorization.get()
        if caller is not None:
            # The routes refuse an unusable header before calling; /healthz, which does
            # not, probes without it rather than fail on metadata gRPC cannot send.
            return caller if acceptable(caller) else None
        if self.service_token is None:
            return None
        if self.certificate_callers and not acting_for_certificate():
            return None
        return f"Bearer {self.service_token}"

    def interceptors(self) -> list[Any]:
        """Channel interceptors adding the token of each call (none if none is ever sent)."""
        if not self.sends_tokens:
            return []
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self)]


def configure(
    target: str,
    *,
    token_file: str = "",
    tls_ca: str = "",
    tls_cert: str = "",
    tls_key: str = "",
    certificate_callers: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> UpstreamAuth:
    """The upstream credentials for these settings; UpstreamConfigError names a problem.

    `certificate_callers`: the listener has client-certificate identities, which need
    the bridge's own credentials."""
    token = _service_token(token_file, environ)
    try:
        channel = channel_credentials(tls_ca=tls_ca or None, tls_cert=tls_cert, tls_key=tls_key)
    except ValueError as exc:
        raise UpstreamConfigError(str(exc).replace("--tls", "--upstream-tls")) from None
    secure = channel is not None or loopback_target(target)
    if token is not None and not secure:
        raise UpstreamConfigError(
            f"a service token would cross the network in plaintext to {target}: give "
            "--upstream-tls-ca (the gRPC server's CA) or use a loopback target"
        )
    if certificate_callers and token is None and not tls_cert:
        raise UpstreamConfigError(
            "--client-identities: the bridge calls the gRPC service for a client "
            "certificate's caller with its own credentials, and has none: give "
            "--upstream-token-file (or BLOBSTORE_TOKEN) and/or --upstream-tls-cert/"
            "--upstream-tls-key"
        )
    return UpstreamAuth(
        token, channel, secure, certificate_callers, token_file, (tls_ca, tls_cert, tls_key)
    )


def _check_tls_files(ca: str, cert: str, key: str) -> None:
    """Raises ssl.SSLError (an OSError) or OSError if the files are not a usable CA and
    certificate with its key: gRPC would take them and fail every handshake after."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        context.load_verify_locations(ca)
    if cert:
        context.load_cert_chain(cert, key)


def loopback_target(target: str) -> bool:
    """True if every server `target` names is on this machine."""
    if target.startswith("unix:"):
        return True
    if target.startswith("dns:"):
        target = target.rpartition("/")[2]
    hosts = [part.strip().rpartition(":")[0] for part in target.split(",") if part.strip()]
    return bool(hosts) and all(is_loopback(host) for host in hosts)


def _service_token(token_file: str, environ: Mapping[str, str]) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise UpstreamConfigError(
                f"--upstream-token-file: cannot read {token_file}: {why}"
            ) from None
        source = "--upstream-token-file"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
    if not token:
        if token_file:
            raise UpstreamConfigError(f"--upstream-token-file: {token_file} is empty")
        return None
    if not acceptable(f"Bearer {token}") or " " in token:
        raise UpstreamConfigError(f"{source}: the token must be one word of printable ASCII")
    return token


def _with_token(auth: UpstreamAuth, details: Any) -> Any:
    value = auth.token_for_call()
    if value is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[AUTHORIZATION] = value
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, auth: UpstreamAuth) -> None:
        self._auth = auth

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(self._auth, details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, auth: UpstreamAuth) -> None:
        self._auth = auth

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(self._auth, details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, auth: UpstreamAuth) -> None:
        self._auth = auth

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_token(self._auth, details), requests)
