"""The server's Prometheus endpoint and the metrics of its admission control.

Off unless --metrics-port is set; then the server registers its metric families
(grpc/metrics.py per call, storage/metrics.py per backend operation, and the
admission ones here) in prometheus_client's default registry, which also has the
process collector (CPU, resident memory, open files), and serves it at
http://--metrics-host:--metrics-port/metrics from a thread of prometheus_client's
own, so a scrape never waits for the event loop nor delays a call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from blobstore import errors
from blobstore.grpc.metrics import RpcMetrics
from blobstore.service.admission import Admission, AdmissionLimits, Ticket
from blobstore.storage.metrics import StorageMetrics

log = logging.getLogger("blobstore")


@dataclass(frozen=True)
class ServerMetrics:
    """Every family the server reports, in one registry."""

    registry: CollectorRegistry
    rpc: RpcMetrics
    storage: StorageMetrics
    refusals: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> ServerMetrics:
        refusals = Counter(
            "blobstore_admission_refusals",
            "Calls refused by admission control (RESOURCE_EXHAUSTED, reason OVERLOADED), by "
            "the cap they hit: max_concurrent_rpcs or max_inflight_bytes",
            ("cap",),
            registry=registry,
        )
        return cls(registry, RpcMetrics(registry), StorageMetrics(registry), refusals)

    def admission(self, limits: AdmissionLimits) -> Admission:
        """An Admission that counts its refusals, with gauges reading its counters."""
        admission = MeteredAdmission(limits, self.refusals)
        Gauge(
            "blobstore_admission_inflight_calls",
            "Blob service calls in progress (admitted, not yet ended)",
            registry=self.registry,
        ).set_function(lambda: admission.calls)
        Gauge(
            "blobstore_admission_inflight_bytes",
            "Request and reply bytes held in memory by calls in progress",
            registry=self.registry,
        ).set_function(lambda: admission.bytes)
        return admission


class MeteredAdmission(Admission):
    """Admission whose refusals are counted by the cap that caused them."""

    def __init__(self, limits: AdmissionLimits, refusals: Counter) -> None:
        super().__init__(limits)
        self._by_calls = refusals.labels("max_concurrent_rpcs")
        self._by_bytes = refusals.labels("max_inflight_bytes")

    def admit(self, nbytes: int) -> Ticket:
        max_calls = self.limits.max_calls
        if max_calls and self.calls >= max_calls:
            self._by_calls.inc()
        return super().admit(nbytes)

    def _check_bytes(self, more: int, held_by_caller: int) -> None:
        try:
            super()._check_bytes(more, held_by_caller)
        except errors.Overloaded:
            self._by_bytes.inc()
            raise


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> Any:
    """Starts the /metrics HTTP server in a thread; returns it (shutdown() stops it)."""
    server, _thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
    return server
