"""A stand-in Stepflow runtime that drives a real stepflow-py component server.

It does what the Stepflow runtime does to a component server, and no more:
starts it, sends `initialize` (and the `initialized` notification) and
`components/execute`, and serves the SDK's `blobs/*` requests, by forwarding
each one to our real JSON-RPC bridge byte for byte and handing the bridge's
reply back to the SDK byte for byte. Anything else the SDK asks is answered
-32601, so a test sees it rather than hangs.

- `StdioRuntime` (stepflow-py 0.7): the SDK reads newline-delimited JSON-RPC on
  stdin and writes it on stdout; its blobs requests go, line for line, to a
  `blobstore-bridge --stdio` child, whose lines go back to the SDK's stdin.
- `HttpRuntime` (stepflow-py 0.9, Streamable HTTP): the SDK announces
  `{"port": N}` on stdout; each `components/execute` is a POST whose answer is
  an SSE stream carrying the SDK's own requests and, last, the execute result.
  Each blobs request is POSTed to the HTTP bridge, and the bridge's reply body
  is POSTed back to the SDK (which answers 202).

The runtime runs its own event loop in a thread, so tests and module-scoped
fixtures call it with plain functions (`execute`, `execute_many`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp

T = TypeVar("T")
EXECUTE_TIMEOUT = 60.0
COMPONENTS = Path(__file__).with_name("sdk_components.py")
_METHOD_NOT_FOUND = -32601


@dataclass
class Forwarded:
    """One SDK request forwarded to the bridge, and the bridge's reply, as bytes."""

    request: bytes
    reply: bytes


@dataclass
class ExecuteReply:
    """The component server's answer to one components/execute."""

    message: dict[str, Any]

    @property
    def output(self) -> Any:
        assert "result" in self.message, f"the component failed: {self.message}"
        return self.message["result"]["output"]

    @property
    def error(self) -> dict[str, Any]:
        assert "error" in self.message, f"the component succeeded: {self.message}"
        error: dict[str, Any] = self.message["error"]
        return error


@dataclass
class _Loop:
    """An event loop of its own in a daemon thread."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class StandInRuntime:
    """What both transports share: ids, the thread's loop, the record of forwarded calls."""

    def __init__(self, sdk_python: Path, log_dir: Path) -> None:
        self.sdk_python = sdk_python
        self.log_dir = log_dir
        self.forwarded: list[Forwarded] = []
        self._ids = itertools.count(1)
        self._loop = _Loop()
        self._sdk: asyncio.subprocess.Process | None = None
        self._logs: list[IO[bytes]] = []

    def _log(self, name: str) -> IO[bytes]:
        log = open(self.log_dir / name, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        return log

    def sdk_log(self) -> str:
        return (self.log_dir / "sdk.log").read_text(errors="replace")

    async def _start_sdk(self) -> asyncio.subprocess.Process:
        self._sdk = await asyncio.create_subprocess_exec(
            str(self.sdk_python),
            str(COMPONENTS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log("sdk.log"),
            env={**os.environ, "STEPFLOW_TRACE_ENABLED": "false", "STEPFLOW_LOG_LEVEL": "INFO"},
            limit=64 * 1024 * 1024,
        )
        return self._sdk

    def start(self) -> StandInRuntime:
        self._loop.run(self._start(), timeout=60)
        return self

    def execute(self, component: str, input: Any) -> ExecuteReply:
        """Runs `/component` with `input`; returns the SDK's reply (result or error)."""
        return self._loop.run(self._timed_execute(component, input), EXECUTE_TIMEOUT + 5)

    def submit(self, component: str, input: Any) -> concurrent.futures.Future[ExecuteReply]:
        """Starts `/component` without waiting for it (for calls that may never return)."""
        return asyncio.run_coroutine_threadsafe(
            self._timed_execute(component, input), self._loop.loop
        )

    def execute_many(self, calls: Sequence[tuple[str, Any]]) -> list[ExecuteReply]:
        """Runs all `calls` at once; replies in the order of `calls`."""

        async def all_at_once() -> list[ExecuteReply]:
            return list(await asyncio.gather(*(self._timed_execute(c, i) for c, i in calls)))

        return self._loop.run(all_at_once(), EXECUTE_TIMEOUT + 5)

    async def _timed_execute(self, component: str, input: Any) -> ExecuteReply:
        request_id = f"execute-{next(self._ids)}"
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "components/execute",
            "params": {
                "component": f"/{component}",
                "input": input,
                "attempt": 1,
                "observability": {"run_id": "run-1", "flow_id": "flow-1", "step_id": component},
            },
        }
        try:
            reply = await asyncio.wait_for(self._execute(request_id, message), EXECUTE_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"no answer to {component} in {EXECUTE_TIMEOUT} s; SDK log:\n{self.sdk_log()}"
            ) from None
        assert reply.get("id") == request_id, reply
        return ExecuteReply(reply)

    async def _start(self) -> None:
        raise NotImplementedError

    async def _execute(self, request_id: str, message: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def _stop(self) -> None:
        if self._sdk is not None and self._sdk.returncode is None:
            if self._sdk.stdin is not None:
                self._sdk.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                self._sdk.kill()
            await self._sdk.wait()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run(self._stop(), timeout=30)
        self._loop.close()
        for log in self._logs:
            log.close()


def _is_blob_request(message: object) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("method"), str)
        and message["method"].startswith("blobs/")
        and "id" in message
    )


