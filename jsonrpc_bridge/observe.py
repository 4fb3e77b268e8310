"""The bridge's observability: Prometheus metrics, request ids and the access log.

* An aiohttp middleware gives each HTTP request its request id (the caller's
  `X-Request-Id` if usable, else a new one; blobstore/logs.py), sets it for the
  request's log lines, returns it in the `X-Request-Id` response header (added as the
  headers go out, so streamed replies have it too), and counts
  the request by route and status (with --metrics) and logs it (with --access-log;
  with client identities the line names the caller, client_identity.py).
* A gRPC client interceptor on the bridge's channel sends that id to the service as
  `x-request-id` metadata, so the server's log lines of the call carry the same id,
  and (with --metrics) times each upstream call by method and status code.
* `observed_methods` counts JSON-RPC calls by method and outcome (ok or the JSON-RPC
  error code).
* GET /metrics serves it all (prometheus_client's default registry, which also has
  the process collector) on the bridge's own HTTP port, only with --metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from random import random
from typing import Any

import grpc
import prometheus_client
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from blobstore import logs
from blobstore.errors import BlobStoreError
from blobstore.grpc.metrics import LATENCY_BUCKETS
from jsonrpc_bridge import errors
from jsonrpc_bridge.client_identity import CALLER_KEY
from jsonrpc_bridge.errors import RpcError

log = logging.getLogger("jsonrpc_bridge.access")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Method = Callable[[Any], Awaitable[object]]
_BatchMethod = Callable[[list[Any]], Awaitable[list[object]]]
_RID = "blobstore_request_id"  # the request-scoped key of its id


class BridgeMetrics:
    """The bridge's metric families, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.requests = Counter(
            "blobstore_bridge_http_requests",
            "HTTP requests by route (the path pattern, never a blob id) and status",
            ("route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "blobstore_bridge_http_request_duration_seconds",
            "HTTP request time, from its headers to its response, by route",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpc_calls = Counter(
            "blobstore_bridge_jsonrpc_calls",
            "JSON-RPC calls by method and outcome (ok or the JSON-RPC error code)",
            ("method", "outcome"),
            registry=registry,
        )
        self.batch = Histogram(
            "blobstore_bridge_jsonrpc_batch_size",
            "Elements of each JSON-RPC batch (an array body or stdio line)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=registry,
        )
        self.connections = Gauge(
            "blobstore_bridge_http_connections",
            "HTTP connections open (idle keep-alive ones included)",
            registry=registry,
        )
        self.upstream = Histogram(
            "blobstore_bridge_upstream_duration_seconds",
            "Unary calls to the gRPC service (retries included), by method and status code",
            ("method", "code"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def watch_connections(self, count: Callable[[], int]) -> None:
        self.connections.set_function(count)


@dataclass(frozen=True)
class AccessLog:
    """Whether and how the access log writes: its level, the fraction of routine
    requests (below 400, and 404) it samples; other statuses are always written."""

    on: bool = False
    level: int = logging.INFO
    sample: float = 1.0

    def wants(self, status: int) -> bool:
        if not self.on:
            return False
        return self.sample >= 1.0 or (status >= 400 and status != 404) or random() < self.sample


def middleware(metrics: BridgeMetrics | None, access_log: AccessLog) -> Any:
    """The aiohttp middleware described in the module docstring."""

    @web.middleware
    async def observe(request: web.Request, handler: _Handler) -> web.StreamResponse:
        rid = logs.accept_request_id(request.headers.get(logs.REQUEST_ID_KEY))
        request[_RID] = rid  # for _add_request_id, as the response's headers go out
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[logs.REQUEST_ID_KEY] = rid
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            if metrics is not None:
                metrics.requests.labels(name, str(status)).inc()
                metrics.duration.labels(name).observe(elapsed)
            if access_log.wants(status):
                fields: dict[str, object] = {
                    "http_method": request.method,
                    "route": name,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "peer": request.remote,
                }
                caller = request.get(CALLER_KEY)  # with client identities (never a secret)
                if caller is not None:
                    fields["caller"] = caller.shown
                log.log(
                    access_log.level,
                    "%s %s %d %.1f ms%s",
                    request.method,
                    name,
                    status,
                    elapsed * 1000,
                    "" if caller is None else f" caller={caller.shown}",
                    extra={"fields": fields},
                )
            logs.request_id.reset(token)

    return observe


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # Run as the headers go out: a streamed reply (REST GET) sends them before its
    # handler returns to the middleware.
    rid = request.get(_RID)
    if rid is not None:
        response.headers[logs.REQUEST_ID_KEY] = rid


def install(app: web.Application, metrics: BridgeMetrics | None, access_log: AccessLog) -> None:
    """Request ids and the access log on every route; with `metrics`, counts and /metrics."""
    app.middlewares.append(middleware(metrics, access_log))
    app.on_response_prepare.append(_add_request_id)
    if metrics is not None:
        _add_metrics_route(app, metrics)


def _add_metrics_route(app: web.Application, metrics: BridgeMetrics) -> None:
    """GET /metrics: the Prometheus text format."""

    async def scrape(request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(metrics.registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/metrics", scrape)


def observed_methods(table: Mapping[str, _Method], metrics: BridgeMetrics) -> dict[str, _Method]:
    """The JSON-RPC method table with each call counted by outcome."""
    return {name: _counted(name, method, metrics) for name, method in table.items()}


def _counted(name: str, method: _Method, metrics: BridgeMetrics) -> _Method:
    ok = metrics.rpc_calls.labels(name, "ok")

    async def call(params: Any) -> object:
        try:
            result = await method(params)
        except RpcError as exc:
            metrics.rpc_calls.labels(name, str(exc.code)).inc()
            raise
        except BlobStoreError as exc:
            metrics.rpc_calls.labels(name, str(errors.from_store_error(exc, "params").code)).inc()
            raise
        ok.inc()
        return result

    return call


def observed_batch_methods(
    table: Mapping[str, _BatchMethod], metrics: BridgeMetrics
) -> dict[str, _BatchMethod]:
    """The batch forms of the methods (protocol.py) with each element counted by outcome,
    as observed_methods counts a call."""
    return {name: _counted_batch(name, method, metrics) for name, method in table.items()}


def _counted_batch(name: str, method: _BatchMethod, metrics: BridgeMetrics) -> _BatchMethod:
    async def call(batch: list[Any]) -> list[object]:
        results = await method(batch)
        for result in results:
            outcome = str(result.code) if isinstance(result, RpcError) else "ok"
            metrics.rpc_calls.labels(name, outcome).inc()
        return results

    return call


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    rid = logs.request_id.get()
    if rid is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[logs.REQUEST_ID_KEY] = rid
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: BridgeMetrics | None) -> None:
        self._metrics = metrics

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if self._metrics is None:
            return await continuation(_with_request_id(details), request)
        started = time.perf_counter()
        call = await continuation(_with_request_id(details), request)
        code = await call.code()
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self._metrics.upstream.labels(method.rpartition("/")[2], code.name).observe(
            time.perf_counter() - started
        )
        return call


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_request_id(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_request_id(details), requests)


def client_interceptors(metrics: BridgeMetrics | None) -> list[Any]:
    """The interceptors of the bridge's channel: request ids always, timing with metrics."""
    return [_UnaryUnary(metrics), _UnaryStream(), _StreamUnary()]
