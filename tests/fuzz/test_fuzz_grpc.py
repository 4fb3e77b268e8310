"""Hostile input on the gRPC surface, as hypothesis property tests against one real server.

Random and mutated requests of every method (ids, blob types including unknown enum
numbers, JSON values with NaN and deep nesting, chunk sequences that lie about their
offsets and sizes, streams abandoned half way, raw bytes that are no protobuf at all).
Whatever comes in, the answer is a well-formed status - OK, or an error with the
blobstore ErrorInfo and never UNKNOWN or INTERNAL - the server stays up, the blobs
stored before are untouched and abandoned streams leave no temp file.
scripts/fuzz.py runs the same properties for longer.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.client import CHANNEL_OPTIONS
from blobstore.status import reason_of
from blobstore.storage.filesystem.scrub import verify_store
from tests.faults import wait_until
from tests.processes import ServerProcess
from tests.rpc_helpers import temp_files

# scripts/fuzz.py raises the number of examples for its longer runs.
FUZZ = settings(
    max_examples=int(os.environ.get("BLOBSTORE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# What bad input may get. UNKNOWN and INTERNAL would mean a crash in the server.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
METHODS = (
    "Put",
    "Get",
    "Stat",
    "FindMissing",
    "PutStream",
    "GetStream",
    "Delete",
    "Prune",
    "BatchPut",
    "BatchGet",
)
REMOVING = ("Delete", "Prune")
"""Served to this loopback server without tokens: they may remove the kept blobs, which
the tests then put back (Target.restore)."""


class Target:
    """The server under fuzz, the blobs stored before, and a channel to it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.BlobServiceStub(self.channel)
        self.kept: dict[str, bytes] = {}
        self.restore()

    def restore(self) -> None:
        """Puts the kept blobs (again, after a Delete or Prune that may have removed them)."""
        for data in (b"kept binary", b'{"kept":"json"}', bytes(range(256)) * 300):
            blob_type = pb.BLOB_TYPE_JSON if data.startswith(b"{") else pb.BLOB_TYPE_BINARY
            reply = self.stub.Put(pb.PutRequest(blob_type=blob_type, data=data), timeout=30)
            self.kept[reply.id] = data

    def check(self, call: Any) -> Any:
        """Runs one call; returns its reply, or None if it failed in an allowed way."""
        try:
            return call()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            assert code in ALLOWED, f"{code.name}: {details}"
            assert reason_of(exc), f"{code.name} without ErrorInfo: {details}"
            return None


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("fuzz")
    server = ServerProcess(folder / "data", folder / "server.log").start()
    fuzzed = Target(server)
    try:
        yield fuzzed
        # The module's last check, after all the abuse (a failure here is reported as an
        # error in the teardown of the module's last test): still up, nothing left behind,
        # the kept blobs intact, a clean store and no internal error in the log.
        assert server.proc is not None and server.proc.poll() is None, server.log()
        wait_until(lambda: temp_files(server.data_dir) == [], 30, "abandoned streams' cleanup")
        for blob_id, data in fuzzed.kept.items():
            assert fuzzed.stub.Get(pb.GetRequest(id=blob_id), timeout=30).data == data
        report = verify_store(server.data_dir, quarantine=False)
        assert report.ok, report.problems
        assert "internal error" not in server.log()
    finally:
        fuzzed.channel.close()
        server.kill()


# -- strategies -------------------------------------------------------------------

HEX = "0123456789abcdef"
valid_hex = st.text(alphabet=HEX, min_size=64, max_size=64)


@st.composite
def blob_ids(draw: st.DrawFn) -> str:
    """Valid ids, near misses of valid ids, and arbitrary text."""
    digest = draw(valid_hex)
    chosen: str = draw(
        st.one_of(
            st.just("sha256:" + digest),
            st.just(digest),
            st.just("sha256:" + digest.upper()),
            st.just("sha256:" + digest[:-1]),
            st.just("sha256:" + digest + "0"),
            st.just("SHA256:" + digest),
            st.just("sha512:" + digest),
            st.just("sha256:../" + digest[:61]),
            st.sampled_from(["", "sha256:", "../../etc/passwd", "sha256:xyz", "/", "\x00"]),
            st.text(max_size=80),
        )
    )
    return chosen


