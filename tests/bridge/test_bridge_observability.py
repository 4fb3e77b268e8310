"""The bridge's metrics and request ids, with real server and bridge processes (issue 16).

/metrics on the bridge's HTTP port counts JSON-RPC calls by method and outcome and HTTP
requests by route and status; a request id sent to the bridge comes back in its reply
and appears on both the bridge's and the server's JSON log lines of that call.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.faults import wait_until
from tests.metrics_scrape import scrape, value
from tests.processes import ServerProcess


class _Observed:
    def __init__(self, server: ServerProcess, bridge: BridgeProcess) -> None:
        self.server = server
        self.bridge = bridge
        self.http = HttpRpc(bridge.url)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Observed]:
    directory = tmp_path_factory.mktemp("observed")
    json_logs = ("--log-format", "json", "--access-log")
    server = ServerProcess(directory / "data", directory / "server.log", *json_logs)
    bridge: BridgeProcess | None = None
    try:
        server.start()
        bridge = BridgeProcess(
            server.target, directory / "bridge.log", "--metrics", *json_logs
        ).start()
        stack = _Observed(server, bridge)
        try:
            yield stack
        finally:
            stack.http.close()
    finally:
        if bridge is not None:
            bridge.kill()
        server.kill()


def _json_lines(path: Path) -> list[dict[str, object]]:
    """Every line of a JSON log, parsed (a line that is not one JSON object fails the test)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def _post(http: HttpRpc, message: object, request_id: str | None = None) -> tuple[object, str]:
    headers = {"Content-Type": "application/json"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    reply = http.request("POST", "/", json.dumps(message).encode(), headers)
    assert reply.status == 200, reply.body
    return reply.json(), reply.headers["X-Request-Id"]


def test_a_request_id_joins_the_bridge_and_server_logs(observed: _Observed) -> None:
    rid = "req-observe-42"
    put = {"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": {"a": 1}}}
    answer, returned = _post(observed.http, put, rid)
    assert returned == rid and "result" in answer  # type: ignore[operator]

    def logged(path: Path) -> list[dict[str, object]]:
        return [entry for entry in _json_lines(path) if entry.get("request_id") == rid]

    wait_until(lambda: bool(logged(observed.server.log_path)), 10, "the server's access line")
    wait_until(lambda: bool(logged(observed.bridge.log_path)), 10, "the bridge's access line")
    (server_line,) = logged(observed.server.log_path)
    assert server_line["method"] == "/blobstore.v1.BlobService/Put"
    assert server_line["code"] == "OK"
    assert {"time", "level", "logger", "message"} <= server_line.keys()
    (bridge_line,) = logged(observed.bridge.log_path)
    assert bridge_line["route"] == "/" and bridge_line["status"] == 200

    # Without an id the bridge makes one, returns it, and the server logs that one too.
    _, generated = _post(observed.http, put)
    assert len(generated) == 32 and generated != rid
    wait_until(
        lambda: any(
            e.get("request_id") == generated for e in _json_lines(observed.server.log_path)
        ),
        10,
        "the generated id on the server",
    )


def test_bridge_metrics_count_calls_by_method_and_outcome(observed: _Observed) -> None:
    url = f"{observed.bridge.url}metrics"
    before = scrape(url)
    put = {"data": base64.b64encode(b"observed").decode(), "blob_type": "binary"}
    blob_id = observed.http.result("blobs/put", put)["blob_id"]
    for _ in range(2):
        observed.http.result("blobs/get", {"blob_id": blob_id})
    absent = observed.http.error("blobs/get", {"blob_id": "0" * 64})
    assert absent["code"] == -32008
    after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    calls = "blobstore_bridge_jsonrpc_calls_total"
    assert moved(calls, method="blobs/put", outcome="ok") == 1
    assert moved(calls, method="blobs/get", outcome="ok") == 2
    assert moved(calls, method="blobs/get", outcome="-32008") == 1
    assert moved("blobstore_bridge_http_requests_total", route="/", status="200") == 4
    upstream = "blobstore_bridge_upstream_duration_seconds_count"
    assert moved(upstream, method="Get", code="OK") == 2
    assert moved(upstream, method="Get", code="NOT_FOUND") == 1


def test_streamed_rest_replies_return_the_request_id(observed: _Observed) -> None:
    """A REST GET streams its body: the id still goes out with its headers."""
    content = bytes(range(256)) * 400
    stored = observed.http.request(
        "POST", "/api/v1/blobs", content, {"Content-Type": "application/octet-stream"}
    )
    assert stored.status == 200, stored.body
    blob_id = stored.json()["blobId"]
    headers = {"Accept": "application/octet-stream", "X-Request-Id": "rest-get-7"}
    fetched = observed.http.request("GET", f"/api/v1/blobs/{blob_id}", None, headers)
    assert fetched.status == 200 and fetched.body == content
    assert fetched.headers["X-Request-Id"] == "rest-get-7"
    route = "/api/v1/blobs/{blob_id}"

    def counted() -> bool:
        scraped = scrape(f"{observed.bridge.url}metrics")
        return (
            value(scraped, "blobstore_bridge_http_requests_total", route=route, status="200") >= 1
        )

    # A streamed reply is counted when its handler returns, which can be just after the
    # client has read the last byte: the count comes, but not always before the scrape.
    wait_until(counted, 10, "the streamed GET counted")


def test_batch_sizes_and_open_connections(observed: _Observed) -> None:
    url = f"{observed.bridge.url}metrics"
    before = scrape(url)
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "blobs/get", "params": {"blob_id": "0" * 64}}
        for i in range(3)
    ]
    answers, _ = _post(observed.http, batch)
    assert len(answers) == 3  # type: ignore[arg-type]
    after = scrape(url)
    size = "blobstore_bridge_jsonrpc_batch_size"
    assert value(after, f"{size}_count") - value(before, f"{size}_count") == 1
    assert value(after, f"{size}_sum") - value(before, f"{size}_sum") == 3
    # This test's keep-alive connection at least (the scrapes' own come and go).
    assert value(after, "blobstore_bridge_http_connections") >= 1


def test_access_log_sample_and_level(observed: _Observed, tmp_path: Path) -> None:
    """Sample 0: routine requests are not logged; an error always is, at the level set."""
    args = ("--log-format", "json", "--access-log", "--access-log-sample", "0")
    bridge = BridgeProcess(
        observed.server.target, tmp_path / "bridge.log", *args, "--access-log-level", "warning"
    ).start()
    http = HttpRpc(bridge.url)
    try:
        for _ in range(3):
            http.result("blobs/put", {"data": {"sampled": True}})
        refused = http.request("POST", "/", b"{}", {"Content-Type": "text/plain"})
        assert refused.status == 415
        http.result("blobs/put", {"data": {"after": True}})

        def access() -> list[dict[str, object]]:
            lines = _json_lines(bridge.log_path)
            return [e for e in lines if e.get("logger") == "jsonrpc_bridge.access"]

        wait_until(lambda: bool(access()), 10, "the access line of the refused request")
        (line,) = access()
        assert line["status"] == 415 and line["level"] == "WARNING"
    finally:
        http.close()
        bridge.kill()
