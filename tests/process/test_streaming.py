"""Streaming puts and gets: any size in bounded server memory, clean abandonment, chunk sizes."""

from __future__ import annotations

import hashlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.processes import ServerProcess
from tests.rpc_helpers import (
    MiB,
    blob_files,
    raw_stub,
    serve_for_module,
    temp_files,
    wait_until,
)

GiB = 1024 * MiB
RSS_GROWTH_LIMIT = 100 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_for_module(tmp_path_factory)


def write_generated_file(path: Path, size: int) -> str:
    """Writes `size` bytes cheaply: one random MiB repeated, each copy stamped with its index."""
    block = os.urandom(MiB)
    hasher = hashlib.sha256()
    with open(path, "wb") as file:
        for index in range(size // MiB):
            chunk = index.to_bytes(8, "big") + block[8:]
            hasher.update(chunk)
            file.write(chunk)
    return "sha256:" + hasher.hexdigest()


def file_id(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(4 * MiB):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class RssSampler:
    """Samples a process's resident memory every ~50 ms while in a `with` block."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.samples: list[int] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._process.memory_info().rss)
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def peak(self) -> int:
        return max(self.samples)


def resting_rss(pid: int) -> int:
    process = psutil.Process(pid)
    samples = []
    for _ in range(10):
        samples.append(process.memory_info().rss)
        time.sleep(0.05)
    return int(statistics.median(samples))


def test_one_gib_streams_in_and_out_in_bounded_server_memory(
    server: ServerProcess, tmp_path: Path
) -> None:
    source, download = tmp_path / "source.bin", tmp_path / "download.bin"
    try:
        expected = write_generated_file(source, GiB)
        with BlobClient(server.target, timeout=600) as client:
            # Warm up: thread pools, gRPC buffers and allocator arenas exist before the baseline.
            warm = tmp_path / "warm.bin"
            write_generated_file(warm, 16 * MiB)
            client.get_to_file(client.put_file(warm).info.blob_id, tmp_path / "warm.out")
            baseline = resting_rss(server.pid)

            with RssSampler(server.pid) as put_rss:
                put = client.put_file(source)
            assert put.info.blob_id == expected
            assert (put.info.size, put.info.blob_type) == (GiB, BlobType.BINARY)

            with RssSampler(server.pid) as get_rss:
                info = client.get_to_file(expected, download)
            assert info.size == GiB
        assert file_id(download) == expected
        growth = {"put": put_rss.peak - baseline, "get": get_rss.peak - baseline}
        print(
            f"baseline RSS {baseline / MiB:.0f} MiB; peak growth "
            f"put {growth['put'] / MiB:.1f} MiB, get {growth['get'] / MiB:.1f} MiB "
            f"({len(put_rss.samples)} + {len(get_rss.samples)} samples)"
        )
        assert len(put_rss.samples) > 10 and len(get_rss.samples) > 10
        assert growth["put"] < RSS_GROWTH_LIMIT, growth
        assert growth["get"] < RSS_GROWTH_LIMIT, growth
    finally:
        # 1 GiB files are not left for pytest to keep around (nor is the stored copy:
        # nothing else reads it, and a blob's file may go away like an evicted one).
        source.unlink(missing_ok=True)
        download.unlink(missing_ok=True)
        for stored in (server.data_dir / "blobs").glob("*/*"):
            if stored.stat().st_size > GiB:
                stored.unlink()


def test_json_blob_streams_in_and_out_canonical(server: ServerProcess, tmp_path: Path) -> None:
    # The same value written loosely and canonically, about 6 MiB: over the unary limit.
    items = range(60_000)
    loose = "[\n" + ",\n".join(f'  {{ "b" : {i}.0e0, "a" : "item {i}" }}' for i in items) + "\n]"
    canonical = "[" + ",".join(f'{{"a":"item {i}","b":{i}}}' for i in items) + "]"
    source = tmp_path / "doc.json"
    source.write_text(loose)
    expected = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    with BlobClient(server.target, timeout=120) as client:
        put = client.put_file(source, BlobType.JSON)
        assert put.info.blob_id == expected
        assert (put.info.blob_type, put.info.size) == (BlobType.JSON, len(canonical))
        out = tmp_path / "out.json"
        info = client.get_to_file(expected, out)
        assert info.blob_type is BlobType.JSON
        assert out.read_text() == canonical


@pytest.mark.parametrize("declared_size", [True, False])
def test_abandoned_put_stream_stores_nothing(server: ServerProcess, declared_size: bool) -> None:
    """Without total_size, a cancelled stream just ends, like a finished one: still not stored."""
    release = threading.Event()
    sent = b""

    def requests() -> Iterator[pb.PutStreamRequest]:
        nonlocal sent
        first = pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY)
        if declared_size:
            first.total_size = 100 * MiB
        yield first
        for _ in range(3):
            chunk = os.urandom(MiB)
            sent += chunk
            yield pb.PutStreamRequest(chunk=chunk)
        release.wait(timeout=30)  # the client goes quiet, then gives up

    stored_before = blob_files(server.data_dir)
    with raw_stub(server.target) as stub:
        call: Any = stub.PutStream.future(requests(), timeout=60)
        try:
            assert wait_until(lambda: temp_files(server.data_dir) != [])
            assert wait_until(lambda: len(sent) == 3 * MiB)
            assert call.cancel()
        finally:
            release.set()
        assert wait_until(lambda: temp_files(server.data_dir) == [])
        # The server keeps serving, and what was sent is not stored as a blob of its own.
        data = os.urandom(3 * MiB)
        reply = stub.PutStream(iter([pb.PutStreamRequest(chunk=data)]))
        assert reply.id == "sha256:" + hashlib.sha256(data).hexdigest()
        partial = "sha256:" + hashlib.sha256(sent).hexdigest()
        assert not stub.Stat(pb.StatRequest(id=partial)).exists
    assert len(blob_files(server.data_dir)) == len(stored_before) + 1


def test_abandoned_get_streams_release_their_files(server: ServerProcess) -> None:
    data = os.urandom(20 * MiB)
    process = psutil.Process(server.pid)
    with raw_stub(server.target) as stub:
        blob_id = stub.PutStream(iter([pb.PutStreamRequest(chunk=data)])).id
        baseline = process.num_fds()
        for attempt in range(10):
            call: Any = stub.GetStream(pb.GetStreamRequest(id=blob_id, chunk_size=4096))
            assert next(call).info.size == len(data)
            if attempt % 2:
                next(call)  # gone after one chunk; else right after the metadata
            call.cancel()
        assert wait_until(lambda: process.num_fds() <= baseline), (process.num_fds(), baseline)
        assert b"".join(r.chunk for r in stub.GetStream(pb.GetStreamRequest(id=blob_id))) == data


@pytest.mark.parametrize(
    ("asked", "served"),
    [(0, MiB), (1, 4096), (4095, 4096), (65_536, 65_536), (100 * MiB, 4 * MiB)],
)
def test_get_stream_chunk_size_is_clamped(server: ServerProcess, asked: int, served: int) -> None:
    data = os.urandom(9 * MiB + 5)
    with raw_stub(server.target) as stub:
        blob_id = stub.PutStream(iter([pb.PutStreamRequest(chunk=data)])).id
        replies = list(stub.GetStream(pb.GetStreamRequest(id=blob_id, chunk_size=asked)))
    head, chunks = replies[0], replies[1:]
    assert (head.info.id, head.info.size, head.chunk) == (blob_id, len(data), b"")
    assert {len(r.chunk) for r in chunks[:-1]} == {served}
    assert 0 < len(chunks[-1].chunk) <= served
    assert [r.offset for r in chunks] == [i * served for i in range(len(chunks))]
    assert b"".join(r.chunk for r in chunks) == data


def test_get_stream_of_an_empty_blob(server: ServerProcess) -> None:
    with raw_stub(server.target) as stub:
        blob_id = stub.Put(pb.PutRequest(data=b"")).id
        replies = list(stub.GetStream(pb.GetStreamRequest(id=blob_id)))
    assert [(r.info.size, r.chunk) for r in replies] == [(0, b"")]


def test_put_stream_may_carry_data_in_its_first_message(server: ServerProcess) -> None:
    data = os.urandom(2 * MiB)
    with raw_stub(server.target) as stub:
        reply = stub.PutStream(
            iter(
                [
                    pb.PutStreamRequest(chunk=data[:MiB], offset=0, total_size=len(data)),
                    pb.PutStreamRequest(chunk=b""),
                    pb.PutStreamRequest(chunk=data[MiB:], offset=MiB),
                ]
            )
        )
        assert reply.id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert reply.blob_type == pb.BLOB_TYPE_BINARY
        assert stub.Get(pb.GetRequest(id=reply.id)).data == data


def test_put_stream_of_stored_content_answers_without_reading_it(server: ServerProcess) -> None:
    """The stored copy is read and checked against the id (issue 10, point 1), but the
    answer still comes while the client holds after its first chunk."""
    data = os.urandom(20 * MiB)
    blob_id = "sha256:" + hashlib.sha256(data).hexdigest()
    sent = 0
    release = threading.Event()

    def requests() -> Iterator[pb.PutStreamRequest]:
        nonlocal sent
        yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, expected_id=blob_id)
        for start in range(0, len(data), MiB):
            sent += 1
            yield pb.PutStreamRequest(chunk=data[start : start + MiB])
            release.wait(60)  # holds after the first chunk until the answer is in

    with raw_stub(server.target) as stub:
        assert stub.Put(pb.PutRequest(data=data)).created
        try:
            reply = stub.PutStream(requests(), timeout=60)
            sent_before_the_answer = sent
        finally:
            release.set()
    assert (reply.id, reply.created, reply.size) == (blob_id, False, len(data))
    assert sent_before_the_answer <= 1  # it held after the first: nothing more was sent
