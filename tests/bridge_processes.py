"""Real bridge processes for tests: `blobstore-bridge` over HTTP or stdio, plus small clients.

BridgeProcess starts `python -m jsonrpc_bridge.cli` on a free port (or on
stdio), reads its start-up line, and stops or kills it. HttpRpc posts raw
bodies over one kept-alive connection. `stack` runs a gRPC server and an
HTTP bridge in front of it for a module's worth of tests.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.processes import ChildProcess, ServerProcess

_HTTP_LINE = re.compile(r"JSON-RPC listening on (https?)://(\S+):(\d+)/")
_STDIO_LINE = re.compile(r"JSON-RPC on stdio")


class BridgeProcess(ChildProcess):
    """A `blobstore-bridge` child process; its stderr goes to `log_path`."""

    name = "bridge"

    def __init__(
        self,
        grpc_target: str,
        log_path: Path,
        *extra_args: str,
        stdio: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_path, env)
        self.grpc_target = grpc_target
        self.extra_args = extra_args
        self.stdio = stdio
        self.port = 0
        self.url = ""
        self._lines: queue.Queue[bytes] = queue.Queue()

    def start(self, timeout: float = 30.0) -> BridgeProcess:
        log, start_offset = self._open_log()
        transport = ["--stdio"] if self.stdio else ["--http", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jsonrpc_bridge.cli",
                "--grpc-target",
                self.grpc_target,
                *transport,
                *self.extra_args,
            ],
            stdin=subprocess.PIPE if self.stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.stdio else log,
            stderr=log,
            env=self.env,
        )
        if self.stdio:
            assert self.proc.stdout is not None
            threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        match = self._wait_for_line(
            _STDIO_LINE if self.stdio else _HTTP_LINE, start_offset, timeout
        )
        if not self.stdio:
            self.port = int(match.group(3))
            self.url = f"{match.group(1)}://127.0.0.1:{self.port}/"
        return self

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for line in stream:
                self._lines.put(line)
        self._lines.put(b"")  # end of output

    def kill(self) -> None:
        super().kill()
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a write cut short by the kill
                self.proc.stdin.close()

    # -- stdio -----------------------------------------------------------------

    def send(self, message: object) -> None:
        """Writes one line: bytes as given (a newline is added), anything else as JSON."""
        assert self.proc is not None and self.proc.stdin is not None
        line = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()

    def read_line(self, timeout: float = 30.0) -> bytes:
        """The next line on stdout (without the newline); b"" once stdout has closed."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout} s; log:\n{self.log()}") from None
        if line == b"":
            self._lines.put(b"")  # stay at end of output for later reads
            return b""
        assert line.endswith(b"\n"), line
        return line[:-1]

    def read_message(self, timeout: float = 30.0) -> Any:
        line = self.read_line(timeout)
        assert line, f"stdout closed; log:\n{self.log()}"
        return json.loads(line)


BridgeFactory = Callable[..., BridgeProcess]
"""The `start_bridge` fixture (tests/conftest.py): target, args, stdio=, env= -> started."""


@dataclass
class HttpReply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)  # not orjson: it would turn integers past 64 bits to floats


class HttpRpc:
    """Posts to a bridge over one kept-alive HTTP/1.1 connection."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        match = re.fullmatch(r"http://([^:/]+):(\d+)/", url)
        assert match, url
        self.connection = http.client.HTTPConnection(
            match.group(1), int(match.group(2)), timeout=timeout
        )

    def close(self) -> None:
        self.connection.close()

    def request(
        self,
        method: str,
        path: str = "/",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpReply:
        self.connection.request(method, path, body=body, headers=headers or {})
        response = self.connection.getresponse()
        return HttpReply(response.status, response.headers, response.read())

    def post(self, body: bytes, content_type: str = "application/json") -> HttpReply:
        return self.request("POST", "/", body, {"Content-Type": content_type})

    def call(self, message: object) -> Any:
        """Posts a message (encoded as JSON unless bytes); returns the decoded 200 body."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        reply = self.post(body)
        assert reply.status == 200, (reply.status, reply.body)
        return reply.json()

    def rpc(self, method: str, params: object, request_id: object = 1) -> Any:
        """One request; returns its response object (result or error), checking the envelope."""
        response = self.call(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        assert response["jsonrpc"] == "2.0" and response["id"] == request_id, response
        return response

    def result(self, method: str, params: object) -> Any:
        response = self.rpc(method, params)
        assert "result" in response, response
        return response["result"]

    def error(self, method: str, params: object) -> Any:
        response = self.rpc(method, params)
        assert "error" in response, response
        return response["error"]


@dataclass
class Stack:
    """A gRPC server and an HTTP bridge in front of it."""

    server: ServerProcess
    bridge: BridgeProcess
    http: HttpRpc


@contextlib.contextmanager
def stack(directory: Path, *bridge_args: str, server_args: Sequence[str] = ()) -> Iterator[Stack]:
    """Runs a server (data in directory/data) and an HTTP bridge; kills both at the end."""
    server = ServerProcess(directory / "data", directory / "server.log", *server_args)
    bridge: BridgeProcess | None = None
    try:
        server.start()
        bridge = BridgeProcess(server.target, directory / "bridge.log", *bridge_args).start()
        client = HttpRpc(bridge.url)
        try:
            yield Stack(server, bridge, client)
        finally:
            client.close()
    finally:
        if bridge is not None:
            bridge.kill()
        server.kill()
