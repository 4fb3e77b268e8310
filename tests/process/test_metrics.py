"""Prometheus metrics of a real server process, scraped over HTTP (issue 16, point 1).

A known set of calls (successes, errors, OVERLOADED refusals, a DATA_LOSS from a file
corrupted behind the server's back) and then /metrics, parsed with
prometheus_client's own parser: each counter moved by exactly the calls made.
Without --metrics-port the server listens on its gRPC port only.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import grpc
import psutil
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from tests.faults import HeldPut, flip_byte, held_admitted, status_of, wait_until
from tests.metrics_scrape import free_port, scrape, value
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, error_info, raw_stub, sha256_id

SERVICE = "blobstore.v1.BlobService"
ABSENT = "sha256:" + "0" * 64


def _calls(samples: dict, method: str, code: str) -> float:  # type: ignore[type-arg]
    return value(samples, "blobstore_rpc_calls_total", service=SERVICE, method=method, code=code)


async def test_counters_match_the_calls_made(start_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    server = start_server("--metrics-port", str(port), "--max-concurrent-rpcs", "2")
    assert f"metrics on http://127.0.0.1:{port}/metrics" in server.log()
    url = f"http://127.0.0.1:{port}/metrics"
    before = await asyncio.to_thread(scrape, url)
    assert _calls(before, "Put", "OK") == 0

    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        # Above the journal's size, so each blob has its own file to corrupt.
        blobs = [os.urandom(100_000 + i) for i in range(3)]
        puts = [pb.PutRequest(data=data) for data in [*blobs, blobs[0]]]
        replies = [await stub.Put(request, timeout=30) for request in puts]
        assert [r.created for r in replies] == [True, True, True, False]
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as absent:
                await stub.Get(pb.GetRequest(id=ABSENT), timeout=30)
            assert absent.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as bad_id:
            await stub.Get(pb.GetRequest(id="sha256:nothex"), timeout=30)
        assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        good = await stub.Get(pb.GetRequest(id=replies[1].id), timeout=30)
        assert good.data == blobs[1]

        stored_file = blob_path(server.data_dir, replies[2].id)
        flip_byte(stored_file, stored_file.stat().st_size - 1)  # content; header intact
        with pytest.raises(grpc.RpcError) as lost:
            await stub.Get(pb.GetRequest(id=replies[2].id), timeout=30)
        assert lost.value.code() == grpc.StatusCode.DATA_LOSS

        # Two calls held in progress fill --max-concurrent-rpcs 2: five more are refused.
        held = [HeldPut(stub, os.urandom(64 * 1024 + i)) for i in range(2)]
        await held_admitted(server.data_dir, 2)
        during = await asyncio.to_thread(scrape, url)
        assert value(during, "blobstore_admission_inflight_calls") == 2
        assert value(during, "blobstore_admission_inflight_bytes") > 0
        refused = await asyncio.gather(
            *(stub.Stat(pb.StatRequest(id=ABSENT), timeout=30) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, grpc.RpcError) for r in refused)
        assert {status_of(r)[:2] for r in refused if isinstance(r, grpc.RpcError)} == {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        }
        for call in held:
            await call.finish()

    after = await asyncio.to_thread(scrape, url)
    assert _calls(after, "Put", "OK") == 4
    assert _calls(after, "Get", "NOT_FOUND") == 2
    assert _calls(after, "Get", "INVALID_ARGUMENT") == 1
    assert _calls(after, "Get", "OK") == 1
    assert _calls(after, "Get", "DATA_LOSS") == 1
    assert _calls(after, "Stat", "RESOURCE_EXHAUSTED") == 5
    assert _calls(after, "PutStream", "OK") == 2
    refusals = value(after, "blobstore_admission_refusals_total", cap="max_concurrent_rpcs")
    assert refusals == 5
    assert value(after, "blobstore_storage_quarantines_total", backend="filesystem") == 1
    puts_by = {
        result: value(after, "blobstore_storage_puts_total", backend="filesystem", result=result)
        for result in ("created", "deduplicated")
    }
    assert puts_by == {"created": 3 + 2, "deduplicated": 1}
    # Bytes as the wire carried them: exactly the serialized requests and replies.
    received = value(after, "blobstore_rpc_received_bytes_total", service=SERVICE, method="Put")
    assert received == sum(len(request.SerializeToString()) for request in puts)
    sent = value(after, "blobstore_rpc_sent_bytes_total", service=SERVICE, method="Put")
    assert sent == sum(len(reply.SerializeToString()) for reply in replies)
    duration_count = value(
        after, "blobstore_rpc_duration_seconds_count", service=SERVICE, method="Get"
    )
    assert duration_count == 5
    assert value(after, "blobstore_admission_inflight_calls") == 0
    assert value(after, "blobstore_admission_inflight_bytes") == 0
    # Content bytes handed to the backend: every unary put (the duplicate too), and the
    # two streams' chunks as their commits published them.
    stored = value(after, "blobstore_storage_bytes_total", backend="filesystem", operation="put")
    assert stored == sum(len(request.data) for request in puts)
    committed = value(
        after, "blobstore_storage_bytes_total", backend="filesystem", operation="commit"
    )
    assert committed == 2 * 64 * 1024 + 1
    assert sha256_id(blobs[0]) == replies[0].id


def test_no_metrics_port_when_off(server: ServerProcess) -> None:
    listening = {
        conn.laddr.port
        for conn in psutil.Process(server.pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening == {server.port}
    assert "metrics on" not in server.log()


async def test_open_connections_are_counted(start_server: Callable[..., ServerProcess]) -> None:
    port = free_port()
    server = start_server("--metrics-port", str(port), "--max-connections", "40")
    url = f"http://127.0.0.1:{port}/metrics"
    before = await asyncio.to_thread(scrape, url)
    assert value(before, "blobstore_grpc_connections_open") == 0
    assert value(before, "blobstore_grpc_connections_max") == 40
    # Each channel its own subchannel pool: its own TCP connection, as separate clients have.
    own = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(server.target, options=own) for _ in range(3)]
    try:
        for channel in channels:
            await pb_grpc.BlobServiceStub(channel).Stat(pb.StatRequest(id=ABSENT), timeout=30)
        during = await asyncio.to_thread(scrape, url)
        assert value(during, "blobstore_grpc_connections_open") == 3
        await channels.pop().close(None)

        def two_open() -> bool:
            return value(scrape(url), "blobstore_grpc_connections_open") == 2

        await asyncio.to_thread(wait_until, two_open, 10.0, "the closed connection to go")
    finally:
        for channel in channels:
            await channel.close(None)


def test_request_ids_come_back_in_trailing_metadata(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The caller's id is returned (also with an error's details); without one, one is made."""
    server = start_server("--log-format", "json")
    with raw_stub(server.target) as stub:
        _, call = stub.Stat.with_call(
            pb.StatRequest(id=ABSENT), metadata=(("x-request-id", "caller-id-1"),), timeout=30
        )
        assert ("x-request-id", "caller-id-1") in call.trailing_metadata()
        _, call = stub.Stat.with_call(pb.StatRequest(id=ABSENT), timeout=30)
        made = dict(call.trailing_metadata())["x-request-id"]
        assert len(made) == 32 and int(made, 16) >= 0
        with pytest.raises(grpc.RpcError) as absent:
            stub.Get(pb.GetRequest(id=ABSENT), metadata=(("x-request-id", "caller-id-2"),))
        error = absent.value
        trailers = dict(cast(Sequence[tuple[str, str]], error.trailing_metadata()))
        assert trailers["x-request-id"] == "caller-id-2"
        assert error_info(error).reason == "BLOB_NOT_FOUND"  # the details are still there


