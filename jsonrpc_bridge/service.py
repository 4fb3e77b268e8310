"""The bridge's connection to the gRPC BlobService: one channel, the client, a health probe.

The channel is tuned so the bridge never hangs on a service that is down
and recovers quickly once it is back: calls do not wait for the channel to
be ready (they fail at once with UNAVAILABLE, which the bridge answers as
-32001), and reconnection backoff is capped at about a second instead of
gRPC's default two minutes. With `credentials` the channel speaks TLS
(upstream_auth.py decides the credentials).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blobstore.client import AsyncBlobClient, channel_args
from blobstore.proto_names import SERVICE_NAME
from blobstore.retry import RetryPolicy

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Health:
    """What the health probe found."""

    serving: bool
    status: str
    detail: str = ""


class BlobService:
    """Owns the channel; create inside the running event loop, close when done."""

    def __init__(
        self,
        target: str,
        deadline: float,
        retry: RetryPolicy | None = None,
        interceptors: Sequence[Any] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.deadline = deadline
        # `interceptors` pass request ids on and time calls (observe.py) and add each
        # call's token (upstream_auth.py); `credentials`: TLS to the service.
        self._interceptors = list(interceptors)
        self._channel = self._new_channel(credentials)
        self.client = AsyncBlobClient(target, timeout=deadline, channel=self._channel, retry=retry)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._retired: set[asyncio.Task[None]] = set()

    def _new_channel(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        # The client's options, reconnect backoff included (capped at a second).
        grpc_target, options = channel_args(self.target)
        interceptors = self._interceptors or None
        if credentials is None:
            return grpc.aio.insecure_channel(grpc_target, options, interceptors=interceptors)
        return grpc.aio.secure_channel(grpc_target, credentials, options, interceptors=interceptors)

    def use_credentials(self, credentials: grpc.ChannelCredentials) -> None:
        """Moves to a new channel with these credentials (SIGHUP: rotated upstream TLS
        files): calls from now on use it; those still on the old channel finish there
        (it is closed with a grace of one deadline)."""
        self._channel = self._new_channel(credentials)
        old = self.client.use_channel(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        task = asyncio.ensure_future(old.close(self.deadline))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

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
        for task in list(self._retired):
            task.cancel()
