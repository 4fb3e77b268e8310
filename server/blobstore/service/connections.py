"""How many client connections the gRPC server holds open, read from gRPC core's channelz.

grpc.aio offers no hook for connections coming and going, but gRPC core keeps a
channelz registry of every server and its accepted sockets (on by default:
`grpc.enable_channelz`). The count is read at scrape time only, from the
prometheus_client thread, so calls pay nothing for it. The reader is grpcio's own
channelz entry point (`grpc._cython.cygrpc.channelz_*`, the one grpcio-channelz's
servicer calls); if a future grpcio drops it, the gauge reports nothing rather than
failing the scrape, and that is logged once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("blobstore")

# Sockets asked for per channelz page: gRPC core caps a page at 100 anyway.
_PAGE = 100


def open_connections() -> int | None:
    """Client connections open on every gRPC server of this process; None if unreadable."""
    try:
        from grpc._cython import cygrpc

        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
        return sum(_sockets(int(server["ref"]["serverId"]), cygrpc) for server in servers)
    except Exception:  # a private entry point: any change there means "unknown"
        log.warning("open gRPC connections cannot be counted with this grpcio", exc_info=True)
        return None


def _sockets(server_id: int, cygrpc: object) -> int:
    count, start = 0, 0
    while True:
        page = json.loads(cygrpc.channelz_get_server_sockets(server_id, start, _PAGE))  # type: ignore[attr-defined]
        refs = page.get("socketRef", [])
        count += len(refs)
        if page.get("end", True) or not refs:
            return count
        start = max(int(ref["socketId"]) for ref in refs) + 1


class ConnectionsCollector(Collector):
    """`blobstore_grpc_connections_open`, and the configured cap beside it."""

    def __init__(self, max_connections: int) -> None:
        self._max = max_connections
        self._broken = False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._broken:
            count = open_connections()
            if count is None:
                self._broken = True  # logged once; later scrapes just leave it out
            else:
                yield GaugeMetricFamily(
                    "blobstore_grpc_connections_open",
                    "Client connections (HTTP/2 transports) the gRPC server holds open",
                    value=count,
                )
        yield GaugeMetricFamily(
            "blobstore_grpc_connections_max",
            "Most client connections the server accepts at once (--max-connections, "
            "bounded by the open-file limit)",
            value=self._max,
        )


def register(registry: CollectorRegistry, max_connections: int) -> None:
    """Adds the connection gauges to `registry`."""
    registry.register(ConnectionsCollector(max_connections))
