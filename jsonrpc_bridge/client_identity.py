"""Client-certificate identities on the bridge's HTTPS listener: who a caller is, and its scopes.

With `--client-identities FILE` (and `--tls-client-ca`, listener_tls.py) the bridge
decides for callers that present a verified client certificate and no `Authorization`
header. FILE has the gRPC server's tokens-file format, read by the same code
(blobstore.security.tokens); its `cn:`, `dns:` and `uri:` lines map a certificate's
names (SAN URIs first, then SAN DNS names, then the CN: the most specific line wins) to
a NAME and scopes, and blobstore.security.authority.Authority makes the decision, as on
the gRPC server. Bearer-token (`sha256:`) lines are not used here (a caller's token
goes to the gRPC server, which decides); the bridge warns at start when it has some.

Per HTTP request (`ClientIdentities.identify`, from the transport's middleware):
* an `Authorization` header: passed through as before, the gRPC server decides;
* a certificate with a line: the bridge checks the scope of each method itself
  (`read`: blobs/get and REST GET; `write`: blobs/put and REST POST; each element of a
  batch by its method) and calls the gRPC service with its own service credentials
  (upstream_auth.py: the service token and/or its upstream client certificate);
* a certificate without a line, or (with identities) neither certificate nor header:
  refused by the bridge before the body is read - HTTP 401, JSON-RPC -32010 - so no
  call goes upstream. The service credentials serve certificate identities only: a
  caller that presents nothing never acts with them.

The caller travels in a context variable (for the method wrappers and upstream_auth)
and in the request (for the access log). Logs name the entry (NAME) or the
certificate's name, never a credential.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blobstore.errors import PermissionDenied
from blobstore.security.authority import Authority, Principal
from blobstore.security.tokens import AuthConfigError, TokenTable, identity_names
from jsonrpc_bridge import errors

log = logging.getLogger("jsonrpc_bridge")

CALLER_KEY = "blobstore_caller"
"""The request's key holding its Caller (read by observe.py's access log)."""
_Method = Callable[[Any], Awaitable[object]]
_BatchMethod = Callable[[list[Any]], Awaitable[list[object]]]

__all__ = ["AuthConfigError", "Caller", "ClientIdentities", "current_caller"]


@dataclass(frozen=True)
class Caller:
    """Who an HTTP request is, as far as the bridge decides (see the module docstring)."""

    shown: str
    """For logs: `certificate 'NAME'`, `bearer (passed through)`, ... never a secret."""
    principal: Principal | None = None
    """A certificate identity: the bridge checks its scopes and uses its own credentials."""
    refusal: str = ""
    """Not empty: the request is refused as unauthenticated, for this reason."""
    failed: bool = False
    """The refusal is of a certificate the caller presented: a failed authentication,
    counted against its address (auth_failures.py); presenting nothing is not."""


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "current_caller", default=None
)
"""The current HTTP request's Caller (None: no identities configured)."""


class ClientIdentities:
    """The identities file, as an Authority of certificate lines; reloadable."""

    def __init__(self, path: str) -> None:
        """AuthConfigError names an unreadable or malformed file, or one without identities."""
        table = TokenTable(Path(path))
        if not table.identities:
            raise AuthConfigError(
                f"--client-identities: {path} has no cn:, dns: or uri: line; a client "
                "certificate would be granted nothing"
            )
        if len(table):
            log.warning(
                "--client-identities: %d bearer-token line(s) in %s are not used by the "
                "bridge: callers' tokens go to the gRPC server, which decides",
                len(table),
                path,
            )
        self.path = path
        self.authority = Authority(table, {})

    def describe(self) -> str:
        tokens = self.authority.tokens
        count = tokens.identities if tokens is not None else 0
        return f"{count} client certificate identit(ies) from {self.path}"

    def reload(self) -> None:
        """Reads the file again (SIGHUP); a file that does not parse keeps the lines in force."""
        self.authority.reload()

    def identify(self, authorization: str | None, peercert: Mapping[str, Any] | None) -> Caller:
        """The Caller of a request with this header and (verified) peer certificate."""
        if authorization is not None:
            return Caller("bearer (passed through)")
        if not peercert:
            return Caller(
                "anonymous",
                refusal="send a client certificate that the client identities file lists, "
                "or 'Authorization: Bearer TOKEN'",
            )
        names = certificate_names(peercert)
        for name in names:  # most specific first: the first line found wins
            principal = self.authority.certificate([name])
            if principal is not None:
                return Caller(f"certificate {principal.name!r} ({name})", principal)
        shown = names[-1] if names else "(without a name)"
        return Caller(
            f"certificate {shown!r}",
            refusal=f"client certificate {shown!r} has no line in the client identities "
            "file (cn:, dns: or uri:)",
            failed=True,
        )


def certificate_names(peercert: Mapping[str, Any]) -> list[str]:
    """The names of a certificate as Python's ssl reports it (SSLObject.getpeercert())."""
    alt = [(kind, value) for kind, value in peercert.get("subjectAltName", ())]
    common = [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return identity_names(
        [v for k, v in alt if k == "URI"], [v for k, v in alt if k == "DNS"], common
    )


def unauthenticated() -> str | None:
    """Why the current request is refused as unauthenticated, or None if it may go on."""
    caller = current_caller.get()
    return caller.refusal if caller is not None and caller.refusal else None


def acting_for_certificate() -> bool:
    """Whether the current request is a certificate identity's (the bridge's own credentials)."""
    caller = current_caller.get()
    return caller is not None and caller.principal is not None


def denial(scope: str) -> PermissionDenied | None:
    """The refusal of `scope` for the current request's certificate identity, if it lacks it.

    Callers the bridge does not decide for (their header goes to the gRPC server) pass.
    """
    caller = current_caller.get()
    if caller is None or caller.principal is None:
        return None
    decision = Authority.authorize(caller.principal, scope)
    if isinstance(decision, PermissionDenied):
        log.info("refused: %s; %s", caller.shown, decision)
        return decision
    return None


def scoped_methods(table: Mapping[str, _Method], scopes: Mapping[str, str]) -> dict[str, _Method]:
    """The JSON-RPC methods, each checking its scope (`scopes[name]`) first."""
    return {name: _scoped(method, scopes[name]) for name, method in table.items()}


def scoped_batch_methods(
    table: Mapping[str, _BatchMethod], scopes: Mapping[str, str]
) -> dict[str, _BatchMethod]:
    """The batch forms: a refused scope answers every element of the group with -32011."""
    return {name: _scoped_batch(method, scopes[name]) for name, method in table.items()}


def _scoped(method: _Method, scope: str) -> _Method:
    async def call(params: Any) -> object:
        refused = denial(scope)
        if refused is not None:
            raise errors.from_store_error(refused, "params")
        return await method(params)

    return call


def _scoped_batch(method: _BatchMethod, scope: str) -> _BatchMethod:
    async def call(batch: list[Any]) -> list[object]:
        refused = denial(scope)
        if refused is not None:
            return [errors.from_store_error(refused, "params")] * len(batch)
        return await method(batch)

    return call
