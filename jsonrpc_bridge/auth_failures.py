"""Failed authentications of the bridge's HTTP callers: counted per client IP, logged at a
limited rate, and slowed down - the gRPC server's rule (blobstore.security.failures), kept
by the bridge for the callers the server cannot see.

The bridge passes a caller's Authorization header through, so the gRPC server sees the
bridge as the peer of every call: it cannot tell one guesser from the bridge's other
callers. The bridge therefore keeps its own `FailedAttempts`, keyed by the HTTP client's
IP (aiohttp's `request.remote`: the TCP peer, or behind a proxy of --trusted-proxies
the client its X-Forwarded-For names, forwarded.py). One HTTP request is at most one
failure, counted when:

* it presented an Authorization header and the gRPC server answered one of its calls
  UNAUTHENTICATED (a wrong, expired or revoked token passed through; `note` is told by
  errors.py, through which every store error on its way to a caller passes), or the
  bridge refused the header itself (not printable ASCII), or
* the bridge refused its client certificate itself (no line in the identities file).

A caller that presented nothing is not guessing and is not counted. Past the free
failures the request's refusal (HTTP 401 / JSON-RPC -32010) is sent after the wait,
an asyncio sleep in that request's own task, so other callers and the good calls of
the same peer go on meanwhile. The log line names the peer's address and the reason,
never the credential.

No aiohttp here: errors.py imports this module, and a stdio bridge does not load aiohttp.
"""

from __future__ import annotations

import contextvars

from blobstore.errors import BlobStoreError, Unauthenticated
from blobstore.security.failures import FailedAttempts, FailureLimits

__all__ = ["Attempt", "FailedAttempts", "FailureLimits", "note", "stop", "watch"]


class Attempt:
    """One HTTP request's outcome as an authentication: "" if it did not fail (yet)."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason = ""


_current: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "auth_attempt", default=None
)


def watch() -> tuple[Attempt, contextvars.Token[Attempt | None]]:
    """Starts watching the current HTTP request (reset the token when it ends).

    The Attempt is an object, not a flag in the variable: a batch's elements run in
    tasks of their own, which see the variable's value but cannot set it for the request.
    """
    attempt = Attempt()
    return attempt, _current.set(attempt)


def stop(token: contextvars.Token[Attempt | None]) -> None:
    _current.reset(token)


def note(exc: BlobStoreError) -> None:
    """Marks the current request as refused by the gRPC server if `exc` says so."""
    attempt = _current.get()
    if attempt is not None and isinstance(exc, Unauthenticated) and not attempt.reason:
        attempt.reason = f"the gRPC service refused the credentials passed through: {exc}"
