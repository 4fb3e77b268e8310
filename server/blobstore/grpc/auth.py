"""Who may call what on the gRPC port: the interceptors in front of the blob services.

The decision itself (tokens, JWTs, certificates, the anonymous policy, scopes) is
blobstore.security.authority's, shared with other transports; this module applies it
to gRPC calls of blobstore.v1.BlobService and stepflow.v1.BlobService. Health and
reflection stay open (load balancers probe health without credentials; reflection
only describes the protocol, whose .proto files are public).

* `Authenticator`, placed before the guard (grpc/guard.py): calls with an
  `authorization` value (a static token or a JWT) or covered by the anonymous policy
  are decided from their metadata alone, so a refused call never takes an admission
  ticket, never reaches the servicer or the store. A refusal for wrong credentials
  (errors.InvalidCredentials) is counted against the peer (security/failures.py) and,
  past the free failures, answered after a wait - an asyncio sleep in the refusal's
  own handler, which holds no thread and no ticket.
* `CertificateGate`, placed after the guard, only with mTLS and a tokens file: a call
  without `authorization` that the anonymous policy does not cover is decided by its
  client certificate's names (`cn:`, `dns:`, `uri:` lines of the tokens file). gRPC
  gives the peer's certificate (context.auth_context()) to the handler only, not to
  interceptors, so this check runs as the call starts, inside the guard's admission:
  such a call holds an admission ticket for its check, and a refused one still never
  reaches the servicer or the store.

Scopes: `read` (Get, GetStream, Stat, FindMissing, BatchGet, stepflow GetBlob), `write`
(Put, PutStream, BatchPut, stepflow PutBlob), `admin` (Delete, Prune).
Refusals: UNAUTHENTICATED (no credentials where they are needed, wrong ones) and
PERMISSION_DENIED (a known caller without the scope), each with its ErrorInfo reason
from status.py's table. Credentials are never logged: a refusal names the caller's
entry (NAME), a JWT's subject or a certificate's name at most.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from blobstore import errors
from blobstore.grpc.guard import abort_call, refusal
from blobstore.grpc.interceptor_base import (
    GATED_SERVICES,
    Context,
    GatedInterceptor,
    Handler,
    behavior_slot,
    metadata_value,
)
from blobstore.security.authority import APIS, Authority, Principal, parse_anonymous
from blobstore.security.failures import FailedAttempts
from blobstore.security.tokens import (
    AuthConfigError,
    TokenTable,
    identity_names,
    parse_tokens,
    token_hash,
)

__all__ = [
    "AuthConfigError",
    "Authenticator",
    "CertificateGate",
    "TokenTable",
    "certificate_names",
    "parse_anonymous",
    "parse_tokens",
    "token_hash",
]

AUTHORIZATION = "authorization"
_SCOPE_OF_METHOD = {
    "Get": "read",
    "GetStream": "read",
    "Stat": "read",
    "FindMissing": "read",
    "GetBlob": "read",
    "BatchGet": "read",
    "Put": "write",
    "BatchPut": "write",
    "PutStream": "write",
    "PutBlob": "write",
    "Delete": "admin",
    "Prune": "admin",
}


@dataclass(frozen=True)
class _Rule:
    """What a gated method needs: its API, its scope, and whether its client streams."""

    api: str
    scope: str
    client_streaming: bool


# Built from the services' descriptors: a method added to a .proto without a row in
# _SCOPE_OF_METHOD fails here, at import, rather than being left open or closed silently.
_RULES: dict[str, _Rule] = {
    f"/{service.full_name}/{method.name}": _Rule(
        service.full_name.rsplit(".", 1)[0],
        _SCOPE_OF_METHOD[method.name],
        method.client_streaming,
    )
    for service in GATED_SERVICES.values()
    for method in service.methods
}
assert {rule.api for rule in _RULES.values()} == set(APIS)


class Authenticator(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses gated calls whose credentials lack the method's scope; see the module docstring.

    It decides before the handler is looked up (a refused call must not reach the
    guard), so it does not share GatedInterceptor's preamble, only its helpers.
    """

    def __init__(
        self,
        authority: Authority,
        drain_seconds: float,
        failures: FailedAttempts | None = None,
        certificates: bool = False,
    ) -> None:
        """`drain_seconds`: how long a refused PutStream is read for, so its client still
        writing receives the refusal (guard.refusal). `certificates`: calls without
        `authorization` are left to the CertificateGate (mTLS with identities)."""
        self.authority = authority
        self.drain_seconds = drain_seconds
        self.failures = failures or FailedAttempts()
        self.certificates = certificates

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        refused = self.before(handler_call_details)
        return refused if refused is not None else await continuation(handler_call_details)

    def before(self, details: grpc.HandlerCallDetails) -> Handler:
        """A handler that refuses the call, or None to let it go on."""
        rule = _RULES.get(details.method)
        if rule is None:  # health, reflection, or an unknown method (UNIMPLEMENTED)
            return None
        header = metadata_value(details.invocation_metadata, AUTHORIZATION)
        if header is None and self.certificates:
            return None  # the CertificateGate decides
        error = self.check(rule, header)
        if error is None:
            return None
        drain = self.drain_seconds if rule.client_streaming else None
        if isinstance(error, errors.InvalidCredentials):
            return refusal(error, drain, functools.partial(self._slow_down, str(error)))
        return refusal(error, drain)

    def after(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        return handler  # it decides before the lookup only

    def check(self, rule: _Rule, header: str | None) -> errors.BlobStoreError | None:
        """None if the call may go on, else the error to refuse it with."""
        decision = self.authority.decide(rule.api, rule.scope, header)
        return None if isinstance(decision, Principal) else decision

    async def _slow_down(self, reason: str, context: Context) -> None:
        """Counts a failed attempt of the call's peer and waits as its count says."""
        await self.failures.slow_down(context.peer(), reason)


def certificate_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The names of a verified client certificate, as tokens-file lines spell them.

    gRPC's auth context holds the certificate's common name (x509_common_name) and its
    SAN entries by kind (peer_dns, peer_uri); the URIs come first, then DNS names, then
    the CN, so the most specific line wins.
    """

    def values(key: str) -> list[str]:
        return [value.decode("utf-8", "replace") for value in auth_context.get(key, ())]

    return identity_names(values("peer_uri"), values("peer_dns"), values("x509_common_name"))


class _Gated:
    """One method's handler with the certificate check in front of its behaviour."""

    __slots__ = ("handler",)

    def __init__(self, handler: Handler) -> None:
        self.handler = handler


class CertificateGate(GatedInterceptor[_Gated]):
    """Decides calls without `authorization` by their client certificate (mTLS)."""

    def __init__(self, authority: Authority) -> None:
        super().__init__()
        self.authority = authority

    def build(self, service: Any, name: str, handler: Handler) -> _Gated:
        rule = _RULES[f"/{service.full_name}/{name}"]
        slot = behavior_slot(handler)
        inner = getattr(handler, slot)
        wrap = _gated_stream if slot == "unary_stream" else _gated_call
        return _Gated(handler._replace(**{slot: functools.partial(wrap, self, rule, inner)}))

    def intercept(
        self, method: _Gated, handler: Handler, details: grpc.HandlerCallDetails
    ) -> Handler:
        return method.handler

    def refusal(self, rule: _Rule, context: Context) -> errors.BlobStoreError | None:
        """The error to end a call with, or None if it may go on."""
        if metadata_value(context.invocation_metadata(), AUTHORIZATION) is not None:
            return None  # decided by the Authenticator from its credentials
        if rule.scope in self.authority.anonymous.get(rule.api, frozenset()):
            return None
        names = certificate_names(context.auth_context())
        principal = self.authority.certificate(names)
        if principal is None:
            shown = names[-1] if names else "(without a name)"
            # UNAUTHENTICATED, as gRPC's codes say when the caller cannot be identified
            # (PERMISSION_DENIED is for a known caller), and as the bridge answers (401).
            return errors.Unauthenticated(
                f"client certificate {shown!r} has no line in the tokens file (cn:, dns: or "
                f"uri:); this call needs {rule.scope}"
            )
        decision = Authority.authorize(principal, rule.scope)
        return None if isinstance(decision, Principal) else decision


async def _gated_call(
    gate: CertificateGate, rule: _Rule, inner: Any, request: Any, context: Context, *rest: Any
) -> Any:
    """`rest`: what the guard passes on besides request and context (Get's reservation)."""
    if (error := gate.refusal(rule, context)) is not None:
        await abort_call(context, error)  # a PutStream's context reads its stream first
    return await inner(request, context, *rest)


async def _gated_stream(
    gate: CertificateGate, rule: _Rule, inner: Any, request: Any, context: Context
) -> AsyncIterator[Any]:
    if (error := gate.refusal(rule, context)) is not None:
        await abort_call(context, error)
    async with contextlib.aclosing(inner(request, context)) as replies:
        async for reply in replies:
            yield reply