blob_types = st.one_of(
    st.sampled_from([0, 1, 2]), st.integers(min_value=-(2**31), max_value=2**31 - 1)
).map(pb.BlobType.ValueType)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_like = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def to_value(value: object) -> struct_pb2.Value:
    """Builds a protobuf Value by hand, so NaN and Infinity get through to the server."""
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, float):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, list):
        message.list_value.values.extend(to_value(v) for v in value)
    else:
        assert isinstance(value, dict)
        for key, item in value.items():
            message.struct_value.fields[key].CopyFrom(to_value(item))
    return message


json_texts = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [b"[" * 100_000, b'{"a":' * 50_000, b"1e999999", b'"\\ud800"', b'{"a":1,"a":2}', b"NaN"]
    ),
)


@st.composite
def put_requests(draw: st.DrawFn) -> pb.PutRequest:
    request = pb.PutRequest(blob_type=draw(blob_types))
    content = draw(st.sampled_from(["data", "text", "json", "none"]))
    if content == "data":
        request.data = draw(st.binary(max_size=2000))
    elif content == "text":
        request.data = draw(json_texts)
    elif content == "json":
        request.json.CopyFrom(to_value(draw(json_like)))
    if draw(st.booleans()):
        request.expected_id = draw(blob_ids())
    return request


# -- properties -------------------------------------------------------------------


@FUZZ
@given(request=put_requests())
@example(request=pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b"[" * 100_000))
@example(request=pb.PutRequest(blob_type=pb.BlobType.ValueType(99), data=b"x"))
@example(request=pb.PutRequest(json=to_value(float("nan"))))
def test_any_put_gets_a_well_formed_answer(target: Target, request: pb.PutRequest) -> None:
    reply = target.check(lambda: target.stub.Put(request, timeout=30))
    if reply is None:
        return
    # Accepted: the id is the content's, and reading it back gives that content.
    got = target.stub.Get(pb.GetRequest(id=reply.id), timeout=30)
    assert "sha256:" + hashlib.sha256(got.data).hexdigest() == reply.id
    if request.WhichOneof("content") == "data" and request.blob_type in (0, pb.BLOB_TYPE_BINARY):
        assert reply.id == "sha256:" + hashlib.sha256(request.data).hexdigest()


@FUZZ
@given(blob_id=blob_ids(), chunk_size=st.integers(0, 2**32 - 1), as_json=st.booleans())
def test_any_id_on_every_read_gets_a_well_formed_answer(
    target: Target, blob_id: str, chunk_size: int, as_json: bool
) -> None:
    stub = target.stub
    target.check(lambda: stub.Get(pb.GetRequest(id=blob_id, as_json_value=as_json), timeout=30))
    target.check(lambda: stub.Stat(pb.StatRequest(id=blob_id), timeout=30))
    target.check(lambda: stub.FindMissing(pb.FindMissingRequest(ids=[blob_id]), timeout=30))
    target.check(
        lambda: list(stub.GetStream(pb.GetStreamRequest(id=blob_id, chunk_size=chunk_size)))
    )


@FUZZ
@given(
    ids=st.lists(blob_ids(), max_size=12),
    older_than=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -1.0, 1e-300, 5e-324, 1e308, 10 * 365 * 86400.0]),
    ),
    dry_run=st.booleans(),
)
@example(ids=["sha256:" + "3" * 64] * 10_001, older_than=float("nan"), dry_run=False)
def test_any_delete_or_prune_gets_a_well_formed_answer(
    target: Target, ids: list[str], older_than: float, dry_run: bool
) -> None:
    stub = target.stub
    try:
        deleted = target.check(lambda: stub.Delete(pb.DeleteRequest(ids=ids), timeout=30))
        if deleted is not None:  # only ids asked for, each once
            assert len(set(deleted.deleted_ids)) == len(deleted.deleted_ids)
            asked = {i if i.startswith("sha256:") else "sha256:" + i for i in ids}
            assert set(deleted.deleted_ids) <= asked
        request = pb.PruneRequest(older_than_seconds=older_than, dry_run=dry_run)
        pruned = target.check(lambda: stub.Prune(request, timeout=30))
        if pruned is not None and not (older_than > 0):
            pytest.fail(f"a Prune of older_than_seconds={older_than} was accepted")
    finally:
        target.restore()
    for blob_id, data in target.kept.items():
        assert stub.Get(pb.GetRequest(id=blob_id), timeout=30).data == data


