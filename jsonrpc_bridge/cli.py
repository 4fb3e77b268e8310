"""The `blobstore-bridge` command: JSON-RPC over HTTP (default) or stdio, to the gRPC service.

It prints one start-up line on stderr saying where it listens, for example
    blobstore-bridge JSON-RPC listening on http://127.0.0.1:8080/ (gRPC target 127.0.0.1:50051)
    blobstore-bridge JSON-RPC on stdio (gRPC target 127.0.0.1:50051)
(https:// with --tls-cert), and stops gracefully on SIGTERM/SIGINT (and, with --stdio,
at end of input). SIGHUP reloads the HTTPS certificate, key and client CA
(listener_tls.py), the client identities file (client_identity.py) and the service
token file (upstream_auth.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import BinaryIO

from blobstore import logs, tracing
from blobstore.offload import shutdown_process_pool
from blobstore.retry import RetryPolicy
from blobstore.service.hardening import connection_cap, install_throttle, raise_open_file_limit
from blobstore.targets import channel_target
from jsonrpc_bridge import (
    auth_failures,
    client_identity,
    config,
    exposure,
    forwarded,
    listener_tls,
    observe,
    stdio_transport,
    upstream_auth,
)
from jsonrpc_bridge.methods import SCOPES, BlobMethods
from jsonrpc_bridge.protocol import JsonRpcCore
from jsonrpc_bridge.service import BlobService

log = logging.getLogger("jsonrpc_bridge")
EXIT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobstore-bridge",
        description="JSON-RPC 2.0 bridge (blobs/put, blobs/get) to the gRPC BlobService",
    )
    config.add_arguments(parser)
    cfg = config.from_arguments(parser.parse_args(argv))
    try:
        address = None if cfg.stdio else config.split_address(cfg.http)
    except ValueError as exc:
        parser.error(f"--http: {exc}")
    try:
        channel_target(cfg.grpc_target)
    except (ValueError, OSError) as exc:
        parser.error(f"--grpc-target: {exc}")
    if cfg.log_level.upper() not in logging.getLevelNamesMapping():
        parser.error(f"--log-level: unknown level {cfg.log_level!r}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if cfg.stdio and cfg.tls_cert:
        parser.error("--tls-cert is for the HTTP listener; stdio has none")
    _check_client_certificates(parser, cfg)
    try:
        forwarded.parse_trusted(cfg.trusted_proxies)
    except forwarded.TrustedProxiesError as exc:
        parser.error(str(exc))
    logs.configure(cfg.log_level, cfg.log_format)
    install_throttle()
    try:
        upstream = upstream_auth.configure(
            cfg.grpc_target,
            token_file=cfg.upstream_token_file,
            tls_ca=cfg.upstream_tls_ca,
            tls_cert=cfg.upstream_tls_cert,
            tls_key=cfg.upstream_tls_key,
            certificate_callers=bool(cfg.client_identities),
        )
        tls = (
            listener_tls.ListenerTls(
                cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.tls_client_auth or "required"
            )
            if cfg.tls_cert
            else None
        )
        identities = (
            client_identity.ClientIdentities(cfg.client_identities)
            if cfg.client_identities
            else None
        )
    except (
        upstream_auth.UpstreamConfigError,
        listener_tls.ListenerTlsError,
        client_identity.AuthConfigError,
    ) as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    stdout: BinaryIO | None = None
    if cfg.stdio:
        # stdout carries only responses: keep a private handle on it and point fd 1 at
        # stderr, so a stray print anywhere in the process cannot corrupt the stream.
        stdout = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    try:
        asyncio.run(_run(cfg, upstream, address, stdout, _Listener(tls, identities)))
    # Cannot listen, cannot read or write stdio, an open door: say so, no traceback.
    except (OSError, exposure.ExposureError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    return 0


def _check_client_certificates(parser: argparse.ArgumentParser, cfg: config.BridgeConfig) -> None:
    """The client-certificate flags need each other in one direction: identities need a
    client CA, which needs the HTTPS listener; the mode needs the CA."""
    if cfg.tls_client_ca and not cfg.tls_cert:
        parser.error("--tls-client-ca needs the HTTPS listener: --tls-cert and --tls-key")
    if cfg.tls_client_auth and not cfg.tls_client_ca:
        parser.error(
            "--tls-client-auth needs --tls-client-ca (the CA client certificates verify against)"
        )
    if cfg.client_identities and not cfg.tls_client_ca:
        parser.error(
            "--client-identities needs --tls-client-ca: only a certificate that CA verified "
            "is looked up"
        )


class _Listener:
    """The listener's TLS files and client identities; what SIGHUP reloads with them."""

    def __init__(
        self,
        tls: listener_tls.ListenerTls | None,
        identities: client_identity.ClientIdentities | None,
    ) -> None:
        self.tls = tls
        self.identities = identities

    def reload(self, upstream: upstream_auth.UpstreamAuth, service: BlobService) -> None:
        upstream_tls = any(upstream.tls_files)
        if (
            self.tls is None
            and self.identities is None
            and not upstream.token_file
            and not upstream_tls
        ):
            log.info(
                "SIGHUP: no HTTPS certificate, client identities, service token file or "
                "upstream TLS files, nothing to reload"
            )
            return
        if self.tls is not None:
            self.tls.reload()
        if self.identities is not None:
            self.identities.reload()
        upstream.reload()
        credentials = upstream.reload_tls() if upstream_tls else None
        if credentials is not None:
            service.use_credentials(credentials)