def _method_not_found(message: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": message.get("id"),
            "error": {"code": _METHOD_NOT_FOUND, "message": f"not served: {message.get('method')}"},
        }
    ).encode()


class StdioRuntime(StandInRuntime):
    """stepflow-py 0.7 over stdio, its blobs requests served by `blobstore-bridge --stdio`."""

    def __init__(self, sdk_python: Path, log_dir: Path, grpc_target: str, *bridge_args: str):
        super().__init__(sdk_python, log_dir)
        self.grpc_target = grpc_target
        self.bridge_args = bridge_args
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._requests: dict[Any, bytes] = {}  # SDK requests at the bridge, by id
        self._tasks: list[asyncio.Task[None]] = []
        self._sdk_write = asyncio.Lock()

    async def _start(self) -> None:
        sdk = await self._start_sdk()
        self._bridge = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jsonrpc_bridge.cli",
            "--grpc-target",
            self.grpc_target,
            "--stdio",
            *self.bridge_args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log("bridge.log"),
            limit=64 * 1024 * 1024,
        )
        self._tasks = [
            asyncio.create_task(self._from_sdk(sdk)),
            asyncio.create_task(self._from_bridge(self._bridge)),
        ]
        initialize = {
            "jsonrpc": "2.0",
            "id": "initialize",
            "method": "initialize",
            "params": {"runtime_protocol_version": 1},
        }
        reply = await asyncio.wait_for(self._execute("initialize", initialize), 60)
        assert reply.get("result", {}).get("server_protocol_version") == 1, reply
        await self._to_sdk(
            json.dumps({"jsonrpc": "2.0", "method": "initialized", "params": {}}).encode()
        )

    async def _to_sdk(self, line: bytes) -> None:
        assert self._sdk is not None and self._sdk.stdin is not None
        async with self._sdk_write:
            self._sdk.stdin.write(line + b"\n")
            await self._sdk.stdin.drain()

    async def _execute(self, request_id: str, message: dict[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        await self._to_sdk(json.dumps(message).encode())
        return await future

    async def _from_sdk(self, sdk: asyncio.subprocess.Process) -> None:
        """Every line the SDK writes: a reply to one of ours, or a request of its own."""
        assert sdk.stdout is not None and self._bridge.stdin is not None
        while line := await sdk.stdout.readline():
            line = line.rstrip(b"\n")
            message = json.loads(line)
            if _is_blob_request(message):
                self._requests[message["id"]] = line
                self._bridge.stdin.write(line + b"\n")  # byte for byte
                await self._bridge.stdin.drain()
            elif "method" in message:
                if "id" in message:
                    await self._to_sdk(_method_not_found(message))
            elif (future := self._pending.pop(str(message.get("id")), None)) is not None:
                future.set_result(message)
        for future in self._pending.values():
            future.set_exception(AssertionError(f"the SDK exited; log:\n{self.sdk_log()}"))

    async def _from_bridge(self, bridge: asyncio.subprocess.Process) -> None:
        """Every line the bridge writes goes back to the SDK unchanged."""
        assert bridge.stdout is not None
        while line := await bridge.stdout.readline():
            line = line.rstrip(b"\n")
            request_id = json.loads(line).get("id")
            self.forwarded.append(Forwarded(self._requests.pop(request_id, b""), line))
            await self._to_sdk(line)

    async def _stop(self) -> None:
        await super()._stop()
        bridge = getattr(self, "_bridge", None)
        if bridge is not None and bridge.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                bridge.kill()
            await bridge.wait()
        for task in self._tasks:
            task.cancel()


class HttpRuntime(StandInRuntime):
    """stepflow-py 0.9 over Streamable HTTP, its blobs requests served by the HTTP bridge."""

    _ACCEPT = "application/json, text/event-stream"

    def __init__(self, sdk_python: Path, log_dir: Path, bridge_url: str) -> None:
        super().__init__(sdk_python, log_dir)
        self.bridge_url = bridge_url
        self.sdk_url = ""
        self.sdk_reply_statuses: list[int] = []
        self._serving: set[asyncio.Task[None]] = set()

    async def _start(self) -> None:
        sdk = await self._start_sdk()
        assert sdk.stdout is not None
        announcement = await asyncio.wait_for(sdk.stdout.readline(), 60)
        assert announcement, f"the SDK exited before announcing its port:\n{self.sdk_log()}"
        self.sdk_url = f"http://127.0.0.1:{json.loads(announcement)['port']}/"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def _execute(self, request_id: str, message: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": self._ACCEPT}
        async with self._session.post(
            self.sdk_url, data=json.dumps(message).encode(), headers=headers
        ) as response:
            if not response.content_type.startswith("text/event-stream"):
                reply: dict[str, Any] = json.loads(await response.read())
                return reply
            async for event in _sse_events(response.content.readline):
                decoded = json.loads(event)
                if _is_blob_request(decoded):
                    # Served at once, concurrently: the execute goes on streaming meanwhile.
                    self._spawn(self._serve_blob_request(event))
                elif "method" in decoded:
                    self._spawn(self._reply_to_sdk(_method_not_found(decoded)))
                else:
                    result: dict[str, Any] = decoded
                    return result
        raise AssertionError(f"the SSE stream ended without a result; SDK log:\n{self.sdk_log()}")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve_blob_request(self, request: bytes) -> None:
        async with self._session.post(
            self.bridge_url, data=request, headers={"Content-Type": "application/json"}
        ) as response:
            reply = await response.read()
        self.forwarded.append(Forwarded(request, reply))
        await self._reply_to_sdk(reply)

    async def _reply_to_sdk(self, reply: bytes) -> None:
        headers = {"Content-Type": "application/json", "Accept": self._ACCEPT}
        async with self._session.post(self.sdk_url, data=reply, headers=headers) as response:
            await response.read()
            self.sdk_reply_statuses.append(response.status)

    async def _stop(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            await session.close()
        await super()._stop()


async def _sse_events(readline: Callable[[], Awaitable[bytes]]) -> Any:
    """The `data` of each server-sent event, as bytes (multi-line data joined by newlines)."""
    data: list[bytes] = []
    while line := await readline():
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
    if data:
        yield b"\n".join(data)
