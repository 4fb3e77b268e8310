"""The bridge under the service's faults: overload is reported by its deadline, outages are retried.

A real server with a cap of one call sits behind a real HTTP bridge: with the one call
held open, a blobs/put through the bridge gets the documented -32005 Overloaded error
once the bridge's deadline has passed (it retries the refusals until then). With the
server stopped and started again while a request waits, the bridge's retries towards the
service turn the outage into a late success.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import CHANNEL_OPTIONS
from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.faults import HeldPut, held_admitted
from tests.processes import ServerProcess

OVERLOADED = -32005


async def test_overload_behind_the_bridge_is_a_prompt_documented_error(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server("--max-concurrent-rpcs", "1")
    # The bridge retries OVERLOADED refusals until its deadline and only then answers
    # -32005: a 3 s deadline instead of the default 30 s (the same retries, then the error).
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log", "--deadline-seconds", "3")
    bridge.start()
    rpc = HttpRpc(bridge.url)
    try:
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            held = HeldPut(pb_grpc.BlobServiceStub(channel), b"holds the only slot" * 100)
            await held_admitted(server.data_dir, 1)
            for _ in range(500):
                # In a thread: the held call needs this event loop to get going.
                response = await asyncio.to_thread(
                    rpc.rpc, "blobs/put", {"data": {"refused": True}}
                )
                if "error" in response:
                    break
                # Not admitted yet: the bridge's put succeeded; try again.
            error = response["error"]
            assert error["code"] == OVERLOADED, error
            assert error["data"]["retryable"] is True
            assert "--max-concurrent-rpcs" in error["message"] + str(error["data"])
            assert not held.call.done()  # refused while the admitted call still runs
            await held.finish()
        assert "result" in rpc.rpc("blobs/put", {"data": {"refused": False}})
    finally:
        rpc.close()
        bridge.kill()


def test_bridge_retries_while_the_service_restarts(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    # The default 6 attempts wait about 3-6 s in all (jittered): a restart on a busy machine
    # (a new Python process importing gRPC) took longer than that once. 20 attempts let the
    # call wait up to the bridge's 30 s deadline, which still bounds it.
    bridge = BridgeProcess(server.target, tmp_path / "bridge.log", "--retry-attempts", "20")
    bridge.start()
    rpc = HttpRpc(bridge.url)
    try:
        assert "result" in rpc.rpc("blobs/put", {"data": "before"})
        server.stop()
        restarted: list[ServerProcess] = []

        def restart() -> None:
            restarted.append(start_server(data_dir=server.data_dir, port=server.port))

        # Restart once the bridge has had to retry: its log says so.
        def when_retrying() -> None:
            for _ in range(3000):
                if "retrying" in bridge.log():
                    break
                threading.Event().wait(0.01)
            restart()

        thread = threading.Thread(target=when_retrying, daemon=True)
        thread.start()
        response = rpc.rpc("blobs/put", {"data": "during the restart"})
        thread.join(30)
        assert "result" in response, response
        assert restarted
        got = rpc.rpc("blobs/get", {"blob_id": response["result"]["blob_id"]})
        assert got["result"]["data"] == "during the restart"
    finally:
        rpc.close()
        bridge.kill()
