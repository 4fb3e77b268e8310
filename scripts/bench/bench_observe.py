#!/usr/bin/env python3
"""In-process cost per call of the observation layers: request ids, metrics, a span.

    python scripts/bench/bench_observe.py [--calls 20000] [--rounds 7]

No server, no sockets: each variant is the interceptor chain the server builds
(grpc/tracing.py, grpc/metrics.py) around a no-op unary behaviour, plus, with
metrics, the storage MetricsBackend over a MemoryBackend get. One call is what
grpc.aio does with it: intercept_service, the request deserializer, the behaviour
(awaited, with a context), the reply serializer. The variants run interleaved,
round after round, in a shuffled order; the figure is the median over rounds of
microseconds of process CPU per call (CPU time, not wall time: on a machine others
load, waiting for the core would count too), and `extra` the median of per-round
differences to `none`.
That is far less noisy on a shared machine than whole benchmarks, and is what
changes to the per-call path were measured by (docs/observability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.grpc.metrics import CallObserver, RpcMetrics
from blobstore.ids import parse_blob_id
from blobstore.model import BlobType
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.metrics import MetricsBackend, StorageMetrics

GET = "/blobstore.v1.BlobService/Get"
BLOB_ID = "sha256:" + "ab" * 32


class _Context:
    """What the observer and the tracer ask of grpc.aio's ServicerContext."""

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def code(self) -> grpc.StatusCode | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"


class _Details:
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = GET
        self.invocation_metadata = metadata


Call = Callable[[], Awaitable[None]]


def variant(interceptors: list[Any], storage: MetricsBackend | None, memory: MemoryBackend) -> Call:
    """One call through `interceptors` (outermost first) to a Get behaviour."""
    blob_id = parse_blob_id(BLOB_ID)
    backend: Any = storage if storage is not None else memory

    async def behavior(request: Any, context: Any) -> pb.GetResponse:
        await backend.get(blob_id)
        return pb.GetResponse()

    base = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=pb.GetRequest.FromString,
        response_serializer=pb.GetResponse.SerializeToString,
    )

    async def innermost(details: Any) -> Any:
        return base

    chain: Callable[[Any], Awaitable[Any]] = innermost
    for interceptor in reversed(interceptors):
        chain = _bind(interceptor, chain)
    details = _Details((("user-agent", "grpc-python"),))
    request = pb.GetRequest(id=BLOB_ID).SerializeToString()
    context = _Context()

    async def call() -> None:
        handler = await chain(details)
        message = handler.request_deserializer(request)
        reply = await handler.unary_unary(message, context)
        handler.response_serializer(reply)

    return call


def _bind(interceptor: Any, inner: Callable[[Any], Awaitable[Any]]) -> Any:
    async def next_(details: Any) -> Any:
        return await interceptor.intercept_service(inner, details)

    return next_


def variants() -> dict[str, Call]:
    memory = MemoryBackend()
    asyncio.get_event_loop().run_until_complete(
        memory.put(parse_blob_id(BLOB_ID), BlobType.BINARY, b"x" * 1024)
    )
    registry = CollectorRegistry()
    rpc, storage = RpcMetrics(registry), StorageMetrics(registry)
    metered = MetricsBackend(memory, "filesystem", storage)
    found = {
        "none": variant([], None, memory),
        "ids": variant([CallObserver(None)], None, memory),
        "metrics": variant([CallObserver(rpc, request_ids=False)], metered, memory),
    }
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from blobstore.grpc.tracing import TracingInterceptor
    from blobstore.otlp_encoding import SpanEncoder

    lean = SpanEncoder(encode_spans)

    class _Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class _Encode(SpanExporter):
        """The OTLP/HTTP exporter's work short of the HTTP post: the protobuf encoding,
        the library's (`otlp-library`) or ours, as tracing.start installs it (`otlp`)."""

        def __init__(self, encode: Any) -> None:
            self.encode = encode

        def export(self, spans: Any) -> SpanExportResult:
            self.encode(spans).SerializePartialToString()
            return SpanExportResult.SUCCESS

    # As blobstore.tracing.start makes it, with an exporter that sends nothing
    # ("tracing": the span alone) or encodes the batches as OTLP does ("tracing+otlp":
    # the batch thread's encoding too, a cost of every span).
    exporters = {
        "tracing": _Drop(),
        "tracing+otlp": _Encode(lean.encode_request),
        "+otlp-library": _Encode(encode_spans),
    }
    for name, exporter in exporters.items():
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "bench"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("blobstore")
        found[name] = variant([TracingInterceptor(tracer)], None, memory)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    calls = variants()
    times: dict[str, list[float]] = {name: [] for name in calls}

    async def timed(call: Call, n: int) -> float:
        started = time.process_time()
        for _ in range(n):
            await call()
        return (time.process_time() - started) / n * 1e6

    for call in calls.values():  # warm-up: label children, caches
        loop.run_until_complete(timed(call, 500))
    for round_ in range(args.rounds):
        order = list(calls)
        random.Random(round_).shuffle(order)
        for name in order:
            times[name].append(loop.run_until_complete(timed(calls[name], args.calls)))
    print(f"{'variant':12} {'us/call med (min-max)':>24} {'extra vs none':>16}")
    for name, figures in times.items():
        extra = statistics.median(a - b for a, b in zip(figures, times["none"], strict=True))
        print(
            f"{name:12} {statistics.median(figures):9.1f} ({min(figures):5.1f}-{max(figures):5.1f})"
            f" {extra:14.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
