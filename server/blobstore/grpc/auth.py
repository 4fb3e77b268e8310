"""Who may call what: bearer tokens with scopes, and the policy for callers without one.

A gRPC server interceptor placed before the guard (grpc/guard.py), so a refused call
never reaches admission, the servicer or the store. It gates the methods of
blobstore.v1.BlobService and stepflow.v1.BlobService; health and reflection stay
open (load balancers probe health without credentials; reflection only describes
the protocol, whose .proto files are public).

* Tokens: a file (`--tokens-file`) of lines `sha256:<hex of the token's SHA-256> NAME
  SCOPE[,SCOPE...]`; `#` starts a comment. Only hashes are stored, so the file
  (or a backup of it) gives no token away. A call's `authorization: Bearer TOKEN` is
  hashed and compared with every entry by hmac.compare_digest (no early exit, so
  the time taken does not say how much of a hash matched). reload() (SIGHUP) swaps
  the whole table in one assignment: calls in progress keep the table they were
  checked with, none is dropped; a file that does not parse leaves the old table.
* Scopes: `read` (Get, GetStream, Stat, FindMissing, stepflow GetBlob), `write` (Put,
  PutStream, stepflow PutBlob), `admin` (Delete, Prune).
* Anonymous callers (no `authorization` metadata) get the scopes `--anonymous`
  grants per API, e.g. `stepflow.v1=read,write` (Stepflow's workers dial without a
  token); by default none.

Refusals: UNAUTHENTICATED (no token where one is needed, an unknown token, a
malformed header) and PERMISSION_DENIED (a known token without the scope), each
with its ErrorInfo reason from status.py's table. Tokens are never logged; a
refusal names the token's entry (NAME) at most.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.grpc.guard import refusal

log = logging.getLogger(__name__)

SCOPES = frozenset({"read", "write", "admin"})
# The API (proto package) of each gated service, as --anonymous names it.
_APIS = {
    "blobstore.v1": pb.DESCRIPTOR.services_by_name["BlobService"],
    "stepflow.v1": stepflow_pb.DESCRIPTOR.services_by_name["BlobService"],
}
_SCOPE_OF_METHOD = {
    "Get": "read",
    "GetStream": "read",
    "Stat": "read",
    "FindMissing": "read",
    "GetBlob": "read",
    "Put": "write",
    "PutStream": "write",
    "PutBlob": "write",
    "Delete": "admin",
    "Prune": "admin",
}
_HASH_PREFIX = "sha256:"
_BEARER = "bearer "


class AuthConfigError(Exception):
    """A tokens file or --anonymous policy that cannot be used; the server does not start."""


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
        api, _SCOPE_OF_METHOD[method.name], method.client_streaming
    )
    for api, service in _APIS.items()
    for method in service.methods
}


@dataclass(frozen=True)
class TokenEntry:
    """One line of the tokens file."""

    digest: bytes
    name: str
    scopes: frozenset[str]


def token_hash(token: str) -> str:
    """The form a token takes in the tokens file: `sha256:` and its hex SHA-256."""
    return _HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, source: str = "tokens file") -> tuple[TokenEntry, ...]:
    """Parses a tokens file; AuthConfigError names the line of the first problem."""
    entries: list[TokenEntry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        parts = line.split()
        if len(parts) != 3:
            raise AuthConfigError(
                f"{where}: expected 'sha256:<64 hex digits> NAME SCOPE[,SCOPE...]', "
                f"found {len(parts)} field(s)"
            )
        hashed, name, scope_text = parts
        digest_hex = hashed.removeprefix(_HASH_PREFIX)
        if not hashed.startswith(_HASH_PREFIX) or len(digest_hex) != 64:
            raise AuthConfigError(
                f"{where}: the first field must be sha256: and the 64 hex digits of the "
                "token's SHA-256 (never the token itself)"
            )
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            raise AuthConfigError(f"{where}: the hash is not hexadecimal") from None
        entries.append(TokenEntry(digest, name, _scopes(scope_text, where)))
    return tuple(entries)


def parse_anonymous(text: str) -> dict[str, frozenset[str]]:
    """Parses `--anonymous`: `API=SCOPE[,SCOPE...]` items separated by spaces or `;`."""
    policy: dict[str, frozenset[str]] = {}
    for item in text.replace(";", " ").split():
        api, sep, scope_text = item.partition("=")
        if not sep or api not in _APIS:
            raise AuthConfigError(
                f"--anonymous: {item!r} is not API=SCOPE[,SCOPE...] with API one of "
                f"{', '.join(sorted(_APIS))}"
            )
        policy[api] = _scopes(scope_text, "--anonymous") if scope_text else frozenset()
    return policy


def _scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(s for s in text.split(",") if s)
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise AuthConfigError(
            f"{where}: unknown scope(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"scopes are {', '.join(sorted(SCOPES))}"
        )
    return scopes


class TokenTable:
    """The tokens of a file, reloadable; lookups compare hashes in constant time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = self._read()

    def _read(self) -> tuple[TokenEntry, ...]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthConfigError(f"cannot read the tokens file {self.path}: {exc}") from None
        return parse_tokens(text, str(self.path))

    def __len__(self) -> int:
        return len(self._entries)

    def reload(self) -> bool:
        """Reads the file again; on a problem, logs it and keeps the current tokens."""
        try:
            entries = self._read()
        except AuthConfigError as exc:
            log.error("tokens not reloaded, the previous %d stay in force: %s", len(self), exc)
            return False
        self._entries = entries  # one assignment: a call sees the old table or the new
        log.info("tokens reloaded from %s: %d token(s)", self.path, len(entries))
        return True

    def find(self, token: str) -> TokenEntry | None:
        """The entry whose hash is the token's, comparing with every entry."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


_Handler = Any  # grpc's RpcMethodHandler; grpc-stubs does not type its fields


class Authenticator(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses gated calls whose caller lacks the method's scope; see the module docstring."""

    def __init__(
        self,
        tokens: TokenTable,
        anonymous: dict[str, frozenset[str]],
        drain_seconds: float,
    ) -> None:
        """`drain_seconds`: how long a refused PutStream is read for, so its client
        still writing receives the refusal (guard.refusal)."""
        self.tokens = tokens
        self.anonymous = anonymous
        self.drain_seconds = drain_seconds

    def describe_anonymous(self) -> str:
        """The anonymous policy as --anonymous spells it (for the start-up log)."""
        granted = [f"{api}={','.join(sorted(s))}" for api, s in self.anonymous.items() if s]
        return "; ".join(granted) or "nothing"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        rule = _RULES.get(handler_call_details.method)
        if rule is None:  # health, reflection, or an unknown method (UNIMPLEMENTED)
            return await continuation(handler_call_details)
        error = self.check(rule, _authorization(handler_call_details.invocation_metadata))
        if error is None:
            return await continuation(handler_call_details)
        return refusal(error, self.drain_seconds if rule.client_streaming else None)

    def check(self, rule: _Rule, header: str | None) -> errors.BlobStoreError | None:
        """None if the call may go on, else the error to refuse it with."""
        if header is None:
            if rule.scope in self.anonymous.get(rule.api, frozenset()):
                return None
            return errors.Unauthenticated(
                f"{rule.api} calls without a token may not {rule.scope}: send "
                f"'authorization: Bearer TOKEN' with a token that has scope {rule.scope}"
            )
        if header[: len(_BEARER)].lower() != _BEARER or not header[len(_BEARER) :].strip():
            return errors.Unauthenticated(
                "the authorization metadata must be 'Bearer TOKEN' (its value is not shown)"
            )
        entry = self.tokens.find(header[len(_BEARER) :].strip())
        if entry is None:
            return errors.Unauthenticated("the bearer token is not valid (unknown or revoked)")
        if rule.scope not in entry.scopes:
            return errors.PermissionDenied(
                f"token {entry.name!r} has scope(s) {','.join(sorted(entry.scopes))}; "
                f"this call needs {rule.scope}"
            )
        return None


def _authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None
