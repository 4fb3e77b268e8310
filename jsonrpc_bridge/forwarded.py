"""The HTTP client's address behind trusted reverse proxies (`X-Forwarded-For`).

Off by default: the client is the TCP peer. With `--trusted-proxies` (addresses or
networks), a request whose TCP peer is one of them has its client taken from
`X-Forwarded-For` as nginx's `real_ip_recursive` does: its addresses from right to
left, trusted ones skipped, the first untrusted one is the client (all trusted: the
left-most). Only the right end can be believed: a proxy appends the address it saw,
and whatever a client wrote in its own header stays on the left. From a peer that is
not trusted the header is ignored, as anyone can write it.

The address found replaces `request.remote` for everything after this middleware
(the first): failed-authentication counting per client (auth_failures.py) and the
access log's `peer`. A trusted proxy whose header is not a list of IP addresses is
answered 400: a misconfigured proxy, told so, rather than a guess at who the client is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # aiohttp is imported by middleware() only: a stdio bridge never is
    from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class TrustedProxiesError(ValueError):
    """A --trusted-proxies entry that is neither an address nor a network."""


def parse_trusted(text: str) -> list[Network]:
    """`10.0.0.0/8, 192.0.2.7, ::1` -> networks; raises TrustedProxiesError."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise TrustedProxiesError(
                f"--trusted-proxies: {item!r} is neither an IP address nor a network "
                "(e.g. 10.0.0.0/8)"
            ) from None
    return networks


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def middleware(trusted: Sequence[Network]) -> Any:
    """The middleware that sets the client's address (see the module docstring)."""
    from aiohttp import hdrs, web

    def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in trusted)

    @web.middleware
    async def forwarded(request: web.Request, handler: _Handler) -> web.StreamResponse:
        values = request.headers.getall(hdrs.X_FORWARDED_FOR, ())
        peer = _address(request.remote or "")
        if not values or peer is None or not is_trusted(peer):
            return await handler(request)
        hops = [hop for value in values for hop in value.split(",")]
        client = None
        for hop in reversed(hops):
            if not hop.strip():
                continue
            address = _address(hop)
            if address is None:
                raise web.HTTPBadRequest(
                    text=f"X-Forwarded-For from a trusted proxy holds {hop.strip()[:64]!r}, "
                    "which is not an IP address\n"
                )
            client = address
            if not is_trusted(address):
                break
        if client is None:  # a header of empty items
            return await handler(request)
        return await handler(request.clone(remote=str(client)))

    return forwarded
