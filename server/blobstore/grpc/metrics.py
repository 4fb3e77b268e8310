"""Per-call observation of the blob services: Prometheus metrics, request ids, access log.

A gRPC server interceptor placed before the guard (grpc/guard.py), so it sees every
call of blobstore.v1 and stepflow.v1 as the caller does, refusals included (an
OVERLOADED refusal is a RESOURCE_EXHAUSTED call here). For each call it

* where log lines can carry it (JSON logs, the access log), takes the request id from
  the `x-request-id` metadata (or makes one), sets it in blobstore.logs.request_id (a
  context variable of the call's task) for the call's log lines and returns it in the
  trailing metadata (on errors status.to_status adds it next to the error details, as
  abort() replaces the trailing metadata);
* with metrics on, counts the call by service, method and status code, observes its
  duration, and counts the request and reply bytes as the (de)serializers see them;
* with the access log on, logs one line: method, code, duration, peer.

Cheap on the hot path: the families are metric_cells' (plain numbers, turned into
Prometheus families at scrape time, no lock per record), label children are bound
once per method (a code's child on its first use), the byte counters sit in the
method's (de)serializers, and the handler with its behaviour wrapped is made once per
method (interceptor_base.MadeOnce): a call costs a dict lookup, an identity check and
the wrapper's coroutine (scripts/bench/bench_observe.py measures it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from blobstore import logs
from blobstore.grpc.interceptor_base import (
    Context,
    GatedInterceptor,
    Handler,
    MadeOnce,
    behavior_slot,
    metadata_value,
)
from blobstore.metric_cells import CellCounter, CellHistogram

log = logging.getLogger("blobstore.access")

# From 0.1 ms (a Stat in memory) to 10 s (a large stream): bounds fit for both.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_Handler = Handler
_Context = Context


class RpcMetrics:
    """The per-call metric families, registered in `registry` (metric_cells: recorded
    without locks, from the event loop's thread)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("service", "method")
        self.calls = CellCounter(
            "blobstore_rpc_calls",
            "Finished calls by service, method and gRPC status code",
            (*labels, "code"),
            registry=registry,
        )
        self.duration = CellHistogram(
            "blobstore_rpc_duration_seconds",
            "Time from the start of a call's handler to its status, by service and method",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = CellCounter(
            "blobstore_rpc_received_bytes",
            "Request message bytes received (serialized protobuf), by service and method",
            labels,
            registry=registry,
        )
        self.sent = CellCounter(
            "blobstore_rpc_sent_bytes",
            "Reply message bytes sent (serialized protobuf), by service and method",
            labels,
            registry=registry,
        )


class CallObserver(GatedInterceptor["_Method"]):
    """Wraps each blob service call; see the module docstring. `metrics` None: ids only."""

    keyed_on_handler = False  # its _Method keeps the handler it last made (MadeOnce)

    def __init__(
        self,
        metrics: RpcMetrics | None = None,
        access_log: bool = False,
        *,
        level: int = logging.INFO,
        sample: float = 1.0,
        request_ids: bool = True,
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log
        # Ids only where a line can carry them (JSON logs, the access log): metrics
        # alone keep no per-call record to join an id to.
        self.request_ids = request_ids
        # Sampled lines: a fraction of the calls that went well (OK, NOT_FOUND); the
        # others are always logged, being the ones an operator looks for.
        self.access_level = level
        self.access_sample = sample
        super().__init__()

    def build(self, service: Any, name: str, handler: _Handler) -> _Method:
        return _Method(self, service.full_name, name)

    def intercept(
        self, method: _Method, handler: _Handler, details: grpc.HandlerCallDetails
    ) -> _Handler:
        if self.request_ids:
            # For the call's log lines and its reply (_observed): the call's task runs
            # its behaviour after this, with its context variables.
            given = metadata_value(details.invocation_metadata, logs.REQUEST_ID_KEY)
            logs.request_id.set(logs.accept_request_id(given))
        return method.made.get(handler, method.wrap)


class _Method:
    """One method's bound metric children and counting (de)serializers."""

    __slots__ = (
        "_codes",
        "_deserialize",
        "_metrics",
        "_serialize",
        "_wrapped_deserialize",
        "_wrapped_serialize",
        "access_level",
        "access_log",
        "access_sample",
        "duration",
        "label",
        "labels",
        "made",
    )

    def __init__(self, observer: CallObserver, service: str, name: str) -> None:
        self._metrics = observer.metrics
        self.access_log = observer.access_log
        self.access_level = observer.access_level
        self.access_sample = observer.access_sample
        self.label = f"/{service}/{name}"
        self.labels = (service, name)
        self._codes: dict[grpc.StatusCode, Any] = {}
        self.duration = (
            None if self._metrics is None else self._metrics.duration.labels(service, name)
        )
        self._deserialize: Any = None
        self._wrapped_deserialize: Any = None
        self._serialize: Any = None
        self._wrapped_serialize: Any = None
        self.made = MadeOnce()

    def wrap(self, handler: _Handler) -> _Handler:
        """`handler` observed: its behaviour wrapped, its (de)serializers counting. Made
        once per method (MadeOnce), and per call only for refusals, so plain _replace."""
        # The slot is found for each handler: a refusal (grpc/guard.py) holds its
        # behaviour in another field than the method's own handler does. The guard makes
        # every blob service behaviour a coroutine function (GetStream writes its replies
        # itself), so one wrapper fits every kind.
        slot = behavior_slot(handler)
        changes: dict[str, Any] = {slot: functools.partial(_observed, self, getattr(handler, slot))}
        if self._metrics is not None:
            changes["request_deserializer"] = self._counting_deserializer(
                handler.request_deserializer
            )
            changes["response_serializer"] = self._counting_serializer(handler.response_serializer)
        return handler._replace(**changes)

    def _counting_deserializer(self, deserialize: Any) -> Any:
        if deserialize is None or deserialize is self._deserialize:
            return self._wrapped_deserialize if deserialize is not None else None
        assert self._metrics is not None
        count = self._metrics.received.labels(*self.labels).inc

        def parse(data: bytes) -> Any:
            count(len(data))
            return deserialize(data)

        self._deserialize, self._wrapped_deserialize = deserialize, parse
        return parse

    def _counting_serializer(self, serialize: Any) -> Any:
        if serialize is None or serialize is self._serialize:
            return self._wrapped_serialize if serialize is not None else None
        assert self._metrics is not None
        count = self._metrics.sent.labels(*self.labels).inc

        def encode(message: Any) -> bytes:
            data: bytes = serialize(message)
            count(len(data))
            return data

        self._serialize, self._wrapped_serialize = serialize, encode
        return encode

    def finish(self, context: _Context, started: float, code: grpc.StatusCode | None) -> None:
        """Counts and logs a finished call; `code` None: read it from the context."""
        if code is None:
            code = context.code() or grpc.StatusCode.OK
        elapsed = time.perf_counter() - started
        if self._metrics is not None:
            counter = self._codes.get(code)
            if counter is None:
                counter = self._codes[code] = self._metrics.calls.labels(*self.labels, code.name)
            counter.inc()
            assert self.duration is not None
            self.duration.observe(elapsed)
        if self.access_log and _sampled(self.access_sample, code):
            log.log(
                self.access_level,
                "%s %s %.1f ms",
                self.label,
                code.name,
                elapsed * 1000,
                extra={
                    "fields": {
                        "method": self.label,
                        "code": code.name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "peer": context.peer(),
                    }
                },
            )


async def _observed(method: _Method, inner: Any, request: Any, context: _Context) -> Any:
    """Runs one call's behaviour (any kind but bidirectional), then counts it; the call's
    request id, if CallObserver.intercept gave it one, goes back in its trailers."""
    started = time.perf_counter()
    code: grpc.StatusCode | None = None
    if (rid := logs.request_id.get()) is not None:
        context.set_trailing_metadata(((logs.REQUEST_ID_KEY, rid),))
    try:
        return await inner(request, context)
    except grpc.aio.AbortError:
        raise  # its code is the context's; status.to_status put the id in its trailers
    except BaseException as exc:
        code = _code_of(exc)
        raise
    finally:
        method.finish(context, started, code)


def _sampled(sample: float, code: grpc.StatusCode) -> bool:
    return sample >= 1.0 or code not in _ROUTINE or random.random() < sample


_ROUTINE = frozenset((grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND))


def _code_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
