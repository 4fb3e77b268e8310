"""The gRPC service goes away under a running bridge and comes back: the bridge rides it out.

While the service is down the bridge answers -32001 (and /healthz says 503)
instead of hanging or dying; once the service is back on its address, calls
succeed again without restarting the bridge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.bridge_seed import json_id
from tests.faults import wait_until
from tests.processes import ServerProcess


@pytest.fixture
def bridge_for(tmp_path: Path) -> Iterator[Callable[[str], BridgeProcess]]:
    started: list[BridgeProcess] = []

    def start(target: str) -> BridgeProcess:
        # A long deadline: an answer while the service is down must not come from it.
        bridge = BridgeProcess(target, tmp_path / "bridge.log", "--deadline-seconds", "120")
        started.append(bridge)
        return bridge.start()

    yield start
    for bridge in started:
        bridge.kill()


def put(rpc: HttpRpc, value: object) -> Any:
    return rpc.rpc("blobs/put", {"data": value, "blob_type": "Json"})


def test_service_killed_and_restarted_under_the_bridge(
    start_server: Callable[..., ServerProcess],
    bridge_for: Callable[[str], BridgeProcess],
) -> None:
    server = start_server()
    bridge = bridge_for(server.target)
    rpc = HttpRpc(bridge.url, timeout=60)
    try:
        before = {"stored": "before the restart"}
        assert put(rpc, before)["result"]["blob_id"] == json_id(before)

        server.kill()  # the abrupt way: no GOAWAY, the connection just drops
        during = {"stored": "while the service is down"}
        response = put(rpc, during)
        assert response["error"]["code"] == -32001, response
        assert response["error"]["message"] == "Blob service unavailable"
        assert response["error"]["data"]["reason"] == "UNAVAILABLE"
        assert response["error"]["data"]["retryable"] is True
        health = rpc.request("GET", "/healthz")
        assert health.status == 503 and health.json()["serving"] is False
        assert bridge.alive()

        start_server(port=server.port)  # same address, same data folder
        deadline = time.monotonic() + 60
        while True:
            response = put(rpc, during)
            if "result" in response or time.monotonic() > deadline:
                break
            assert response["error"]["code"] == -32001, response
            time.sleep(0.2)
        assert response.get("result") == {"blob_id": json_id(during)}, response
        got = rpc.rpc("blobs/get", {"blob_id": json_id(before)})
        assert got["result"] == {"data": before, "blob_type": "data"}
        assert rpc.request("GET", "/healthz").status == 200
    finally:
        rpc.close()


def test_bridge_retries_until_the_service_comes_back(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    """A call made while the service is down succeeds once it returns within the retries."""
    first = start_server()
    port = first.port
    first.stop()
    bridge = BridgeProcess(first.target, tmp_path / "retrying.log", "--retry-attempts", "20")
    no_retry = BridgeProcess(first.target, tmp_path / "once.log", "--retry-attempts", "1")
    rpc = HttpRpc(bridge.start().url, timeout=120)
    once = HttpRpc(no_retry.start().url, timeout=120)
    try:
        value = {"stored": "by a retried call"}
        failed = put(once, value)
        assert failed["error"]["code"] == -32001, failed

        pending: dict[str, Any] = {}
        caller = threading.Thread(target=lambda: pending.update(put(rpc, value)))
        caller.start()
        # The call is now retrying against a closed port: the bridge's log says so.
        wait_until(lambda: "retrying" in bridge.log(), 30, "the bridge retrying")
        assert caller.is_alive(), pending
        start_server(port=port)
        caller.join(120)
        assert pending.get("result") == {"blob_id": json_id(value)}, pending
    finally:
        rpc.close()
        once.close()
        bridge.kill()
        no_retry.kill()
