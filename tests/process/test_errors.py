"""Bad input gets a clear, specific gRPC status and never hurts the server or its data."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import BlobClient
from blobstore.grpc.servicer import BlobServicer
from blobstore.model import BlobType
from blobstore.storage.filesystem import FileSystemBackend
from blobstore.storage.verifying import VerifyingBackend
from blobstore.store import BlobStore
from tests.processes import ServerProcess
from tests.rpc_helpers import (
    blob_files,
    error_info,
    raw_stub,
    rpc_failure,
    serve_for_module,
    temp_files,
    wait_until,
)

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that need no special flags; it must survive them all."""
    yield from serve_for_module(tmp_path_factory)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_still_serving(target: str) -> None:
    data = os.urandom(64)
    with raw_stub(target) as stub:
        assert stub.Put(pb.PutRequest(data=data)).id == "sha256:" + sha256_hex(data)


def assert_status(exc: grpc.RpcError, code: grpc.StatusCode, reason: str) -> None:
    assert exc.code() == code, exc
    assert error_info(exc).reason == reason
    assert "Traceback" not in (exc.details() or "")


# -- blob ids ------------------------------------------------------------------------------

MALFORMED_IDS = [
    "sha256:xyz",
    "../../etc/passwd",
    "sha256:" + "AB" * 32,
    "AB" * 32,
    "",
    "sha256:" + "a" * 63,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 64 + "\n",
    "sha256:../" + "a" * 61,
]


@pytest.mark.parametrize("bad_id", MALFORMED_IDS)
def test_malformed_ids_are_invalid_argument_everywhere(server: ServerProcess, bad_id: str) -> None:
    with raw_stub(server.target) as stub:
        calls: list[Callable[[], object]] = [
            lambda: stub.Get(pb.GetRequest(id=bad_id)),
            lambda: stub.Stat(pb.StatRequest(id=bad_id)),
            lambda: list(stub.GetStream(pb.GetStreamRequest(id=bad_id))),
            lambda: stub.FindMissing(pb.FindMissingRequest(ids=[bad_id])),
        ]
        if bad_id:  # an empty expected_id means "not given"
            calls.append(lambda: stub.Put(pb.PutRequest(data=b"x", expected_id=bad_id)))
        for call in calls:
            exc = rpc_failure(call)
            assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BLOB_ID")
            assert "64 lowercase hex" in (exc.details() or "")
    assert_still_serving(server.target)


def test_malformed_ids_never_reach_the_file_system(server: ServerProcess) -> None:
    """Valid blob files planted where an unchecked id would lead are never found."""
    data = b"planted"
    with raw_stub(server.target) as stub:
        stub.Put(pb.PutRequest(data=data))
    stored = server.data_dir / "blobs" / sha256_hex(data)[:2] / sha256_hex(data)
    upper = sha256_hex(data).upper()
    planted_shard = server.data_dir / "blobs" / upper[:2]
    planted_shard.mkdir(exist_ok=True)
    shutil.copy(stored, planted_shard / upper)
    # "../" + 61 hex would resolve to <data>/blobs/../../<61 hex>, beside the data folder.
    traversal = "../" + "a" * 61
    shutil.copy(stored, server.data_dir.parent / ("a" * 61))
    with raw_stub(server.target) as stub:
        for bad_id in ("sha256:" + upper, upper, traversal, "sha256:" + traversal):
            exc = rpc_failure(lambda bad_id=bad_id: stub.Get(pb.GetRequest(id=bad_id)))  # type: ignore[misc]
            assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BLOB_ID")


