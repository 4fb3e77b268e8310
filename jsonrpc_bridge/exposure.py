"""No open door by accident: the bridge's HTTP listener beyond loopback (docs/security.md).

The bridge has no users of its own: who may do what is decided by the gRPC service,
from the caller's token the bridge forwards (upstream_auth.py). So a listener that
other machines can reach is an open door when either
- the bridge has a service token, which calls without an Authorization header carry:
  anyone who connects acts with it; or
- the gRPC service answers a call without a token: asked once at start with an empty
  FindMissing (reads and stores nothing), the answer must be UNAUTHENTICATED or
  PERMISSION_DENIED. A service that cannot be reached cannot be checked: refused too.
Neither is a door when the listener is gated by client certificates: with
--client-identities the bridge refuses a caller that presents neither a listed
certificate nor a header (and gives its service credentials to listed certificates
only); with `--tls-client-auth required` only holders of a certificate of the client CA
connect at all (the CA decides, as `--tls-client-ca` does on the gRPC server).
Otherwise the bridge does not start unless --allow-unauthenticated, which warns once, as the
gRPC server does. Loopback stays as easy as it was. Without --tls-cert a listener beyond
loopback also warns that callers' tokens cross the network in plaintext.
"""

from __future__ import annotations

import logging

from blobstore.client import AsyncBlobClient
from blobstore.errors import BlobStoreError, PermissionDenied, Unauthenticated
from blobstore.service.hardening import is_loopback
from jsonrpc_bridge.upstream_auth import UpstreamAuth


class ExposureError(Exception):
    """The listener would be an open door; the bridge does not start."""


async def check(
    host: str,
    *,
    https: bool,
    gated: bool = False,
    upstream: UpstreamAuth,
    client: AsyncBlobClient,
    target: str,
    allow_unauthenticated: bool,
    log: logging.Logger,
) -> None:
    """Refuses (or, allowed, warns once about) an open door on `host`; see the docstring."""
    if is_loopback(host):
        return
    where = host or "all addresses"
    door = None if gated else await _open_door(upstream, client, target)
    if door is not None:
        if not allow_unauthenticated:
            raise ExposureError(
                f"refusing to listen on {where}, which other machines can reach: {door}, so "
                "anyone who connects could read and store blobs. Bind 127.0.0.1, or have the "
                "gRPC service require tokens (--tokens-file) and give the bridge no service "
                "token, or pass --allow-unauthenticated (see docs/security.md)"
            )
        log.warning(
            "the JSON-RPC bridge listens on %s, which other machines can reach, although %s "
            "(--allow-unauthenticated): anyone who connects can read and store blobs",
            where,
            door,
        )
    if not https:
        log.warning(
            "the JSON-RPC bridge listens on %s without TLS: callers' tokens and blobs cross "
            "the network in plaintext; set --tls-cert/--tls-key",
            where,
        )


async def _open_door(upstream: UpstreamAuth, client: AsyncBlobClient, target: str) -> str | None:
    """Why anyone could get in, or None if the gRPC service wants a token from each caller."""
    if upstream.service_token is not None:
        return "callers without a token act with the bridge's service token"
    try:
        await client.find_missing([])
    except (Unauthenticated, PermissionDenied):
        return None
    except BlobStoreError as exc:
        return f"the gRPC service at {target} cannot be asked whether it wants a token ({exc})"
    return f"the gRPC service at {target} answers calls without a token"
