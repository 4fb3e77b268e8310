"""A small stand-in for the Stepflow runtime, for tests with the real stepflow-py SDKs.

It starts a component server built with the SDK (tests/stepflow/workers/blob_worker.py,
run by the SDK's own venv), sends it `initialize` (then the `initialized` notification)
and `components/execute`, exactly as the runtime does, and forwards every `blobs/*`
request the SDK sends back to a real `blobstore-bridge` process byte for byte, and the
bridge's reply back to the SDK byte for byte. Every forwarded exchange is recorded, so a
test can see what went over the wire.

- StdioRuntime (stepflow-py 0.7): the SDK speaks newline-delimited JSON on its
  stdin/stdout; the bridge runs with --stdio, so lines go from one pipe to the other.
- HttpRuntime (stepflow-py 0.9, Streamable HTTP): each request is POSTed to the SDK; a
  `components/execute` is answered with a Server-Sent Events stream on which the SDK
  sends its own requests, each POSTed to the bridge (concurrently), the bridge's reply
  body POSTed back to the SDK; the stream's last event is the execute result.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import queue
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.bridge_processes import BridgeProcess
from tests.processes import ChildProcess

WORKER = Path(__file__).resolve().parent / "workers" / "blob_worker.py"
REPO = Path(__file__).resolve().parents[2]
PROTOCOL_VERSION = 1
ACCEPT = "application/json, text/event-stream"


def sdk_python(version: str) -> Path:
    """The Python of the venv holding stepflow-py `version` ("07" or "09")."""
    return REPO / f".venv-stepflow-{version}" / "bin" / "python"


@dataclass
class Exchange:
    """One blobs/* call the SDK made: its request and the bridge's reply, as bytes."""

    request: bytes
    reply: bytes = b""
    reply_status: int | None = None
    """HTTP only: the SDK's status for the reply it was sent (202: taken)."""

    @property
    def method(self) -> str:
        return str(json.loads(self.request)["method"])

    def reply_json(self) -> Any:
        return json.loads(self.reply)


@dataclass
class Traffic:
    """Every blobs/* exchange, in the order the SDK sent the requests."""

    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, exchange: Exchange) -> None:
        with self.lock:
            self.exchanges.append(exchange)

    def of(self, method: str) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.method == method]


class SdkProcess(ChildProcess):
    """The SDK's component server; its stderr goes to `log_path`."""

    name = "stepflow-sdk"

    def __init__(self, version: str, log_path: Path) -> None:
        super().__init__(log_path, {"STEPFLOW_TRACE_ENABLED": "false"})
        self.version = version

    def start_process(self) -> subprocess.Popen[bytes]:
        log, _ = self._open_log()
        self.proc = subprocess.Popen(
            [str(sdk_python(self.version)), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
        )
        return self.proc

    def kill(self) -> None:
        """Kills the SDK (if it still runs) and closes its stdin and log; its stdout is
        closed by whoever reads it."""
        if self.proc is not None and self.proc.poll() is not None:
            self.wait()  # exited by itself: wait() still closes the log
        super().kill()
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # a write cut short by the kill
                self.proc.stdin.close()


class Runtime:
    """What both transports share: request ids, initialize, execute, the traffic record."""

    def __init__(self, bridge: BridgeProcess, sdk: SdkProcess) -> None:
        self.bridge = bridge
        self.sdk = sdk
        self.traffic = Traffic()
        self._ids = itertools.count(1)

    def call(self, method: str, params: object, timeout: float = 60.0) -> dict[str, Any]:
        raise NotImplementedError

    def notify(self, method: str, params: object) -> None:
        raise NotImplementedError

    def next_id(self) -> str:
        return f"runtime-{next(self._ids)}"

    def initialize(self) -> dict[str, Any]:
        """The runtime's handshake: `initialize`, then the `initialized` notification."""
        response = self.call("initialize", {"runtime_protocol_version": PROTOCOL_VERSION})
        self.notify("initialized", {})
        return response

    def execute(self, component: str, input: object, timeout: float = 60.0) -> Any:
        """Runs a component; returns its output, or fails the test with the SDK's error."""
        response = self.call("components/execute", execute_params(component, input), timeout)
        assert "result" in response, f"{response}\nSDK log:\n{self.sdk.log()}"
        return response["result"]["output"]


def execute_params(component: str, input: object) -> dict[str, object]:
    """The params of a `components/execute` as the runtime sends them."""
    return {
        "component": component,
        "input": input,
        "attempt": 1,
        "observability": {"run_id": "run-1", "flow_id": None, "step_id": "step-1"},
    }


class StdioRuntime(Runtime):
    """The runtime of a stdio component server (stepflow-py 0.7), with a --stdio bridge."""

    def __init__(self, bridge: BridgeProcess, sdk: SdkProcess) -> None:
        super().__init__(bridge, sdk)
        self._proc = sdk.start_process()
        self._write_lock = threading.Lock()
        self._responses: dict[str, queue.Queue[dict[str, Any]]] = {}
        self.broken_lines: list[bytes] = []
        """Lines from the SDK that are not JSON (none, unless the SDK cut one)."""
        assert self._proc.stdout is not None
        threading.Thread(target=self._from_sdk, args=(self._proc.stdout,), daemon=True).start()
        threading.Thread(target=self._from_bridge, daemon=True).start()

    def _to_sdk(self, line: bytes) -> None:
        assert self._proc.stdin is not None
        with self._write_lock:
            self._proc.stdin.write(line + b"\n")
            self._proc.stdin.flush()

    def _from_sdk(self, stdout: IO[bytes]) -> None:
        with stdout:
            self._read_sdk(stdout)

    def _read_sdk(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            line = raw.rstrip(b"\n")
            try:
                message = json.loads(line)
            except ValueError:
                self.broken_lines.append(line)  # a test says what it means
                continue
            if "method" in message:  # the SDK's own request: to the bridge, unchanged
                exchange = Exchange(line)
                self.traffic.add(exchange)
                self.bridge.send(line)
            else:
                self._responses.setdefault(str(message["id"]), queue.Queue()).put(message)

    def _from_bridge(self) -> None:
        """The bridge's replies, back to the SDK unchanged; the bridge answers in the order
        calls complete, so each reply is matched to its request by id only for the record."""
        while True:
            try:
                line = self.bridge.read_line(timeout=3600)
            except AssertionError:
                return
            if not line:
                return
            reply_id = json.loads(line).get("id")
            with self.traffic.lock:
                for exchange in self.traffic.exchanges:
                    if not exchange.reply and json.loads(exchange.request)["id"] == reply_id:
                        exchange.reply = line
                        break
            self._to_sdk(line)

    def call(self, method: str, params: object, timeout: float = 60.0) -> dict[str, Any]:
        request_id = self.next_id()
        answers = self._responses.setdefault(request_id, queue.Queue())
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self._to_sdk(json.dumps(message).encode())
        try:
            return answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no answer to {method} in {timeout} s; SDK log:\n{self.sdk.log()}"
            ) from None

    def notify(self, method: str, params: object) -> None:
        self._to_sdk(json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode())


class HttpRuntime(Runtime):
    """The runtime of a Streamable HTTP component server (stepflow-py 0.9), HTTP bridge."""

    def __init__(
        self,
        bridge: BridgeProcess,
        sdk: SdkProcess,
        *,
        bridge_ca: Path | None = None,
        authorization: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        """`bridge_ca`: the CA of an https:// bridge; `authorization`: the header the runtime
        adds to the requests it forwards to the bridge (as a runtime holding a token would);
        `client_cert`: (certificate, key) the runtime presents to the bridge (mTLS)."""
        super().__init__(bridge, sdk)
        self._bridge_tls = ssl.create_default_context(cafile=bridge_ca) if bridge_ca else None
        if client_cert is not None:
            assert self._bridge_tls is not None, "a client certificate needs an https bridge"
            self._bridge_tls.load_cert_chain(*client_cert)
        self._bridge_headers = {"Authorization": authorization} if authorization else {}
        proc = sdk.start_process()
        assert proc.stdout is not None
        self._stdout = proc.stdout
        announced = proc.stdout.readline()  # {"port": N}, printed once it listens
        assert announced, f"the SDK exited before listening; log:\n{sdk.log()}"
        self.port = int(json.loads(announced)["port"])
        self._forwarders = ThreadPoolExecutor(max_workers=32, thread_name_prefix="forward")

    @contextlib.contextmanager
    def _post(
        self,
        port: int,
        body: bytes,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """POSTs `body` as the runtime does (JSON, accepting JSON or an event stream)."""
        connection = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
            if tls is not None
            else http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        )
        try:
            connection.request(
                "POST",
                "/",
                body,
                {"Content-Type": "application/json", "Accept": ACCEPT, **(headers or {})},
            )
            yield connection.getresponse()
        finally:
            connection.close()

    def _forward(self, exchange: Exchange) -> None:
        """One SDK request to the bridge, and the bridge's reply body back to the SDK."""
        with self._post(
            self.bridge.port, exchange.request, 60, self._bridge_tls, self._bridge_headers
        ) as bridge_reply:
            exchange.reply = bridge_reply.read()
        with self._post(self.port, exchange.reply, 60) as sdk_reply:
            sdk_reply.read()
            exchange.reply_status = sdk_reply.status

    def call(self, method: str, params: object, timeout: float = 60.0) -> dict[str, Any]:
        message = {"jsonrpc": "2.0", "id": self.next_id(), "method": method, "params": params}
        with self._post(self.port, json.dumps(message).encode(), timeout) as reply:
            if not reply.getheader("Content-Type", "").startswith("text/event-stream"):
                answer: dict[str, Any] = json.loads(reply.read())
                return answer
            forwards = []
            try:
                for event in _sse_data(reply):
                    message = json.loads(event)
                    if "method" not in message:
                        return dict(message)  # the stream's last event: the call's own answer
                    exchange = Exchange(event)
                    self.traffic.add(exchange)
                    forwards.append(self._forwarders.submit(self._forward, exchange))
            finally:
                for forward in forwards:
                    forward.result(timeout=timeout)
        raise AssertionError(f"the SDK's stream ended without an answer; log:\n{self.sdk.log()}")

    def notify(self, method: str, params: object) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode()
        with self._post(self.port, body, 30) as reply:
            reply.read()
            assert reply.status == 202, reply.status

    def close(self) -> None:
        self._forwarders.shutdown(wait=False, cancel_futures=True)
        self._stdout.close()


def _sse_data(reply: http.client.HTTPResponse) -> Iterator[bytes]:
    """The `data` of each event of a text/event-stream, as bytes (one `data:` line each, as
    the SDK writes them)."""
    data: list[bytes] = []
    while line := reply.readline():
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif not line and data:
            yield b"\n".join(data)
            data = []
