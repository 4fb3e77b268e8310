"""JSON amplification: texts of millions of tiny values are refused before they are parsed.

30 MiB of `[[],[],...]` passes every size limit but is 10 million values, about 1 GiB
once parsed and seconds of one C call holding the GIL. The server and the bridge count
the values first (--max-json-values) and refuse such a text without parsing it; texts
of many values under the cap are parsed in a worker process, away from the event loop.
Real server and bridge processes; memory is measured on the server process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import struct_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.canonical_json import canonicalize_value
from blobstore.client import CHANNEL_OPTIONS, BlobClient, decode_json
from blobstore.proto_names import SERVICE_NAME
from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.faults import status_of
from tests.processes import ServerProcess
from tests.rpc_helpers import MiB


def _lists(count: int) -> bytes:
    return b"[" + b"[]," * (count - 1) + b"[]]"


def test_a_text_of_millions_of_values_is_refused_unparsed(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server("--max-json-values", "1000000")
    process = psutil.Process(server.pid)
    amplifying = _lists(10 * MiB)  # 30 MiB, 10 million arrays
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        before = process.memory_info().rss
        with pytest.raises(grpc.RpcError) as refused:
            stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=amplifying), timeout=120)
        code, reason, message = status_of(refused.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BLOB_TOO_LARGE")
        assert "--max-json-values" in message
        # Receiving 30 MiB costs a few copies of it (about 150 MiB of RSS, measured);
        # parsing it would cost about 1 GiB.
        assert process.memory_info().rss - before < 500 * MiB

    # Many values under the cap: parsed in the worker process, stored, read back.
    with BlobClient(server.target, timeout=120) as client:
        stored = client.put_json_text(_lists(300_000))
        assert decode_json(client.get(stored.info.blob_id).data) == [[]] * 300_000
    assert process.children(), "the JSON worker process was not used"

    bridge = BridgeProcess(
        server.target, tmp_path / "bridge.log", "--max-json-values", "1000000"
    ).start()
    try:
        rpc = HttpRpc(bridge.url)
        body = b'{"jsonrpc":"2.0","id":1,"method":"blobs/put","params":{"data":'
        error = rpc.call(body + amplifying + b"}}")["error"]
        assert error["code"] == -32006 and error["data"]["limit_values"] == 1_000_000, error
        # Under the cap: parsed by the bridge's worker process, stored with the same id.
        result = rpc.call(body + _lists(300_000) + b"}}")["result"]
        assert result["blob_id"] == stored.info.blob_id
        nested = {"jsonrpc": "2.0", "id": 2, "method": "blobs/put", "params": [[{"a": 1}] * 60_000]}
        assert "result" in rpc.call(json.dumps(nested).encode())
        rpc.close()
        assert psutil.Process(bridge.pid).children(), "the bridge's worker was not used"
    finally:
        bridge.kill()
    assert "Traceback" not in bridge.log()
    assert "Traceback" not in server.log()


def test_the_json_workers_end_when_their_server_and_bridge_are_killed(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """kill -9 of the server and of the bridge: their JSON worker processes end too.

    A worker waits on a pipe whose write end it holds itself, so it never noticed its
    parent's death and lived on, holding whatever it had parsed; it now asks the kernel
    for SIGKILL when its parent dies (and polls its parent where it cannot).
    """
    server = start_server()
    with BlobClient(server.target, timeout=120) as client:
        client.put_json_text(_lists(300_000))  # parsed in the server's worker
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log").start()
    try:
        rpc = HttpRpc(bridge.url)
        body = b'{"jsonrpc":"2.0","id":1,"method":"blobs/put","params":{"data":'
        assert "result" in rpc.call(body + _lists(300_001) + b"}}")  # the bridge's worker
        rpc.close()
        workers = psutil.Process(server.pid).children() + psutil.Process(bridge.pid).children()
        assert len(workers) >= 2, workers
    finally:
        bridge.kill()
        server.kill()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]


@pytest.mark.exclusive  # bounds how long a Stat may wait: alone, not beside another test
async def test_a_large_json_value_put_does_not_stall_other_calls(
    start_server: Callable[..., ServerProcess],
) -> None:
    """A Put of a protobuf Value of a million numbers, beside a loop of Stat calls.

    Converting such a Value to Python objects and canonical JSON held the event loop
    (and so every other call) for seconds; it is now done in the worker process.
    The bound is generous (1 s, the target is ~0.1 s) for a busy machine.
    """
    server = start_server()
    count = 1_000_000
    numbers = struct_pb2.ListValue()
    for n in range(count):
        numbers.values.add().number_value = n
    # Serialized here, so that the client's event loop is not the one that stalls.
    request = pb.PutRequest(json=struct_pb2.Value(list_value=numbers)).SerializeToString()
    canonical = canonicalize_value([float(n) for n in range(count)])
    expected = "sha256:" + hashlib.sha256(canonical).hexdigest()
    own_pool = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    async with (
        grpc.aio.insecure_channel(server.target, options=own_pool) as put_channel,
        grpc.aio.insecure_channel(server.target, options=own_pool) as probe_channel,
    ):
        put = put_channel.unary_unary(
            f"/{SERVICE_NAME}/Put",
            request_serializer=None,  # the request is bytes already
            response_deserializer=pb.PutResponse.FromString,
        )
        probe = pb_grpc.BlobServiceStub(probe_channel)
        await probe.Stat(pb.StatRequest(id=expected), timeout=30)  # connected
        call = asyncio.ensure_future(put(request, timeout=300))
        slowest, probes = 0.0, 0
        while not call.done():
            started = time.perf_counter()
            await probe.Stat(pb.StatRequest(id=expected), timeout=30)
            slowest = max(slowest, time.perf_counter() - started)
            probes += 1
            await asyncio.sleep(0.01)
        reply = await call
    assert reply.id == expected
    assert probes >= 5, "the put was too quick to tell"
    assert slowest < 1.0, f"a Stat waited {slowest:.2f} s beside the put"


def test_a_json_value_of_too_many_values_is_refused(
    start_server: Callable[..., ServerProcess],
) -> None:
    """--max-json-values holds for protobuf Values too, counted before any conversion."""
    server = start_server("--max-json-values", "100000")
    numbers = struct_pb2.ListValue()
    for n in range(150_000):
        numbers.values.add().number_value = n
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Put(pb.PutRequest(json=struct_pb2.Value(list_value=numbers)), timeout=120)
        code, reason, message = status_of(refused.value)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BLOB_TOO_LARGE")
        assert "--max-json-values" in message
        del numbers.values[50_000:]  # under the cap: stored
        stub.Put(pb.PutRequest(json=struct_pb2.Value(list_value=numbers)), timeout=120)
    assert "Traceback" not in server.log()
