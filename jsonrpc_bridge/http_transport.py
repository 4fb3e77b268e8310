"""JSON-RPC over HTTP (aiohttp): POST / carries one message; GET /healthz probes the service.

HTTP statuses say what HTTP can say; everything else is JSON-RPC:
- 200 with the response body, also for JSON-RPC errors (the error is in the body);
- 204 and no body when the message was only notifications;
- 405 for a method other than POST on / (Allow: POST), 404 for other paths;
- 415 when the Content-Type is not JSON (JSON-RPC error body). application/json and
  application/json-rpc are JSON with any charset spelling of UTF-8; a missing
  Content-Type and application/x-www-form-urlencoded (what `curl -d` sends) are taken
  as JSON when the body starts like a JSON-RPC message (`{` or `[`);
- 413 when the body is over the size limit (JSON-RPC error -32006 body).
- 408 when the body does not arrive within the body timeout (the connection is closed).
- 401 when the Authorization header cannot be forwarded (not printable ASCII); a usable
  one is kept for the request's upstream calls (upstream_auth.py), never logged;
- 401 (JSON-RPC -32010 body) for a client certificate without a line in the client
  identities file, or, with identities, a caller presenting neither a certificate nor
  a header (client_identity.py), before the body is read.
A refusal of credentials the caller presented (a header the bridge or the gRPC server
refused, a certificate without a line) counts against the client's IP, and past the
free failures is sent after a wait (auth_failures.py), for the JSON-RPC and REST routes.
With an ssl.SSLContext (listener_tls.py) the listener speaks HTTPS only. Connections
are kept alive and requests are served concurrently. A connection with no request in
progress (or still sending its headers) for the idle timeout is closed; past the
connection cap new connections get a bare 503 and are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from jsonrpc_bridge import auth_failures, client_identity, errors, forwarded, upstream_auth
from jsonrpc_bridge.protocol import JsonRpcCore, encode_error
from jsonrpc_bridge.service import Health

log = logging.getLogger("jsonrpc_bridge")

JSON_TYPES = frozenset({"application/json", "application/json-rpc"})
# Content-Types of clients that did not say JSON but send it (curl -d, bare clients).
LENIENT_TYPES = frozenset({"", "application/x-www-form-urlencoded"})
UTF8_NAMES = frozenset({"utf-8", "utf8"})
_LOOKS_JSON = re.compile(rb"[ \t\r\n]*[\[{]")
Probe = Callable[[], Awaitable[Health]]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ListenError(OSError):
    """The HTTP address cannot be bound."""


def create_app(
    core: JsonRpcCore,
    *,
    max_request_bytes: int,
    probe: Probe,
    body_timeout: float = 60.0,
    identities: client_identity.ClientIdentities | None = None,
    failures: auth_failures.FailedAttempts | None = None,
    trusted_proxies: Sequence[forwarded.Network] = (),
) -> web.Application:
    """The aiohttp application; bodies over max_request_bytes are refused with 413.
    `identities`: client certificates are looked up there (client_identity.py);
    `failures`: failed authentications per client IP (default limits if None);
    `trusted_proxies`: whose X-Forwarded-For names the client (forwarded.py)."""
    middleware = _caller_credentials(identities, failures or auth_failures.FailedAttempts())
    middlewares = [forwarded.middleware(trusted_proxies)] if trusted_proxies else []
    app = web.Application(client_max_size=max_request_bytes, middlewares=[*middlewares, middleware])

    async def rpc(request: web.Request) -> web.StreamResponse:
        if not caller_credentials_usable():
            response = _rpc_error(401, errors.bad_authorization())
            response.headers["WWW-Authenticate"] = 'Bearer realm="blobstore", error="invalid_token"'
            return response
        refusal = client_identity.unauthenticated()
        if refusal is not None:
            log.warning("refused (401): %s", refusal)
            response = _rpc_error(401, errors.unauthenticated(refusal))
            response.headers["WWW-Authenticate"] = 'Bearer realm="blobstore"'
            return response
        lenient = _content_type(request)
        if lenient is None:
            return _unsupported_type(request)
        if request.content_length is not None and request.content_length > max_request_bytes:
            return _rpc_error(413, errors.request_too_large(max_request_bytes))
        try:
            async with asyncio.timeout(body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _rpc_error(413, errors.request_too_large(max_request_bytes))
        except TimeoutError:
            detail = f"the request body did not arrive within {body_timeout:g} s"
            response = _rpc_error(408, errors.invalid_request(detail))
            response.force_close()
            return response
        if lenient and not _LOOKS_JSON.match(body):
            return _unsupported_type(request, body_checked=True)
        answer = await core.handle(body)
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=answer, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        health = await probe()
        body = {"serving": health.serving, "grpc_status": health.status}
        if health.detail:
            body["detail"] = health.detail
        return web.Response(
            status=200 if health.serving else 503,
            body=orjson.dumps(body),
            content_type="application/json",
        )

    app.router.add_post("/", rpc)
    app.router.add_get("/healthz", healthz)
    return app


def _caller_credentials(
    identities: client_identity.ClientIdentities | None, failures: auth_failures.FailedAttempts
) -> Any:
    """A middleware keeping the caller's Authorization header for the upstream calls of
    the request, and (with `identities`) who its client certificate says it is; a
    request whose credentials were refused is counted in `failures` and may wait."""

    @web.middleware
    async def credentials(request: web.Request, handler: _Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        token = upstream_auth.caller_authorization.set(header)
        caller = None
        if identities is not None:
            transport = request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            caller = request[client_identity.CALLER_KEY] = identities.identify(header, peercert)
        caller_token = client_identity.current_caller.set(caller)
        attempt, watching = auth_failures.watch()
        try:
            response = await handler(request)
        finally:
            auth_failures.stop(watching)
            client_identity.current_caller.reset(caller_token)
            upstream_auth.caller_authorization.reset(token)
        reason = _failed_authentication(header, caller, attempt)
        if reason:
            await failures.slow_down(request.remote or "(unknown peer)", reason)
        return response

    return credentials


def _failed_authentication(
    header: str | None, caller: client_identity.Caller | None, attempt: auth_failures.Attempt
) -> str:
    """Why the request is a failed authentication ("": it is not one). Only credentials
    the caller presented count; the reasons never quote them."""
    if header is not None and not upstream_auth.acceptable(header):
        return "an Authorization header that is not a usable credential"
    if caller is not None and caller.failed:
        return caller.refusal
    if header is not None and attempt.reason:
        return attempt.reason
    return ""


def caller_credentials_usable() -> bool:
    """False if the current request has an Authorization header that cannot be forwarded."""
    value = upstream_auth.caller_authorization.get()
    return value is None or upstream_auth.acceptable(value)


def _content_type(request: web.Request) -> bool | None:
    """False: a JSON type; True: a type taken as JSON if the body looks so; None: refused."""
    charset = (request.charset or "utf-8").lower()
    if charset not in UTF8_NAMES:
        return None
    given = request.content_type if "Content-Type" in request.headers else ""
    if given in JSON_TYPES:
        return False
    return True if given in LENIENT_TYPES else None


def _unsupported_type(request: web.Request, *, body_checked: bool = False) -> web.Response:
    given = request.headers.get("Content-Type", "none")
    detail = f"Content-Type must be application/json (UTF-8), not {errors.clip(given)}"
    if body_checked:
        detail += ", and the body is not a JSON object or array"
    return _rpc_error(415, errors.invalid_request(detail))


def _rpc_error(status: int, error: errors.RpcError) -> web.Response:
    return web.Response(
        status=status, body=encode_error(None, error), content_type="application/json"
    )


async def start(
    app: web.Application,
    host: str,
    port: int,
    grace: float,
    *,
    idle_timeout: float = 30.0,
    max_connections: int = 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Binds and serves; returns the runner (its `addresses` say where it listens)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=grace,
        # aiohttp's keep-alive timer runs from the connection's start and from the end of
        # each request; it closes a connection that has not sent a whole request by then.
        keepalive_timeout=idle_timeout,
    )
    await runner.setup()
    site = _CappedSite(runner, host, port, max_connections, ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner


class _CappedSite(web.BaseSite):
    """A TCP site like aiohttp's TCPSite that refuses connections past a cap."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._open = 0

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max_connections:
                log.warning(
                    "refused a connection: %d open, the limit is %d (--max-connections)",
                    len(server.connections),
                    self._max_connections,
                )
                return _Refusal()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol, self._host, self._port, reuse_address=True, ssl=self._ssl_context
        )


class _Refusal(asyncio.Protocol):
    """Answers 503 and closes: the connection cap is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Length: 0\r\n\r\n"
)
