"""The bridge over stdio, as a component server spawns it: newline-delimited JSON-RPC.

Each test spawns its own `blobstore-bridge --stdio` (stdin is per process);
the gRPC server is shared by the module. A "black hole" target - a socket
that accepts connections and never answers - makes calls that can only end
by their deadline, which shows responses are not written in lock-step.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator

import pytest

from blobstore.client import BlobClient
from tests.bridge_processes import BridgeFactory
from tests.bridge_seed import (
    GET_REQUEST,
    GET_RESPONSE,
    GET_RESPONSE_SCHEMA_NAMES,
    PUT_REQUEST,
    PUT_RESPONSE,
    one_line,
    with_real_id,
)
from tests.processes import ServerProcess


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A listening socket nobody accepts on: TCP connects, gRPC never gets an answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_seed_examples_over_stdio(grpc_server: ServerProcess, start_bridge: BridgeFactory) -> None:
    bridge = start_bridge(grpc_server.target, stdio=True)
    bridge.send(one_line(PUT_REQUEST))
    assert bridge.read_message() == json.loads(with_real_id(PUT_RESPONSE))
    bridge.send(one_line(with_real_id(GET_REQUEST)))
    assert bridge.read_message() == json.loads(GET_RESPONSE_SCHEMA_NAMES)
    # The page's names, as its examples show them, when asked for.
    page = start_bridge(grpc_server.target, "--blob-type-names", "page", stdio=True)
    page.send(one_line(with_real_id(GET_REQUEST)))
    assert page.read_message() == json.loads(GET_RESPONSE)
    for done in (bridge, page):
        done.close_stdin()
        assert done.read_line() == b""
        assert done.wait() == 0


def test_stepflow_sdk_shape_and_binary_over_stdio(
    grpc_server: ServerProcess, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(grpc_server.target, stdio=True)
    content = bytes(range(256)) * 64
    encoded = base64.b64encode(content).decode()
    bridge.send(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "blobs/put",
            "params": {"data": encoded, "blob_type": "binary"},
        }
    )
    blob_id = bridge.read_message()["result"]["blob_id"]
    assert blob_id == "sha256:" + hashlib.sha256(content).hexdigest()
    bridge.send(
        {"jsonrpc": "2.0", "id": 2, "method": "blobs/get", "params": {"blob_id": blob_id[7:]}}
    )
    assert bridge.read_message()["result"] == {"data": encoded, "blob_type": "binary"}
    bridge.send(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "blobs/put",
            "params": {"data": {"k": "v"}, "blob_type": "data"},
        }
    )
    json_blob = bridge.read_message()["result"]["blob_id"]
    with BlobClient(grpc_server.target, timeout=30) as client:
        assert client.get(json_blob).data == b'{"k":"v"}'


def test_responses_are_written_as_they_complete(
    black_hole: str, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(black_hole, "--deadline-seconds", "3", stdio=True)
    bridge.send({"jsonrpc": "2.0", "id": "slow", "method": "blobs/get", "params": ["ab" * 32]})
    bridge.send(b"not json")
    bridge.send({"jsonrpc": "2.0", "id": "fast", "method": "blobs/get", "params": ["bad id"]})
    # End of input now: what is in flight must still be answered before the bridge exits.
    bridge.close_stdin()
    first, second = bridge.read_message(), bridge.read_message()
    assert {first["id"], second["id"]} == {None, "fast"}
    assert {first["error"]["code"], second["error"]["code"]} == {-32700, -32602}
    slow = bridge.read_message()
    assert slow["id"] == "slow"
    # The call to the unresponsive service ended at its deadline, as unavailable.
    assert slow["error"]["code"] == -32001
    assert slow["error"]["data"]["reason"] == "UNAVAILABLE"
    assert bridge.read_line() == b""
    assert bridge.wait() == 0


def test_end_of_input_finishes_in_flight_calls(
    grpc_server: ServerProcess, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(grpc_server.target, stdio=True)
    for i in range(50):
        bridge.send({"jsonrpc": "2.0", "id": i, "method": "blobs/put", "params": [f"eof-{i}"]})
    # The last line has no newline: it is still a message.
    assert bridge.proc is not None and bridge.proc.stdin is not None
    bridge.proc.stdin.write(
        b'{"jsonrpc": "2.0", "id": "last", "method": "blobs/put", "params": [0]}'
    )
    bridge.close_stdin()
    ids = []
    while line := bridge.read_line():
        ids.append(json.loads(line)["id"])
    assert sorted(ids, key=str) == sorted([*range(50), "last"], key=str)
    assert bridge.wait() == 0


def test_line_over_the_limit_is_answered_and_skipped(
    grpc_server: ServerProcess, start_bridge: BridgeFactory
) -> None:
    limit = 2048
    bridge = start_bridge(grpc_server.target, "--max-request-bytes", str(limit), stdio=True)
    assert bridge.proc is not None and bridge.proc.stdin is not None
    huge = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": ["' + b"x" * 50_000 + b'"]}'
    )
    # Sent in pieces, as a pipe delivers it.
    for start_at in range(0, len(huge), 7000):
        bridge.proc.stdin.write(huge[start_at : start_at + 7000])
        bridge.proc.stdin.flush()
    bridge.send(b"")
    bridge.send({"jsonrpc": "2.0", "id": 2, "method": "blobs/put", "params": ["small"]})
    too_large = bridge.read_message()
    assert too_large["id"] is None
    assert too_large["error"]["code"] == -32006
    assert too_large["error"]["data"]["limit_bytes"] == limit
    assert bridge.read_message()["id"] == 2
    # A last, unterminated line over the limit at end of input.
    bridge.proc.stdin.write(b"[" + b" " * 5000)
    bridge.close_stdin()
    assert bridge.read_message()["error"]["code"] == -32006
    assert bridge.read_line() == b""
    assert bridge.wait() == 0


def test_sigterm_stops_a_stdio_bridge(
    grpc_server: ServerProcess, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(grpc_server.target, stdio=True)
    bridge.send({"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": [1]})
    assert "result" in bridge.read_message()
    assert bridge.stop() == 0
