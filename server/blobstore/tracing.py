"""OpenTelemetry tracing of the server and the bridge: when it is on, and the tracer.

Off by default. On with --otlp-endpoint (an OTLP/HTTP collector, e.g.
http://127.0.0.1:4318), or when the standard OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variable is set (the SDK reads the others:
OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_*, OTEL_RESOURCE_ATTRIBUTES...), unless
OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true.

When off nothing here is imported by the callers' hot paths and no interceptor
or middleware is installed (grpc/tracing.py, jsonrpc_bridge/tracing.py), so
tracing costs nothing; the OpenTelemetry SDK is imported only by `start`.
Spans join the caller's trace through the W3C `traceparent` (and `tracestate`)
header or metadata, whatever OTEL_PROPAGATORS says: that is what Stepflow's
workers and most clients send. The tracer provider is this process's own, not
the global one, so a library in the process cannot turn it on or off.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("blobstore")

_TRACES_PATH = "/v1/traces"


def wanted(endpoint: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on for `--otlp-endpoint` = `endpoint` and the OTEL_* variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        endpoint
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def traces_url(endpoint: str) -> str:
    """The collector's trace URL for a --otlp-endpoint given as its base (or in full)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


@dataclass(frozen=True)
class Tracing:
    """A started tracer; `shutdown` sends the spans still queued (call it once, at exit)."""

    tracer: Tracer
    provider: Any

    def shutdown(self) -> None:
        self.provider.shutdown()


def start(service_name: str, endpoint: str, exporter: Any = None) -> Tracing:
    """A tracer whose spans go in batches to the OTLP/HTTP collector (or to `exporter`,
    the tests' in-memory one)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
    )

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if exporter is not None:
        processor: Any = SimpleSpanProcessor(exporter)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        from blobstore import otlp_encoding

        if not otlp_encoding.install():
            log.info("spans are encoded by the OTLP exporter's own encoder (slower)")
        otlp: SpanExporter = OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None)
        processor = BatchSpanProcessor(otlp)
        log.info("traces to %s", traces_url(endpoint) if endpoint else "the OTEL_* endpoint")
    provider.add_span_processor(processor)
    return Tracing(provider.get_tracer("blobstore"), provider)


@functools.cache
def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()


def extract(carrier: Mapping[str, str]) -> Any:
    """The caller's trace context from W3C `traceparent`/`tracestate` (lower-case keys)."""
    return _propagator().extract(carrier)


def inject(carrier: dict[str, str]) -> None:
    """Adds the current span's `traceparent` (and `tracestate`) to `carrier`."""
    _propagator().inject(carrier)