# -- content -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        (b'{"a": 1,}', 8, "Expecting property name"),
        (b'{"a": 1, "a": 2}', None, "duplicate"),
        (b"[1, NaN]", None, "NaN"),
        (b'{"a": "\xff"}', 7, "UTF-8"),
        (b"", 0, ""),
        (b"[1] [2]", 4, "Extra data"),
    ],
)
def test_invalid_json_is_invalid_argument_with_position(
    server: ServerProcess, text: bytes, position: int | None, words: str
) -> None:
    stored_before = len(blob_files(server.data_dir))
    with raw_stub(server.target) as stub:
        unary = rpc_failure(lambda: stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=text)))
        streamed = rpc_failure(
            lambda: stub.PutStream(
                iter(
                    [
                        pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_JSON),
                        pb.PutStreamRequest(chunk=text[:3]),
                        pb.PutStreamRequest(chunk=text[3:]),
                    ]
                )
            )
        )
    for exc in (unary, streamed):
        assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON")
        details = exc.details() or ""
        assert words in details
        if position is not None:
            assert f"at byte {position}" in details
            assert error_info(exc).metadata["position"] == str(position)
    assert len(blob_files(server.data_dir)) == stored_before
    assert_still_serving(server.target)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_json_value_that_is_not_json_is_invalid_argument(
    server: ServerProcess, number: float
) -> None:
    value = struct_pb2.Value()
    value.list_value.values.add().number_value = number
    with raw_stub(server.target) as stub:
        exc = rpc_failure(lambda: stub.Put(pb.PutRequest(json=value)))
    assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON")
    assert_still_serving(server.target)


def test_json_value_with_no_kind_is_invalid_argument(server: ServerProcess) -> None:
    empty = pb.PutRequest()
    empty.json.SetInParent()  # `json` chosen, but the Value holds nothing
    with raw_stub(server.target) as stub:
        exc = rpc_failure(lambda: stub.Put(empty))
    assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON")
    assert "no kind" in (exc.details() or "")
    assert_still_serving(server.target)


def test_huge_integer_cannot_be_read_as_json_value_but_as_text(server: ServerProcess) -> None:
    text = b"[" + b"9" * 400 + b"]"
    with raw_stub(server.target) as stub:
        blob_id = stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=text)).id
        exc = rpc_failure(lambda: stub.Get(pb.GetRequest(id=blob_id, as_json_value=True)))
        assert stub.Get(pb.GetRequest(id=blob_id)).data == text
    assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "without as_json_value" in (exc.details() or "")


def test_unknown_blob_type_is_invalid_argument(server: ServerProcess) -> None:
    value = struct_pb2.Value(string_value="x")
    stored_before = len(blob_files(server.data_dir))
    with raw_stub(server.target) as stub:
        failures = [
            rpc_failure(lambda: stub.Put(pb.PutRequest(blob_type=7, data=b"x"))),  # type: ignore[arg-type]
            rpc_failure(
                lambda: stub.PutStream(iter([pb.PutStreamRequest(blob_type=7, chunk=b"x")]))  # type: ignore[arg-type]
            ),
            rpc_failure(lambda: stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_BINARY, json=value))),
        ]
    for exc in failures:
        assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "unknown blob_type 7" in (failures[0].details() or "")
    assert len(blob_files(server.data_dir)) == stored_before
    assert_still_serving(server.target)


def test_missing_blob_is_not_found(server: ServerProcess) -> None:
    absent = "sha256:" + sha256_hex(b"absent")
    with raw_stub(server.target) as stub:
        for call in (
            lambda: stub.Get(pb.GetRequest(id=absent)),
            lambda: list(stub.GetStream(pb.GetStreamRequest(id=absent))),
        ):
            exc = rpc_failure(call)
            assert_status(exc, grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")
            assert absent in (exc.details() or "")
            assert error_info(exc).metadata["blob_id"] == absent


# -- limits --------------------------------------------------------------------------------


def test_blobs_over_the_limits_are_refused(start_server: ServerFactory) -> None:
    server = start_server("--max-blob-bytes", "100000", "--max-json-bytes", "1000")
    at_limit, over = os.urandom(100_000), os.urandom(100_001)
    big_json = b'["' + b"x" * 2000 + b'"]'

    def stream(data: bytes, total: int | None, blob_type: int = pb.BLOB_TYPE_BINARY) -> object:
        first = pb.PutStreamRequest(blob_type=blob_type)  # type: ignore[arg-type]
        if total is not None:
            first.total_size = total
        chunks = [
            pb.PutStreamRequest(chunk=data[i : i + 30_000]) for i in range(0, len(data), 30_000)
        ]
        return stub.PutStream(iter([first, *chunks]))

    with raw_stub(server.target) as stub:
        assert stub.Put(pb.PutRequest(data=at_limit)).size == 100_000
        failures = [
            rpc_failure(lambda: stub.Put(pb.PutRequest(data=over))),
            rpc_failure(lambda: stream(over, None)),
            rpc_failure(lambda: stream(over, len(over))),
            rpc_failure(
                lambda: stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=big_json))
            ),
            rpc_failure(lambda: stream(big_json, None, pb.BLOB_TYPE_JSON)),
        ]
    for exc in failures:
        assert_status(exc, grpc.StatusCode.RESOURCE_EXHAUSTED, "BLOB_TOO_LARGE")
        assert "over the limit" in (exc.details() or "")
    assert [p.name for p in blob_files(server.data_dir)] == [sha256_hex(at_limit)]
    assert wait_until(lambda: temp_files(server.data_dir) == [])
    assert_still_serving(server.target)


