"""The violent tests: concurrent writers, kill -9 mid-storm, corrupt files, two servers.

Each test checks what a user relies on: an acknowledged put survives, no
reader ever gets a partial or corrupt blob, and the data folder holds only
complete blobs that verify against their names.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.errors import BlobNotFound, BlobStoreError, DataLoss
from blobstore.ids import parse_blob_id
from blobstore.model import BlobType
from blobstore.retry import RetryPolicy
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.filesystem.blob_file import HEADER_SIZE
from tests.faults import flip_byte
from tests.processes import ServerProcess
from tests.rpc_helpers import (
    MiB,
    blob_file_problem,
    blob_files,
    blob_path,
    error_info,
    raw_stub,
    rpc_failure,
    serve_for_module,
    sha256_id,
    temp_files,
    wait_until,
)
from tests.storm import ack_lines, kill_mid_storm

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that break blobs of their own; the storm gets fresh ones."""
    yield from serve_for_module(tmp_path_factory)


def quarantined(data_dir: Path, blob_id: str = "") -> list[Path]:
    """The quarantined copies (of one blob, if `blob_id` is given)."""
    prefix = blob_id.removeprefix("sha256:")
    return sorted(p for p in (data_dir / "quarantine").iterdir() if p.name.startswith(prefix))


def stream_requests(data: bytes, chunk: int = 256 * 1024) -> Iterator[pb.PutStreamRequest]:
    yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, total_size=len(data))
    for start in range(0, len(data), chunk):
        yield pb.PutStreamRequest(chunk=data[start : start + chunk], offset=start)


# -- concurrent writers ------------------------------------------------------------------


def _put_concurrently(target: str, data: bytes, writers: int) -> list[object]:
    """Puts `data` from `writers` threads at once, half unary, half streamed."""
    barrier = threading.Barrier(writers)
    results: list[object] = [RuntimeError("not run")] * writers

    def put(index: int) -> None:
        try:
            with raw_stub(target) as stub:
                stub.Stat(pb.StatRequest(id=sha256_id(b"warm up the channel")))
                barrier.wait(timeout=30)
                if index % 2:
                    results[index] = stub.Put(pb.PutRequest(data=data), timeout=60)
                else:
                    results[index] = stub.PutStream(stream_requests(data), timeout=60)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=put, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_puts_of_one_blob_leave_one_file(server: ServerProcess) -> None:
    stored_before = len(blob_files(server.data_dir))
    contents = [os.urandom(3 * MiB) for _ in range(3)]
    for data in contents:
        results = _put_concurrently(server.target, data, writers=16)
        replies = [r for r in results if isinstance(r, pb.PutResponse)]
        assert len(replies) == len(results), [r for r in results if r not in replies]
        assert {r.id for r in replies} == {sha256_id(data)}
        assert sum(r.created for r in replies) == 1
        assert {(r.size, r.blob_type) for r in replies} == {(len(data), pb.BLOB_TYPE_BINARY)}

    digests = {p.name for p in blob_files(server.data_dir)}
    assert {sha256_id(d).removeprefix("sha256:") for d in contents} <= digests
    assert len(digests) == stored_before + 3
    assert [blob_file_problem(p) for p in blob_files(server.data_dir)] == [None] * len(digests)
    assert wait_until(lambda: temp_files(server.data_dir) == [])


def test_readers_never_see_a_partial_blob(server: ServerProcess) -> None:
    """While a large blob is streamed in slowly, readers get NOT_FOUND or all of it."""
    data = os.urandom(12 * MiB)
    blob_id = sha256_id(data)
    seen: list[str] = []
    done = threading.Event()

    def slow_requests() -> Iterator[pb.PutStreamRequest]:
        for request in stream_requests(data, chunk=MiB):
            time.sleep(0.02)
            yield request

    def read() -> None:
        with raw_stub(server.target) as stub:
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    got = b"".join(r.chunk for r in stub.GetStream(pb.GetStreamRequest(id=blob_id)))
                except grpc.RpcError as exc:
                    seen.append(exc.code().name)
                    continue
                seen.append("complete" if got == data else f"partial {len(got)}")
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    with raw_stub(server.target) as stub:
        assert stub.PutStream(slow_requests(), timeout=60).id == blob_id
    for reader in readers:
        reader.join(timeout=60)
    done.set()
    assert set(seen) <= {"NOT_FOUND", "complete"}, set(seen)
    assert seen.count("complete") == 3


# -- kill -9 during a put storm ----------------------------------------------------------

