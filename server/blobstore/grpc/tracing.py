"""A server span per blob service call, joined to the caller's trace (OpenTelemetry).

Installed by service/app.py only when tracing is on (blobstore/tracing.py), first
of the interceptors, so a refusal (OVERLOADED, UNAUTHENTICATED) is a span too.
Each call of blobstore.v1 or stepflow.v1 gets a SERVER span named for its method
(`blobstore.v1.BlobService/Put`), a child of the span in the call's `traceparent`
metadata when there is one, with the semantic-convention attributes rpc.system,
rpc.service, rpc.method and rpc.grpc.status_code, and an error status for
codes that mean the server failed (not NOT_FOUND, INVALID_ARGUMENT...). Work the
call does (log lines, the storage) runs inside the span's context.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from blobstore import tracing
from blobstore.api.stepflow.v1 import blobs_pb2 as stepflow_pb
from blobstore.proto_names import SERVICE

_SERVICES = frozenset(
    service.full_name
    for service in (SERVICE, stepflow_pb.DESCRIPTOR.services_by_name["BlobService"])
)
_Handler = Any  # grpc's RpcMethodHandler named tuple
_Context = grpc.aio.ServicerContext[Any, Any]
_SLOTS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# Codes that say the server (not the caller) failed: the span's status is then ERROR.
_SERVER_FAULTS = frozenset(
    (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
)


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """See the module docstring."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        name: str = handler_call_details.method
        service, _, method = name[1:].rpartition("/")
        if service not in _SERVICES:
            return handler
        carrier = {
            key: value
            for key, value in handler_call_details.invocation_metadata or ()
            if key in ("traceparent", "tracestate") and isinstance(value, str)
        }
        parent = tracing.extract(carrier) if carrier else None
        for slot in _SLOTS:
            behavior = getattr(handler, slot)
            if behavior is not None:
                break
        # The guard makes every blob service behaviour a coroutine function taking
        # (request or request iterator, context), so one wrapper fits every kind.
        traced = functools.partial(
            _traced, self._tracer, f"{service}/{method}", service, method, parent, behavior
        )
        return handler._replace(**{slot: traced})


async def _traced(
    tracer: Tracer,
    span_name: str,
    service: str,
    method: str,
    parent: Any,
    inner: Any,
    request: Any,
    context: _Context,
) -> Any:
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
    with tracer.start_as_current_span(
        span_name,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        code = grpc.StatusCode.OK
        try:
            return await inner(request, context)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException as exc:
            code = grpc.StatusCode.UNKNOWN
            span.record_exception(exc)
            raise
        finally:
            if code is grpc.StatusCode.OK:
                code = context.code() or grpc.StatusCode.OK
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAULTS:
                span.set_status(Status(StatusCode.ERROR, code.name))
