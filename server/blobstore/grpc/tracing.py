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
from typing import Any

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from blobstore import tracing
from blobstore.grpc.interceptor_base import Context, GatedInterceptor, Handler, behavior_slot

_Handler = Handler
_Context = Context
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


class _Method:
    """One method's span name and attributes, built once."""

    __slots__ = ("method", "service", "span_name")

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.span_name = f"{service}/{method}"


class TracingInterceptor(GatedInterceptor[_Method]):
    """See the module docstring."""

    keyed_on_handler = False  # the guard's handler differs per call (its ticket bound in)

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self._tracer = tracer

    def build(self, service: Any, name: str, handler: _Handler) -> _Method:
        return _Method(service.full_name, name)

    def intercept(
        self, method: _Method, handler: _Handler, details: grpc.HandlerCallDetails
    ) -> _Handler:
        carrier = {
            key: value
            for key, value in details.invocation_metadata or ()
            if key in ("traceparent", "tracestate") and isinstance(value, str)
        }
        parent = tracing.extract(carrier) if carrier else None
        slot = behavior_slot(handler)
        # The guard makes every blob service behaviour a coroutine function taking
        # (request or request iterator, context), so one wrapper fits every kind.
        traced = functools.partial(
            _traced,
            self._tracer,
            method.span_name,
            method.service,
            method.method,
            parent,
            getattr(handler, slot),
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
