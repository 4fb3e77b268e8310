"""The bridge's connection to the gRPC BlobService: one channel, the client, a health probe.

The channel is tuned so the bridge never hangs on a service that is down
and recovers quickly once it is back: calls do not wait for the channel to
be ready (they fail at once with UNAVAILABLE, which the bridge answers as
-32001), and reconnection backoff is capped at about a second instead of
gRPC's default two minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import CHANNEL_OPTIONS, AsyncBlobClient
from blobstore.retry import RetryPolicy

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BlobService"].full_name
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Health:
    """What the health probe found."""

    serving: bool
    status: str
    detail: str = ""


class BlobService:
    """Owns the channel; create inside the running event loop, close when done."""

    def __init__(self, target: str, deadline: float, retry: RetryPolicy | None = None) -> None:
        self.target = target
        options = {**dict(CHANNEL_OPTIONS), **dict(RECONNECT_OPTIONS)}
        self.channel = grpc.aio.insecure_channel(target, options=list(options.items()))
        self.client = AsyncBlobClient(target, timeout=deadline, channel=self.channel, retry=retry)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    async def probe(self) -> Health:
        """Asks the service's standard health service whether BlobService is serving."""
        try:
            reply = await self._health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=PROBE_TIMEOUT
            )
        except grpc.RpcError as exc:
            return Health(False, exc.code().name, exc.details() or "")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return Health(reply.status == health_pb2.HealthCheckResponse.SERVING, status)

    async def close(self) -> None:
        await self.client.close()