@pytest.mark.parametrize("flags", [(), ("--metrics-address", "127.0.0.1:0")])
def test_no_request_ids_when_nothing_records_calls(
    start_server: Callable[..., ServerProcess], flags: tuple[str, ...]
) -> None:
    """Text logs, no access log: no id is made and a caller's is not echoed - without
    metrics (the observer is not installed, it would cost every call) and with them
    (they count calls, never by id)."""
    server = start_server(*flags)
    with raw_stub(server.target) as stub:
        _, call = stub.Stat.with_call(
            pb.StatRequest(id=ABSENT), metadata=(("x-request-id", "caller-id-3"),), timeout=30
        )
        assert "x-request-id" not in dict(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as absent:
            stub.Get(pb.GetRequest(id=ABSENT), metadata=(("x-request-id", "caller-id-4"),))
        trailers = dict(cast(Sequence[tuple[str, str]], absent.value.trailing_metadata()))
        assert "x-request-id" not in trailers
        assert error_info(absent.value).reason == "BLOB_NOT_FOUND"


def test_a_metrics_port_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(
            tmp_path / "data", tmp_path / "server.log", "--metrics-port", str(port)
        )
        with pytest.raises(RuntimeError, match="exited with 1"):
            server.start()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in server.log()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("small_store", ["files", "packs"])
async def test_store_gauges_count_what_is_stored(
    start_server: Callable[..., ServerProcess], tmp_path: Path, small_store: str
) -> None:
    """Blobs and bytes stored: counted once at start, then kept as puts and quarantines
    come; group-commit batches and the journal (or the packs); the file system."""
    data_dir = tmp_path / "data"
    store = ("--small-blob-store", small_store)
    first = start_server(*store, data_dir=data_dir)
    earlier = [os.urandom(100_000 + i) for i in range(3)]
    async with grpc.aio.insecure_channel(first.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        for data in earlier:
            await stub.Put(pb.PutRequest(data=data), timeout=30)
    assert first.stop() == 0

    port = free_port()
    server = start_server(*store, "--metrics-address", f"127.0.0.1:{port}", data_dir=data_dir)
    url = f"http://127.0.0.1:{port}/metrics"
    files = sorted(p for p in (data_dir / "blobs").glob("??/*"))
    on_disk = sum(p.stat().st_size for p in files)
    assert len(files) == 3
    wait_until(lambda: value(scrape(url), "blobstore_store_counted") == 1, 30, "the count")
    start = scrape(url)
    assert value(start, "blobstore_store_blobs") == 3
    assert value(start, "blobstore_store_bytes") == on_disk

    small = [os.urandom(1000 + i) for i in range(4)]  # through the group-commit journal
    large = os.urandom(200_000)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        replies = await asyncio.gather(
            *(stub.Put(pb.PutRequest(data=data), timeout=30) for data in small)
        )
        assert all(r.created for r in replies)
        assert (await stub.Put(pb.PutRequest(data=large), timeout=30)).created
        assert not (await stub.Put(pb.PutRequest(data=small[0]), timeout=30)).created
        # A stored copy corrupted behind the server's back: its read quarantines it.
        victim = blob_path(data_dir, sha256_id(earlier[0]))
        victim_size = victim.stat().st_size
        flip_byte(victim, victim_size - 1)
        with pytest.raises(grpc.RpcError) as lost:
            await stub.Get(pb.GetRequest(id=sha256_id(earlier[0])), timeout=30)
        assert lost.value.code() == grpc.StatusCode.DATA_LOSS

    after = scrape(url)
    files = sorted(p for p in (data_dir / "blobs").glob("??/*"))
    packs = sorted((data_dir / "packs").glob("*.pack"))
    packed = sum(p.stat().st_size for p in packs)
    if small_store == "files":
        assert value(after, "blobstore_store_blobs") == len(files) == 3 + 4 + 1 - 1
        assert value(after, "blobstore_store_bytes") == sum(p.stat().st_size for p in files)
    else:  # the small ones are records: their bytes are those of the blob file each holds
        assert len(files) == 3 - 1 + 1
        assert value(after, "blobstore_store_blobs") == 3 + 4 + 1 - 1
        records = packed - 4 * 40  # magic, digest and CRC of each record
        on_disk = sum(p.stat().st_size for p in files)
        assert value(after, "blobstore_store_bytes") == on_disk + records
        assert value(after, "blobstore_pack_segments") == len(packs) == 1
        assert value(after, "blobstore_pack_bytes") == packed
        assert value(after, "blobstore_pack_live_bytes") == packed
    assert value(after, "blobstore_store_quarantined_files_total") == 1
    # Every small put went through one batch or another: the batches hold exactly them.
    assert value(after, "blobstore_group_commit_batch_puts_sum") == 4
    batches = value(after, "blobstore_group_commit_batch_puts_count")
    assert 1 <= batches <= 4
    assert value(after, "blobstore_group_commit_sync_seconds_count") == batches
    assert value(after, "blobstore_group_commit_batch_bytes_sum") == sum(map(len, small))
    assert value(after, "blobstore_journal_segments") == len(
        list((data_dir / "journal").glob("*.log"))
    )
    assert (
        0
        < value(after, "blobstore_filesystem_free_bytes")
        <= value(after, "blobstore_filesystem_size_bytes")
    )


def test_a_bad_metrics_address_is_a_clear_start_error(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--metrics-address", "x")
    with pytest.raises(RuntimeError, match="exited with 1"):
        server.start()
    assert "--metrics-address 'x' is not HOST:PORT" in server.log()
    assert "Traceback" not in server.log()