def test_unary_get_over_the_unary_limit_asks_for_streaming(start_server: ServerFactory) -> None:
    server = start_server("--max-unary-bytes", "65536")
    data = os.urandom(100_000)
    with BlobClient(server.target, timeout=30) as client:
        blob_id = client.put_bytes(data).info.blob_id
        with raw_stub(server.target) as stub:
            exc = rpc_failure(lambda: stub.Get(pb.GetRequest(id=blob_id)))
        assert_status(exc, grpc.StatusCode.FAILED_PRECONDITION, "USE_STREAMING")
        assert "GetStream" in (exc.details() or "")
        # The client notices and streams instead.
        assert client.get(blob_id).data == data


# -- PutStream sequences that lie ----------------------------------------------------------


def _binary_first(**fields: object) -> pb.PutStreamRequest:
    return pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, **fields)  # type: ignore[arg-type]


LYING_STREAMS: dict[str, tuple[list[pb.PutStreamRequest], str]] = {
    "wrong offset": (
        [
            _binary_first(chunk=b"abcd", offset=0),
            pb.PutStreamRequest(chunk=b"efgh", offset=5),
        ],
        "offset 5 does not follow the 4 bytes",
    ),
    "first offset not zero": (
        [_binary_first(chunk=b"abcd", offset=1)],
        "offset 1 does not follow the 0 bytes",
    ),
    "total_size shorter than sent": (
        [_binary_first(total_size=5), pb.PutStreamRequest(chunk=b"abcdefgh")],
        "total_size=5",
    ),
    "total_size longer than sent": (
        [_binary_first(total_size=100), pb.PutStreamRequest(chunk=b"abcdefgh")],
        "total_size=100",
    ),
    "blob_type in a later message": (
        [_binary_first(chunk=b"ab"), pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_JSON, chunk=b"c")],
        "first message only",
    ),
    "total_size in a later message": (
        [_binary_first(chunk=b"ab"), pb.PutStreamRequest(total_size=3, chunk=b"c")],
        "first message only",
    ),
    "expected_id in a later message": (
        [_binary_first(chunk=b"ab"), pb.PutStreamRequest(expected_id="sha256:" + "0" * 64)],
        "first message only",
    ),
    "empty stream": ([], "got no messages"),
}


