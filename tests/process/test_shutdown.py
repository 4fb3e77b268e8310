"""SIGTERM under load: acknowledged puts survive, clients get success or UNAVAILABLE.

Many clients put and get while the server is told to stop. A put held open across
the signal and finished within the grace period must still succeed and be durable;
one still open when the grace period ends is cut off with UNAVAILABLE and leaves no
temp file. After a restart every acknowledged put reads back intact.

The clients use grpc's blocking API: its asyncio client can report a client stream
that the server ended early as INTERNAL "Internal error from Core" instead of the
status the server sent (grpc/grpc#36066), which would hide what this test checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import CHANNEL_OPTIONS, BlobClient
from blobstore.retry import RetryPolicy
from tests.faults import HeldPutSync, check_blob_file, status_of, stored_files, wait_until
from tests.processes import ServerProcess
from tests.rpc_helpers import temp_files

if TYPE_CHECKING:
    from blobstore.api.blobstore.v1.blobstore_pb2_grpc import BlobServiceStub

GRACE = 3.0


def _chunks(data: bytes) -> Iterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, total_size=len(data))
    for start in range(0, len(data), 256 * 1024):
        yield pb.PutStreamRequest(chunk=data[start : start + 256 * 1024])


class Workload:
    """Clients that put and get until the server is gone; they record every outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acknowledged: dict[str, bytes] = {}
        self.ok = 0
        self.failures: list[tuple[grpc.StatusCode, str | None, str]] = []

    def client(self, stub: BlobServiceStub, seed: int) -> None:
        rng = random.Random(seed)
        while True:
            data = rng.randbytes(rng.choice([100, 10_000, 300_000, 2_000_000]))
            try:
                if len(data) > 1_000_000:
                    reply = stub.PutStream(_chunks(data), timeout=30)
                else:
                    reply = stub.Put(pb.PutRequest(data=data), timeout=30)
                assert reply.id == "sha256:" + hashlib.sha256(data).hexdigest()
                with self._lock:
                    self.acknowledged[reply.id] = data
                    known = rng.choice(list(self.acknowledged))
                if rng.random() < 0.5:
                    got = stub.Get(pb.GetRequest(id=known), timeout=30)
                    assert got.data == self.acknowledged[known]
                with self._lock:
                    self.ok += 1
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(status_of(exc))
                return


def test_sigterm_under_load_loses_no_acknowledged_put(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--grace-seconds", str(GRACE))
    workload = Workload()
    channels = [grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) for _ in range(4)]
    stubs = [pb_grpc.BlobServiceStub(c) for c in channels]
    try:
        finishes = HeldPutSync(stubs[0], os.urandom(500_000))
        cut_off = HeldPutSync(stubs[1], os.urandom(500_001))
        clients = [
            threading.Thread(target=workload.client, args=(stubs[i % 4], i), daemon=True)
            for i in range(16)
        ]
        for thread in clients:
            thread.start()
        wait_until(lambda: workload.ok >= 60, 60, "60 operations before the signal")
        server.signal(signal.SIGTERM)
        # In flight when the signal came: this one finishes within the grace period...
        time.sleep(GRACE / 3)
        finished = finishes.finish()
        for thread in clients:
            thread.join(60)
        # ...this one is still waiting when it ends.
        try:
            cut_off.future.result(GRACE * 5)
            raise AssertionError("a call open past the grace period was not cut off")
        except grpc.RpcError as exc:
            workload.failures.append(status_of(exc))
        exit_code = server.wait(30)
    finally:
        for channel in channels:
            channel.close()

    assert exit_code == 0, server.log()
    codes = Counter(code for code, _, _ in workload.failures)
    # Refused while draining, cut off at the end of the grace period, or refused at connect.
    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, workload.failures
    assert any("did not finish within the grace period" in m for _, _, m in workload.failures)
    assert finished.id == "sha256:" + hashlib.sha256(finishes.data).hexdigest()
    workload.acknowledged[finished.id] = finishes.data
    assert temp_files(server.data_dir) == []
    assert "Traceback" not in server.log()

    restarted = start_server(data_dir=server.data_dir)
    with BlobClient(restarted.target, timeout=30, retry=RetryPolicy.off()) as client:
        for blob_id, data in workload.acknowledged.items():
            assert client.get(blob_id).data == data
    for path in stored_files(server.data_dir):
        check_blob_file(path)


def test_streams_refused_while_draining_end_without_a_traceback(
    start_server: Callable[..., ServerProcess],
) -> None:
    """PutStreams opened during the grace period that stop half way, then the stop.

    Refused while the server drains, each is read to its end before its refusal (see
    guard._drain) - but these never end, so gRPC cancels them when it stops, and its
    stop() could return before their tasks had ended: the loop then closed on them and
    grpc logged a CancelledError traceback for each (_schedule_rpc_coro). The server
    now lets such tasks end before its loop closes.
    """
    server = start_server("--grace-seconds", "2")
    channels = [grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) for _ in range(4)]
    stubs = [pb_grpc.BlobServiceStub(c) for c in channels]
    try:
        held = HeldPutSync(stubs[0], os.urandom(200_000))  # keeps the grace period going
        wait_until(lambda: len(temp_files(server.data_dir)) == 1, 30, "the held put")
        server.signal(signal.SIGTERM)
        wait_until(lambda: "stopping" in server.log(), 30, "the server to start stopping")
        stalled = [HeldPutSync(stubs[n % 4], os.urandom(100_000 + n)) for n in range(40)]
        exit_code = server.wait(60)
        for call in [held, *stalled]:
            with contextlib.suppress(grpc.RpcError):
                call.future.result(30)
            call._release.set()
    finally:
        for channel in channels:
            channel.close()
    assert exit_code == 0, server.log()
    assert "Traceback" not in server.log()
    assert "still running at the stop" not in server.log()
    assert temp_files(server.data_dir) == []