@st.composite
def put_streams(draw: st.DrawFn) -> list[pb.PutStreamRequest]:
    """Chunk sequences, honest or lying about offsets, sizes and first-message fields."""
    chunks = draw(st.lists(st.binary(max_size=3000), max_size=6))
    total = sum(len(c) for c in chunks)
    messages = []
    sent = 0
    for index, chunk in enumerate(chunks or [b""]):
        message = pb.PutStreamRequest(chunk=chunk)
        if index == 0 or draw(st.integers(0, 9)) == 0:  # later messages: rarely, a lie
            message.blob_type = draw(blob_types)
            if draw(st.booleans()):
                message.total_size = draw(st.sampled_from([total, total + 1, max(0, total - 1)]))
            if draw(st.integers(0, 3)) == 0:
                message.expected_id = draw(blob_ids())
        if draw(st.booleans()):
            message.offset = draw(st.sampled_from([sent, sent + 1, 0, 2**64 - 1]))
        sent += len(chunk)
        messages.append(message)
    return messages


@FUZZ
@given(messages=put_streams())
def test_any_chunk_sequence_gets_a_well_formed_answer(
    target: Target, messages: list[pb.PutStreamRequest]
) -> None:
    reply = target.check(lambda: target.stub.PutStream(iter(messages), timeout=30))
    if reply is None:
        return
    data = b"".join(m.chunk for m in messages)
    if messages[0].blob_type in (0, pb.BLOB_TYPE_BINARY):
        assert reply.id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert reply.size == len(data)


@FUZZ
@given(sent=st.integers(0, 5), chunk=st.binary(min_size=1, max_size=100_000))
def test_streams_abandoned_half_way_leave_nothing_behind(
    target: Target, sent: int, chunk: bytes
) -> None:
    release = threading.Event()

    def requests() -> Iterator[pb.PutStreamRequest]:
        yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY)
        for _ in range(sent):
            yield pb.PutStreamRequest(chunk=chunk)
        release.wait(10)

    future = target.stub.PutStream.future(requests(), timeout=30)
    wait_until(lambda: bool(temp_files(target.server.data_dir)) or future.done(), 10)
    future.cancel()  # type: ignore[no-untyped-call]
    release.set()
    # Bounded, not immediate: the server learns of the abandon from gRPC and removes the
    # file on its thread pool, which a loaded machine (the whole suite at once) delays.
    wait_until(lambda: temp_files(target.server.data_dir) == [], 30, "the temp file to go")


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    payload=st.one_of(
        st.binary(max_size=500),
        st.builds(
            lambda valid, cut, flips: _mutate(valid, cut, flips),
            st.sampled_from(
                [
                    pb.PutRequest(
                        blob_type=pb.BLOB_TYPE_BINARY, data=b"abc", expected_id="sha256:" + "0" * 64
                    ),
                    pb.GetStreamRequest(id="sha256:" + "1" * 64, chunk_size=4096),
                    pb.PutStreamRequest(
                        blob_type=pb.BLOB_TYPE_JSON, total_size=3, offset=0, chunk=b"[1]"
                    ),
                    pb.FindMissingRequest(ids=["sha256:" + "2" * 64] * 3),
                    pb.DeleteRequest(ids=["sha256:" + "4" * 64, "5" * 64]),
                    pb.PruneRequest(older_than_seconds=10 * 365 * 86400.0, dry_run=True),
                    pb.BatchPutRequest(
                        requests=[pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b"[2]")] * 2
                    ),
                    pb.BatchGetRequest(ids=["sha256:" + "6" * 64] * 2),
                ]
            ).map(lambda m: m.SerializeToString()),
            st.integers(0, 200),
            st.lists(st.tuples(st.integers(0, 199), st.integers(1, 255)), max_size=4),
        ),
    ),
)
def test_raw_bytes_to_any_method_get_a_well_formed_answer(
    target: Target, method: str, payload: bytes
) -> None:
    path = f"/blobstore.v1.BlobService/{method}"
    channel = target.channel
    if method == "PutStream":
        call = channel.stream_unary(path, None, None)
        target.check(lambda: call(iter([payload, payload]), timeout=30))
    elif method == "GetStream":
        stream = channel.unary_stream(path, None, None)
        target.check(lambda: list(stream(payload, timeout=30)))
    else:
        unary = channel.unary_unary(path, None, None)
        target.check(lambda: unary(payload, timeout=30))
    if method in REMOVING:
        target.restore()


def _mutate(valid: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(valid[: max(1, len(valid) - cut % (len(valid) + 1))])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    return bytes(data)