_STORM_SIZES = [0, 17, 4096, 100_000, 700_000, 2 * MiB, 5 * MiB, 9 * MiB]


def _storm_worker(target: str, seed: int, ack_path: str, scratch: str) -> None:
    """Puts blobs until the server dies, appending each acknowledged id to `ack_path`."""
    rng = random.Random(seed)
    deadline = time.monotonic() + 90
    with (
        BlobClient(target, timeout=30, retry=RetryPolicy.off()) as client,
        open(ack_path, "a") as acks,
    ):
        for i in range(10_000):
            if time.monotonic() > deadline:
                return
            kind = rng.choice(["unary", "stream", "file", "json"])
            size = rng.choice(_STORM_SIZES)
            data = rng.randbytes(size)
            try:
                if kind == "json":
                    result = client.put_json({"seed": seed, "i": i, "pad": data.hex()[:size]})
                elif kind == "file":
                    path = Path(scratch) / f"{seed}-{i}.bin"
                    path.write_bytes(data)
                    result = client.put_file(path)
                    path.unlink()
                elif kind == "stream":
                    result = client.put_bytes(data + b"s" * (4 * MiB + 1))  # always streamed
                    data += b"s" * (4 * MiB + 1)
                else:
                    result = client.put_bytes(data[: 4 * MiB])
                    data = data[: 4 * MiB]
            except BlobStoreError:
                return  # the server is gone
            if kind != "json" and result.info.blob_id != sha256_id(data):
                acks.write(f"WRONG-ID {result.info.blob_id}\n")
            acks.write(f"{result.info.blob_id} {result.info.blob_type.value}\n")
            acks.flush()


@pytest.mark.parametrize("small", ["files", "packs"])
def test_kill_9_during_put_storm_loses_nothing_acknowledged(
    start_server: ServerFactory, tmp_path: Path, small: str
) -> None:
    first = start_server("--small-blob-store", small)
    data_dir = first.data_dir
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ack_paths = [tmp_path / f"acks-{n}.txt" for n in range(4)]
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_storm_worker, args=(first.target, n, str(ack_paths[n]), str(scratch))
        )
        for n in range(len(ack_paths))
    ]
    # Kill once puts have been acknowledged and others are half written.
    kill_mid_storm(
        first,
        workers,
        lambda: len(ack_lines(ack_paths)) >= 40 and bool(temp_files(data_dir)),
        timeout=60,
    )
    assert all(worker.exitcode == 0 for worker in workers)

    debris = temp_files(data_dir)
    (data_dir / "tmp" / "planted.tmp").write_bytes(b"half a blob")
    second = start_server("--small-blob-store", small, data_dir=data_dir)

    assert temp_files(data_dir) == []
    assert "unfinished temporary file" in second.log()
    problems = [blob_file_problem(path) for path in blob_files(data_dir)]
    assert [p for p in problems if p is not None] == []
    assert quarantined(data_dir) == []
    acks = [line.split() for line in ack_lines(ack_paths)]
    assert [line for line in acks if line[0] == "WRONG-ID"] == []
    with BlobClient(second.target, timeout=60) as client:
        for blob_id, blob_type in acks:
            blob = client.get(blob_id)
            assert sha256_id(blob.data) == blob_id
            assert blob.info.blob_type.value == blob_type
    print(f"{len(acks)} acknowledged puts survived; {len(debris)} temp file(s) at the kill")


# -- corruption on disk ------------------------------------------------------------------


def test_flipped_byte_is_data_loss_then_quarantined_then_healed(
    client: BlobClient, server: ServerProcess
) -> None:
    data = os.urandom(3 * MiB)
    blob_id = client.put_bytes(data).info.blob_id
    path = blob_path(server.data_dir, blob_id)
    flip_byte(path, HEADER_SIZE + 1000)
    with raw_stub(server.target) as stub:
        exc = rpc_failure(lambda: stub.Get(pb.GetRequest(id=blob_id)))
        assert exc.code() == grpc.StatusCode.DATA_LOSS
        assert error_info(exc).reason == "DATA_LOSS"
        assert "quarantined" in (exc.details() or "")
        assert not path.exists()
        (moved,) = quarantined(server.data_dir, blob_id)
        assert moved.name.startswith(blob_id.removeprefix("sha256:"))
        assert "quarantined" in server.log()
        again = rpc_failure(lambda: stub.Get(pb.GetRequest(id=blob_id)))
        assert again.code() == grpc.StatusCode.NOT_FOUND
        assert not stub.Stat(pb.StatRequest(id=blob_id)).exists
        assert list(stub.FindMissing(pb.FindMissingRequest(ids=[blob_id])).missing_ids) == [blob_id]
    healed = client.put_bytes(data)
    assert healed.created
    assert client.get(blob_id).data == data
    assert blob_file_problem(path) is None