@pytest.mark.parametrize("case", LYING_STREAMS)
def test_lying_put_streams_are_invalid_argument(server: ServerProcess, case: str) -> None:
    messages, words = LYING_STREAMS[case]
    # Enough data before the lie that the server has a temp file open when it notices.
    filler = [pb.PutStreamRequest(chunk=os.urandom(1 << 20)) for _ in range(3)]
    if messages and messages[0].total_size:
        filler = []
    stream = [*messages[:1], *filler, *messages[1:]] if len(messages) > 1 else messages
    stored_before = len(blob_files(server.data_dir))
    with raw_stub(server.target) as stub:
        exc = rpc_failure(lambda: stub.PutStream(iter(stream)))
    assert_status(exc, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    details = exc.details() or ""
    if "offset" in case and filler:
        words = words.replace("4 bytes", f"{4 + 3 * (1 << 20)} bytes")
    assert words in details
    assert len(blob_files(server.data_dir)) == stored_before
    assert wait_until(lambda: temp_files(server.data_dir) == [])
    assert_still_serving(server.target)


# -- unexpected failures -------------------------------------------------------------------


async def test_unexpected_exception_is_internal_without_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend whose I/O pool is already shut down (as during a stop) raises RuntimeError."""
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    server = grpc.aio.server()
    BlobServicer(BlobStore(VerifyingBackend(backend))).add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend.close()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BlobServiceStub(channel)
            with caplog.at_level(logging.ERROR, logger="blobstore.grpc.servicer"):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    # A put needs the pool to write (a Stat of a cached header would not).
                    await stub.Put(pb.PutRequest(data=b"needs the I/O pool"))
                with pytest.raises(grpc.aio.AioRpcError) as caught_stream:
                    async for _ in stub.GetStream(pb.GetStreamRequest(id="sha256:" + "0" * 64)):
                        pass
            # Still answering: a request that needs no disk gets its proper status.
            with pytest.raises(grpc.aio.AioRpcError) as bad_id:
                await stub.Stat(pb.StatRequest(id="nope"))
    finally:
        await server.stop(None)
    for exc in (caught.value, caught_stream.value):
        assert exc.code() == grpc.StatusCode.INTERNAL
        details = exc.details() or ""
        assert details.startswith("internal server error (log ref ")
        assert "Traceback" not in details and "RuntimeError" not in details
        ref = details.removeprefix("internal server error (log ref ").rstrip(")")
        logged = [r for r in caplog.records if ref in r.getMessage()]
        assert logged and logged[0].exc_info is not None  # the details are in the log
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_server_survives_garbage_and_keeps_data(client: BlobClient, server: ServerProcess) -> None:
    kept = client.put_bytes(b"keep me").info.blob_id
    with raw_stub(server.target) as stub:
        for blob_type in (pb.BLOB_TYPE_JSON, pb.BLOB_TYPE_BINARY):
            for junk in (b"\x00" * 10, b"{" * 1000, b"\xff\xfe"):
                try:
                    stub.Put(pb.PutRequest(blob_type=blob_type, data=junk))
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.get(kept).data == b"keep me"
    assert client.put_bytes(b"more", BlobType.BINARY).created


def test_a_put_stream_refused_half_way_is_read_to_its_end_first(server: ServerProcess) -> None:
    """The refusal of a stream with more to come (garbage, a lie) is the status, never UNKNOWN.

    The guard reads the rest of a refused PutStream before the status goes out
    (_DrainFirst); what it reads may itself be garbage.
    """
    garbage = b"\xff\xff\xff"
    with grpc.insecure_channel(server.target) as channel:
        put_stream = channel.stream_unary("/blobstore.v1.BlobService/PutStream", None, None)
        for messages in (
            [garbage, garbage, garbage],
            [pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY).SerializeToString(), garbage],
            [
                pb.PutStreamRequest(chunk=b"x", offset=5).SerializeToString(),
                *[pb.PutStreamRequest(chunk=b"y" * 1000).SerializeToString()] * 50,
            ],
        ):
            failure = rpc_failure(lambda m=messages: put_stream(iter(m), timeout=30))  # type: ignore[misc]
            assert_status(failure, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert_still_serving(server.target)


async def test_a_streamed_put_abandoned_while_its_file_is_made_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client gives up while the I/O thread is still making the temp file (a loaded
    machine widens that window): the file, made all the same, is removed and its
    descriptor closed, never left for the next start-up."""
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        publisher = backend._publisher
        make_temp = publisher.create_temp
        made, release = threading.Event(), threading.Event()

        def slow_make_temp() -> tuple[int, str]:
            created = make_temp()
            made.set()
            release.wait(10)  # the thread is still busy when the caller gives up
            return created

        monkeypatch.setattr(publisher, "create_temp", slow_make_temp)
        descriptors = len(os.listdir("/proc/self/fd"))
        opening = asyncio.ensure_future(backend.open_writer())
        await asyncio.to_thread(made.wait, 10)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        release.set()
        for _ in range(200):  # the loop must run meanwhile: it removes the file
            if not temp_files(tmp_path / "data"):
                break
            await asyncio.sleep(0.05)
        assert temp_files(tmp_path / "data") == []
        assert len(os.listdir("/proc/self/fd")) == descriptors
    finally:
        backend.close()
