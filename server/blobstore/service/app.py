"""Assembles and runs the gRPC server: store, servicer, security (service/security.py),
health, reflection, graceful stop; SIGHUP reloads the tokens, JWT keys and TLS files."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from blobstore import tracing
from blobstore.grpc.guard import Guard
from blobstore.grpc.interceptor_base import InterceptorChain
from blobstore.grpc.metrics import CallObserver
from blobstore.grpc.servicer import BlobServicer
from blobstore.grpc.stepflow_servicer import SERVICE_NAME as STEPFLOW_SERVICE_NAME
from blobstore.grpc.stepflow_servicer import StepflowBlobServicer
from blobstore.limits import MAX_CHUNK
from blobstore.offload import shutdown_process_pool
from blobstore.proto_names import SERVICE_NAME
from blobstore.service import connections
from blobstore.service.admission import Admission
from blobstore.service.config import ServerConfig
from blobstore.service.hardening import (
    connection_cap,
    is_loopback,
    raise_open_file_limit,
    warn_if_exposed,
)
from blobstore.service.malloc_tuning import MallocTrimmer, MallocTuning, tune_malloc
from blobstore.service.metrics import ServerMetrics, serve_metrics
from blobstore.service.security import (
    ReloadableTls,
    Security,
    build_security,
    check_exposure,
    server_credentials,
)
from blobstore.storage.factory import Storage, open_storage
from blobstore.store import BlobStore

log = logging.getLogger("blobstore")

# Room for the message framing around the largest unary blob.
_MESSAGE_OVERHEAD = 64 * 1024
# After the grace period: time for cut-off calls to send their status before gRPC stops.
_CUT_OFF_SECONDS = 1.0
# After gRPC stopped: time for the tasks of its last calls to end before the loop closes.
_SETTLE_SECONDS = 5.0
# Calls gRPC core may hold before our guard sees them, per call slot (see connection_options).
PENDING_CALLS_PER_SLOT = 32
MIN_PENDING_CALLS = 16_384


class ListenError(Exception):
    """The server could not bind its address."""


async def serve(config: ServerConfig, stop: asyncio.Event | None = None) -> None:
    """Runs the server until SIGTERM/SIGINT (or `stop` is set), then stops gracefully."""
    # Security settings are checked before anything is opened: a refusal leaves no trace.
    check_exposure(config, config.address.rsplit(":", 1)[0], log)
    security = build_security(config)
    tls = server_credentials(config)
    malloc = tune_malloc()
    try:
        metrics_endpoint = config.metrics_endpoint
    except ValueError as exc:
        raise ListenError(str(exc)) from None
    _check_access_log(config)
    metrics = ServerMetrics.create() if metrics_endpoint else None
    # Off: nothing of OpenTelemetry is imported nor installed (blobstore/tracing.py).
    traced = (
        tracing.start("blobstore", config.otlp_endpoint)
        if tracing.wanted(config.otlp_endpoint)
        else None
    )
    storage = open_storage(config.storage_settings, metrics.storage if metrics else None)
    try:
        await storage.start()
        try:
            store = BlobStore(storage.backend, config.limits, storage.retention)
            await _serve_store(config, store, storage, stop, malloc, security, tls, metrics, traced)
        finally:
            await storage.stop()  # again if the server failed: a second call does nothing
    finally:
        shutdown_process_pool()
        storage.close()
        if traced is not None:
            traced.shutdown()  # sends the spans still queued


async def _serve_store(
    config: ServerConfig,
    store: BlobStore,
    storage: Storage,
    stop: asyncio.Event | None,
    malloc: MallocTuning,
    security: Security,
    tls: ReloadableTls | None,
    metrics: ServerMetrics | None = None,
    traced: tracing.Tracing | None = None,
) -> None:
    # Streamed chunks (up to MAX_CHUNK) must fit whatever the unary limit is.
    message_limit = max(config.max_unary_bytes, MAX_CHUNK) + _MESSAGE_OVERHEAD
    guard = Guard(
        metrics.admission(config.admission) if metrics else Admission(config.admission),
        stream_idle=config.stream_idle_seconds,
        on_release=MallocTrimmer().released,
    )
    max_connections = connection_cap(config.max_connections, raise_open_file_limit())
    server = grpc.aio.server(
        # The observer first: it sees calls as callers do, every refusal included; then the
        # authenticator: a refused call takes no admission ticket; the certificate gate
        # (mTLS identities) after the guard: it needs the handler's view of the peer.
        interceptors=[
            InterceptorChain(
                [
                    *_tracing_interceptor(traced),
                    *_observer(config, metrics),
                    *([security.authenticator] if security.authenticator is not None else []),
                    guard,
                    *([security.gate] if security.gate is not None else []),
                ]
            )
        ],
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.so_reuseport", 0),
            *connection_options(config, max_connections),
        ],
    )
    # Delete and Prune: the admin scope with tokens; without, only on loopback or when asked.
    host = config.address.rsplit(":", 1)[0].strip("[]")
    removals = security.authority is not None or config.enable_delete or is_loopback(host)
    BlobServicer(store, removals_allowed=removals).add_to_server(server)
    StepflowBlobServicer(store).add_to_server(server)  # Stepflow's API, same store and guard
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if not config.no_reflection:
        reflection.enable_server_reflection(
            [SERVICE_NAME, STEPFLOW_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME],
            server,
        )
    _check_bindable(config.address)
    try:
        if tls is None:
            port = server.add_insecure_port(config.address)
        else:
            port = server.add_secure_port(config.address, tls.credentials())
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {config.address}: {exc}") from None
    host = config.address.rsplit(":", 1)[0]
    # Before the gRPC server starts, so a metrics port in use stops the start cleanly.
    if metrics:
        connections.register(metrics.registry, max_connections)
    metrics_server = _start_metrics(config) if metrics else None
    await server.start()
    for name in (SERVICE_NAME, STEPFLOW_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    malloc.log()
    log.info("at most %d connections (open-file limit and --max-connections)", max_connections)
    log.info(
        "security: TLS %s; %s",
        ("on, client certificates required" if config.tls_client_ca else "on")
        if tls is not None
        else "off",
        security.describe(),
    )
    # The "listening" line comes last: scripts and tests take it as the sign of readiness.
    log.info(
        "blobstore gRPC listening on %s:%d; data in %s",
        host,
        port,
        storage.description,
    )

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP reloads tokens, JWT keys and TLS files (calls in progress go on).
    loop.add_signal_handler(signal.SIGHUP, _reload, security, tls)
    await stop.wait()
    log.info("stopping: finishing in-flight calls (up to %.0f s)", config.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    if not await _drain(guard, config.grace_seconds):
        log.warning("grace period over: ending %d unfinished call(s)", guard.admission.calls)
        guard.cut_off()
    await server.stop(_CUT_OFF_SECONDS)
    await storage.stop()  # its background tasks (eviction, snapshots) end here, not in _settle
    await _settle(_SETTLE_SECONDS)
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("stopped")


def _reload(security: Security, tls: ReloadableTls | None) -> None:
    if security.authority is None and tls is None:
        log.info("SIGHUP: no tokens, JWT keys or TLS files, nothing to reload")
        return
    if security.authority is not None:
        security.authority.reload()
    if tls is not None:
        tls.reload()


def _observer(config: ServerConfig, metrics: ServerMetrics | None) -> list[Any]:
    """The per-call observer (grpc/metrics.py), only when something uses what it does:
    metrics, the access log, or JSON logs (whose lines carry request ids). Otherwise it
    is not installed - it costs every call a wrapper coroutine. Calls have
    request ids only with the access log or JSON logs: otherwise none is made, and a
    caller's x-request-id is not returned, as the server keeps no per-call record to
    join it to (metrics count calls, never by id; docs/observability.md)."""
    recorded = config.access_log or config.log_format == "json"
    if metrics is None and not recorded:
        return []
    return [
        CallObserver(
            metrics.rpc if metrics else None,
            config.access_log,
            level=logging.getLevelName(config.access_log_level.upper()),
            sample=config.access_log_sample,
            request_ids=recorded,
        )
    ]


def _tracing_interceptor(traced: tracing.Tracing | None) -> list[Any]:
    if traced is None:
        return []
    from blobstore.grpc.tracing import TracingInterceptor  # imports OpenTelemetry

    return [TracingInterceptor(traced.tracer)]


def _check_access_log(config: ServerConfig) -> None:
    if not isinstance(logging.getLevelName(config.access_log_level.upper()), int):
        raise ListenError(
            f"--access-log-level {config.access_log_level!r} is not a level "
            "(DEBUG, INFO, WARNING, ERROR)"
        )
    if not 0.0 <= config.access_log_sample <= 1.0:
        raise ListenError(
            f"--access-log-sample {config.access_log_sample} is not a fraction from 0 to 1"
        )


def _start_metrics(config: ServerConfig) -> Any:
    """Serves /metrics (service/metrics.py); raises ListenError if its port is taken."""
    endpoint = config.metrics_endpoint
    assert endpoint is not None
    host, port = endpoint
    try:
        server = serve_metrics(host, port)
    except OSError as exc:
        raise ListenError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    warn_if_exposed(log, host, "the metrics endpoint")
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def connection_options(config: ServerConfig, max_connections: int) -> list[tuple[str, int]]:
    """gRPC core settings that bound what connections and pending calls may hold.

    Calls that arrive faster than the event loop takes them wait in gRPC core's
    queue of unrequested calls, which by default starts dropping them at random past
    1000 and drops all past 3000 - as CANCELLED, before our guard can answer
    OVERLOADED (10,000 Stat calls at once on one channel: more than half CANCELLED).
    The queue is made long enough for the guard to see such bursts (a waiting call
    costs gRPC about 10 KiB); only past PENDING_CALLS_PER_SLOT x --max-concurrent-rpcs
    does gRPC still drop calls itself.

    Fairness between connections: gRPC core keeps one queue of unrequested calls per
    method, and grpc.aio takes one call at a time from each, so a Stat sent behind a
    burst of 3,000 Stat calls on another connection waits for all of them (1-4 s on a
    busy two-core machine) while other methods are served at once. The HTTP/2 limit on
    streams per connection (--max-streams-per-connection) keeps one connection's share
    of any queue to that many calls; its client holds the rest. gRPC's "overload
    protection" is switched off: it counts streams that have ended but are not yet
    freed, and refuses new streams past the limit with REFUSED_STREAM, which the client
    reports as UNAVAILABLE (1,300 of a 3,000-call burst on a fresh channel) instead of
    queueing them.
    """
    max_calls = config.max_concurrent_rpcs
    pending = max(PENDING_CALLS_PER_SLOT * max_calls, MIN_PENDING_CALLS) if max_calls else 1 << 20
    streams = config.max_streams_per_connection
    per_connection = (
        [("grpc.max_concurrent_streams", streams), ("grpc.http.overload_protection", 0)]
        if streams
        else []
    )
    return [
        *per_connection,
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.max_connection_idle_ms", _ms(config.connection_idle_seconds)),
        ("grpc.server_handshake_timeout_ms", _ms(config.handshake_timeout_seconds)),
        ("grpc.keepalive_time_ms", _ms(config.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


async def _drain(guard: Guard, grace: float) -> bool:
    """Refuses new calls and waits up to `grace` s for those in progress; True if all ended."""
    guard.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while guard.admission.calls and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.05)
    return guard.admission.calls == 0


async def _settle(seconds: float) -> None:
    """Waits up to `seconds` for the tasks still running after gRPC's stop() to end.

    stop() returns once gRPC core has cancelled the last calls, which can be before
    their handlers' tasks have finished (a refused stream still reading to its end,
    a clean-up on the I/O pool). asyncio.run() would then cancel those tasks as the
    loop closes, and grpc's _schedule_rpc_coro logs the CancelledError of each with a
    traceback (seen in test_shutdown under load). Any task still running after
    `seconds` is named in the log before that happens.
    """
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=seconds)
    if pending:
        names = sorted(task.get_name() for task in pending)
        log.warning("%d task(s) still running at the stop: %s", len(pending), ", ".join(names))


def _check_bindable(address: str) -> None:
    """Raises ListenError with the system's reason (e.g. "Address already in use").

    gRPC only says "Failed to bind" and writes its own multi-line log, so probe the
    address first. Like gRPC, it is enough that one of the resolved addresses binds.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or address.startswith("unix:"):
        return  # a form gRPC understands and we do not (unix sockets...): let gRPC judge
    try:
        candidates = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as exc:
        raise ListenError(f"cannot listen on {address}: {exc}") from None
    reasons: list[str] = []
    for family, kind, proto, _, sockaddr in candidates:
        with socket.socket(family, kind, proto) as probe:
            # Like gRPC's listener: connections of a previous run in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                reasons.append(exc.strerror or str(exc))
            else:
                return
    raise ListenError(f"cannot listen on {address}: {'; '.join(dict.fromkeys(reasons))}")
