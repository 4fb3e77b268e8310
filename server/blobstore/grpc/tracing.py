"""A server span per blob service call, joined to the caller's trace (OpenTelemetry).

Installed by service/app.py only when tracing is on (blobstore/tracing.py), first
of the interceptors, so a refusal (OVERLOADED, UNAUTHENTICATED) is a span too.
Each call of blobstore.v1 or stepflow.v1 gets a SERVER span named for its method
(`blobstore.v1.BlobService/Put`), a child of the span in the call's `traceparent`
metadata when there is one, with the semantic-convention attributes rpc.system,
rpc.service, rpc.method and rpc.grpc.status_code, and an error status for
codes that mean the server failed (not NOT_FOUND, INVALID_ARGUMENT...). Work the
call does (log lines, the storage) runs with the span's context current.

Why not `tracer.start_as_current_span`: the SDK's live span (attribute validation
and locks, the sampler's generic path, two generator context managers, a copy into
a ReadableSpan at its end) cost ~50 µs of CPU a call here, ~8 % of a small Get.
A server span of ours is known whole when the call ends, so `_Spans` makes the
finished span once, as the SDK's ReadableSpan, and hands it to the tracer's span
processor (the batch exporter as shipped): ~10 µs. It keeps what the SDK would do
for these spans: the tracer's sampler decides (a fast path for the default
parentbased_always_on, the sampler itself for any other OTEL_TRACES_SAMPLER), ids
from its id generator, its resource and scope, the exception event of a failure.
While the call runs, the current span is a non-recording span with the span's
context: what is started or propagated inside the call joins this span; nothing
inside adds events to it (nothing in the server does).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import traceback
from collections.abc import Mapping
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, sampling
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from blobstore import tracing
from blobstore.grpc.interceptor_base import (
    Context,
    GatedInterceptor,
    Handler,
    MadeOnce,
    behavior_slot,
)

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
_TRACE_KEYS = ("traceparent", "tracestate")
# The caller's trace context of the call in this task (None: the call starts a trace):
# set by TracingInterceptor.intercept, read by _traced (see interceptor_base.MadeOnce).
_PARENT: contextvars.ContextVar[Any] = contextvars.ContextVar("blobstore_trace_parent")
_UNSET = Status(StatusCode.UNSET)


class _Method:
    """One method's span name and attributes, built once; and its finished spans'
    attributes per status code (read-only once made: the SDK hands spans' attributes
    out as read-only views, so spans of one code can share them)."""

    __slots__ = ("_spans", "attributes", "finished", "made", "span_name")

    def __init__(self, service: str, method: str, spans: _Spans) -> None:
        self._spans = spans
        self.made = MadeOnce()
        self.span_name = f"{service}/{method}"
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        self.finished: dict[grpc.StatusCode, dict[str, Any]] = {}

    def traced(self, handler: _Handler) -> _Handler:
        """`handler` with its behaviour traced (made once per method, see MadeOnce)."""
        # The guard makes every blob service behaviour a coroutine function taking
        # (request or request iterator, context), so one wrapper fits every kind. The
        # slot is found for each handler: a refusal (grpc/guard.py) holds its behaviour
        # in another field than the method's own handler does.
        slot = behavior_slot(handler)
        traced = functools.partial(_traced, self._spans, self, getattr(handler, slot))
        return handler._replace(**{slot: traced})

    def attributes_at_end(self, initial: Mapping[str, Any], code: grpc.StatusCode) -> Any:
        if initial is not self.attributes:  # a sampler's own: this span's alone
            return {**initial, "rpc.grpc.status_code": code.value[0]}
        done = self.finished.get(code)
        if done is None:
            done = self.finished[code] = {**initial, "rpc.grpc.status_code": code.value[0]}
        return done


class _Spans:
    """Starts and ends the server spans of one tracer (an SDK tracer: tracing.start's)."""

    def __init__(self, tracer: Any) -> None:
        self.sampler = tracer.sampler
        self.default_sampler = self.sampler is sampling.DEFAULT_ON
        self.ids = tracer.id_generator
        self.random_ids = self.ids.is_trace_id_random()
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.scope = tracer._instrumentation_scope  # the SDK keeps it private; spans need it

    def start(
        self, method: _Method, parent: Any
    ) -> tuple[trace.SpanContext, Any, Mapping[str, Any] | None]:
        """A new span under `parent` (the caller's trace context, or None): its context,
        its parent's span context (or None), and its attributes as the sampler gave them
        (None: not recorded)."""
        remote = trace.get_current_span(parent).get_span_context() if parent else None
        if remote is not None and not remote.is_valid:
            remote = None
        trace_id = remote.trace_id if remote is not None else self.ids.generate_trace_id()
        attributes: Mapping[str, Any] | None = method.attributes
        if self.default_sampler:  # parentbased_always_on: follow the caller, else record
            sampled = remote is None or remote.trace_flags.sampled
            state = remote.trace_state if remote is not None else None
            attributes = attributes if sampled else None
        else:
            result = self.sampler.should_sample(
                parent, trace_id, method.span_name, SpanKind.SERVER, method.attributes
            )
            sampled, state = result.decision.is_sampled(), result.trace_state
            # As the SDK: the span starts with the attributes the sampler returns.
            recorded = result.decision.is_recording()
            attributes = (result.attributes or attributes) if recorded else None
        flags = trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT
        if remote.trace_flags.random_trace_id if remote is not None else self.random_ids:
            flags |= trace.TraceFlags.RANDOM_TRACE_ID
        span_context = trace.SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(flags),
            trace_state=state,
        )
        return span_context, remote, attributes

    def end(
        self,
        method: _Method,
        span_context: trace.SpanContext,
        remote: Any,
        started: tuple[int, Mapping[str, Any]],
        code: grpc.StatusCode,
        exc: BaseException | None,
    ) -> None:
        start_ns, initial = started
        attributes = method.attributes_at_end(initial, code)
        end_ns = time.time_ns()
        self.processor.on_end(
            ReadableSpan(
                name=method.span_name,
                context=span_context,
                parent=remote,
                resource=self.resource,
                attributes=attributes,
                events=(_exception_event(exc, end_ns),) if exc is not None else (),
                kind=SpanKind.SERVER,
                status=Status(StatusCode.ERROR, code.name) if code in _SERVER_FAULTS else _UNSET,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )


def _exception_event(exc: BaseException, timestamp: int) -> Event:
    """The `exception` event the SDK's Span.record_exception makes."""
    kind = type(exc)
    module = kind.__module__
    name = f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__
    attributes = {
        "exception.type": name,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
        "exception.escaped": "False",
    }
    return Event("exception", attributes, timestamp)


class TracingInterceptor(GatedInterceptor[_Method]):
    """See the module docstring."""

    keyed_on_handler = False  # its _Method keeps the handler it last made (MadeOnce)

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self._spans = _Spans(tracer)

    def build(self, service: Any, name: str, handler: _Handler) -> _Method:
        return _Method(service.full_name, name, self._spans)

    def intercept(
        self, method: _Method, handler: _Handler, details: grpc.HandlerCallDetails
    ) -> _Handler:
        carrier: dict[str, str] | None = None
        for key, value in details.invocation_metadata or ():
            if key in _TRACE_KEYS and isinstance(value, str):
                if carrier is None:
                    carrier = {}
                carrier[key] = value
        _PARENT.set(tracing.extract(carrier) if carrier else None)
        return method.made.get(handler, method.traced)


async def _traced(
    spans: _Spans, method: _Method, inner: Any, request: Any, context: _Context
) -> Any:
    start_ns = time.time_ns()
    parent = _PARENT.get(None)
    span_context, remote, attributes = spans.start(method, parent)
    token = otel_context.attach(
        trace.set_span_in_context(trace.NonRecordingSpan(span_context), parent)
    )
    code = grpc.StatusCode.OK
    failure: BaseException | None = None
    try:
        return await inner(request, context)
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except BaseException as exc:
        code, failure = grpc.StatusCode.UNKNOWN, exc
        raise
    finally:
        otel_context.detach(token)
        if code is grpc.StatusCode.OK:
            code = context.code() or grpc.StatusCode.OK
        if attributes is not None:  # recorded
            spans.end(method, span_context, remote, (start_ns, attributes), code, failure)
