"""The bridge's OpenTelemetry spans: one per HTTP request, passed on to the gRPC service.

Installed by cli.py only when tracing is on (blobstore/tracing.py); otherwise
neither the middleware nor the client interceptors exist and nothing of
OpenTelemetry is imported.

* The aiohttp middleware opens a SERVER span per request (named `POST /`, `GET
  /api/v1/blobs/{blob_id}`: the route pattern, never a blob id), a child of the
  caller's W3C `traceparent` header when it sends one, with http.request.method,
  http.route and http.response.status_code; a 5xx makes it an error.
* The gRPC client interceptors open a CLIENT span per call to the service
  (`blobstore.v1.BlobService/Put`, its retries included) and send its context as
  `traceparent` metadata, so the server's span of the call is its child: one trace
  from the caller through the bridge to the store.

Over stdio there are no headers: each call to the service starts a trace of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from blobstore import tracing

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(tracer: Tracer) -> Any:
    """The aiohttp middleware described in the module docstring."""

    @web.middleware
    async def traced(request: web.Request, handler: _Handler) -> web.StreamResponse:
        headers = request.headers
        carrier = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=tracing.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, str(status)))

    return traced


def _with_trace(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    if not carrier:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    for key, value in carrier.items():
        metadata[key] = value
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def _span_name(details: Any) -> str:
    method = details.method
    return (method.decode() if isinstance(method, bytes) else method).lstrip("/")


class _Traced:
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def _span(self, details: Any) -> Any:
        name = _span_name(details)
        service, _, method = name.rpartition("/")
        return self._tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )


class _UnaryUnary(_Traced, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        with self._span(details) as span:
            call = await continuation(_with_trace(details), request)
            code = await call.code()
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            return call


class _UnaryStream(_Traced, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        # The stream outlives this call: its span covers the call's start only.
        with self._span(details):
            return await continuation(_with_trace(details), request)


class _StreamUnary(_Traced, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        # Its requests may be written after this returns (call.write): the span covers
        # the call's start only, as for a reply stream.
        with self._span(details):
            return await continuation(_with_trace(details), requests)


def client_interceptors(tracer: Tracer) -> list[Any]:
    """The interceptors that trace the bridge's calls to the service."""
    return [_UnaryUnary(tracer), _UnaryStream(tracer), _StreamUnary(tracer)]