def test_corrupt_blob_is_never_streamed_whole(
    client: BlobClient, server: ServerProcess, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 123)
    blob_id = client.put_bytes(data).info.blob_id
    path = blob_path(server.data_dir, blob_id)

    flip_byte(path, HEADER_SIZE + 10)
    received = 0
    with raw_stub(server.target) as stub, pytest.raises(grpc.RpcError) as caught:
        for reply in stub.GetStream(pb.GetStreamRequest(id=blob_id, chunk_size=MiB)):
            received += len(reply.chunk)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert received < len(data)
    assert not path.exists()

    assert client.put_bytes(data).created  # heals
    flip_byte(path, HEADER_SIZE + len(data) - 1)  # in the last chunk this time
    target = tmp_path / "download.bin"
    with pytest.raises(DataLoss):
        client.get_to_file(blob_id, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert len(quarantined(server.data_dir, blob_id)) == 2


def test_corrupt_header_is_data_loss_and_a_put_heals_it(
    client: BlobClient, server: ServerProcess
) -> None:
    first = client.put_bytes(b"header one").info.blob_id
    second = client.put_json({"header": 2}).info.blob_id
    flip_byte(blob_path(server.data_dir, first), 10)  # in the size field
    flip_byte(blob_path(server.data_dir, second), 4)  # the type code

    with pytest.raises(DataLoss):
        client.stat(first)
    with pytest.raises(BlobNotFound):
        client.get(first)
    # A put of the same content heals even before anyone read the broken copy.
    healed = client.put_json({"header": 2})
    assert healed.created and healed.info.blob_type is BlobType.JSON
    assert client.get(second).data == b'{"header":2}'
    assert client.put_bytes(b"header one").created
    assert client.get(first).data == b"header one"
    assert (
        len(quarantined(server.data_dir, first)) == len(quarantined(server.data_dir, second)) == 1
    )


@pytest.mark.parametrize("keep", [0, 7, HEADER_SIZE, HEADER_SIZE + 4000])
def test_truncated_file_is_data_loss(client: BlobClient, server: ServerProcess, keep: int) -> None:
    data = os.urandom(10_000)
    blob_id = client.put_bytes(data).info.blob_id
    os.truncate(blob_path(server.data_dir, blob_id), keep)
    with raw_stub(server.target) as stub:
        for call in (
            lambda: stub.Get(pb.GetRequest(id=blob_id)),
            lambda: list(stub.GetStream(pb.GetStreamRequest(id=blob_id))),
            lambda: stub.Stat(pb.StatRequest(id=blob_id)),
        ):
            exc = rpc_failure(call)
            assert exc.code() == grpc.StatusCode.DATA_LOSS
            assert client.put_bytes(data).created  # heal, to break it again
            os.truncate(blob_path(server.data_dir, blob_id), keep)
    assert len(quarantined(server.data_dir, blob_id)) == 3


def test_grown_file_is_data_loss(client: BlobClient, server: ServerProcess) -> None:
    data = os.urandom(5000)
    blob_id = client.put_bytes(data).info.blob_id
    with open(blob_path(server.data_dir, blob_id), "ab") as file:
        file.write(b"extra")
    with pytest.raises(DataLoss):
        client.get(blob_id)


async def test_quarantine_keeps_a_sound_copy(tmp_path: Path) -> None:
    """A stale corruption report (the copy was replaced since) must not remove good data."""
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        data = b"sound"
        blob_id = parse_blob_id(sha256_id(data))
        await backend.put(blob_id, BlobType.BINARY, data)
        await backend.quarantine(blob_id, "reported by a reader of an older, broken copy")
        assert (await backend.get(blob_id)).data == data
        assert await asyncio.to_thread(quarantined, tmp_path / "data") == []
    finally:
        backend.close()


# -- ownership of the data folder --------------------------------------------------------


def test_second_server_on_one_data_folder_refuses_to_start(
    start_server: ServerFactory, client: BlobClient, server: ServerProcess
) -> None:
    with pytest.raises(RuntimeError) as caught:
        start_server(data_dir=server.data_dir)
    message = str(caught.value)
    assert "in use by another blobstore server" in message
    assert str(server.data_dir) in message
    assert "Traceback" not in message
    assert client.put_bytes(b"first server still serves").created