async def _run(
    cfg: config.BridgeConfig,
    upstream: upstream_auth.UpstreamAuth,
    address: tuple[str, int] | None,
    stdout: BinaryIO | None,
    listener: _Listener,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Overload is retried too: a refused call did nothing, and the component server on
    # the other side would otherwise see -32005 for a burst the service absorbs in a moment.
    retry = RetryPolicy(attempts=cfg.retry_attempts, retry_overloaded=True)
    metrics = observe.BridgeMetrics() if cfg.metrics else None
    # Request ids go upstream when something shows them (JSON logs, the access log) or
    # with metrics; otherwise the channel has no interceptors, which cost each call.
    observed = metrics is not None or cfg.access_log or cfg.log_format == "json"
    interceptors = observe.client_interceptors(metrics) if observed else []
    if not upstream.sends_tokens:
        log.warning(
            "the gRPC channel to %s is plaintext beyond loopback: no token is sent on it, "
            "callers' Authorization headers are not forwarded; set --upstream-tls-ca",
            cfg.grpc_target,
        )
    # Off: nothing of OpenTelemetry is imported nor installed (blobstore/tracing.py).
    traced = (
        tracing.start("blobstore-bridge", cfg.otlp_endpoint)
        if tracing.wanted(cfg.otlp_endpoint)
        else None
    )
    if traced is not None:
        from jsonrpc_bridge import tracing as bridge_tracing

        interceptors += bridge_tracing.client_interceptors(traced.tracer)
    service = BlobService(
        cfg.grpc_target,
        cfg.deadline_seconds,
        retry,
        [*interceptors, *upstream.interceptors()],
        upstream.channel,
    )
    # Connections and calls in progress go on; new handshakes and requests (and upstream
    # calls, on a new channel) see the new files.
    loop.add_signal_handler(signal.SIGHUP, listener.reload, upstream, service)
    blob_methods = BlobMethods(
        service.client, max_get_bytes=cfg.max_get_bytes, type_names=cfg.blob_type_names
    )
    methods, batches = blob_methods.table(), blob_methods.batch_table()
    if listener.identities is not None:  # the bridge checks certificate callers' scopes
        methods = client_identity.scoped_methods(methods, SCOPES)
        batches = client_identity.scoped_batch_methods(batches, SCOPES)
    core = JsonRpcCore(
        observe.observed_methods(methods, metrics) if metrics else methods,
        max_batch_concurrency=cfg.max_batch_concurrency,
        max_json_values=cfg.max_json_values,
        batch_methods=observe.observed_batch_methods(batches, metrics) if metrics else batches,
    )
    if metrics is not None:
        core.on_batch = metrics.batch.observe
    try:
        if address is None:
            assert stdout is not None
            log.info("blobstore-bridge JSON-RPC on stdio (gRPC target %s)", cfg.grpc_target)
            await stdio_transport.serve(
                core,
                max_line_bytes=cfg.max_request_bytes,
                stop=stop,
                stdin_fd=0,
                stdout=stdout,
            )
        else:
            await _serve_http(
                cfg, core, service, upstream, address, stop, listener, metrics, traced
            )
    finally:
        await service.close()
        shutdown_process_pool()
        if traced is not None:
            traced.shutdown()  # sends the spans still queued
    log.info("stopped")


async def _serve_http(
    cfg: config.BridgeConfig,
    core: JsonRpcCore,
    service: BlobService,
    upstream: upstream_auth.UpstreamAuth,
    address: tuple[str, int],
    stop: asyncio.Event,
    listener: _Listener,
    metrics: observe.BridgeMetrics | None = None,
    traced: tracing.Tracing | None = None,
) -> None:
    # Imported here: aiohttp takes a second to import, which a stdio bridge need not pay.
    from jsonrpc_bridge import http_transport
    from jsonrpc_bridge.rest_routes import RestRoutes

    app = http_transport.create_app(
        core,
        max_request_bytes=cfg.max_request_bytes,
        probe=service.probe,
        body_timeout=cfg.body_timeout_seconds,
        identities=listener.identities,
        failures=auth_failures.FailedAttempts(
            auth_failures.FailureLimits(
                free=cfg.auth_failures_free, max_delay=cfg.auth_failure_max_delay_seconds
            )
        ),
        trusted_proxies=forwarded.parse_trusted(cfg.trusted_proxies),
    )
    if metrics is not None or cfg.access_log or cfg.log_format == "json":
        access_log = observe.AccessLog(
            cfg.access_log,
            logging.getLevelName(cfg.access_log_level.upper()),
            cfg.access_log_sample,
        )
        observe.install(app, metrics, access_log)
    if traced is not None:
        from jsonrpc_bridge import tracing as bridge_tracing

        # After observe's middleware: the span's log lines carry the request id.
        app.middlewares.append(bridge_tracing.middleware(traced.tracer))
    # Stepflow's REST blob routes, on the same port, limits and client (docs/stepflow.md).
    RestRoutes(
        service.client,
        max_request_bytes=cfg.max_request_bytes,
        max_get_bytes=cfg.max_get_bytes,
        max_json_values=cfg.max_json_values,
        body_timeout=cfg.body_timeout_seconds,
    ).add_to(app)
    max_connections = connection_cap(cfg.max_connections, raise_open_file_limit())
    tls = listener.tls
    ssl_context = tls.context if tls is not None else None
    await exposure.check(
        address[0],
        https=ssl_context is not None,
        gated=listener.identities is not None
        or (tls is not None and tls.verifies_clients and tls.client_auth == "required"),
        upstream=upstream,
        client=service.client,
        target=cfg.grpc_target,
        allow_unauthenticated=cfg.allow_unauthenticated,
        log=log,
    )
    runner = await http_transport.start(
        app,
        *address,
        grace=cfg.grace_seconds,
        idle_timeout=cfg.idle_timeout_seconds,
        max_connections=max_connections,
        ssl_context=ssl_context,
    )
    scheme = "https" if ssl_context is not None else "http"
    if tls is not None and tls.verifies_clients:
        identified = (
            listener.identities.describe()
            if listener.identities is not None
            else "no client identities (callers' Authorization headers decide)"
        )
        log.info("%s; %s", tls.describe(), identified)
    if metrics is not None and runner.server is not None:
        server = runner.server
        metrics.watch_connections(lambda: len(server.connections))
    try:
        for host, port, *_ in runner.addresses:
            shown = f"[{host}]" if ":" in host else host
            log.info(
                "blobstore-bridge JSON-RPC listening on %s://%s:%d/ (gRPC target %s)",
                scheme,
                shown,
                port,
                cfg.grpc_target,
            )
        await stop.wait()
        log.info("stopping: finishing in-flight requests (up to %.0f s)", cfg.grace_seconds)
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
