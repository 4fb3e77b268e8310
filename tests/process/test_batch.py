"""BatchPut and BatchGet on a real server: per-item results and errors, limits, scopes,
grpcurl, and kill -9 in the middle of batches (every acknowledged batch reads back whole).
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from blobstore import errors
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.batching import NewBlob
from blobstore.canonical_json import canonicalize_value
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.model import Blob, BlobMeta, BlobType, PutResult
from blobstore.retry import RetryPolicy
from blobstore.status import from_item_error, reason_of
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_file_problem, blob_files, grpcurl_dir, sha256_id, wait_until
from tests.storm import Turn, storm_until_killed

ServerFactory = Callable[..., ServerProcess]
MISSING = "sha256:" + "0" * 64


def _stub(target: str) -> tuple[grpc.Channel, pb_grpc.BlobServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.BlobServiceStub(channel)


def test_batch_put_gives_each_item_its_own_result_or_error(server: ServerProcess) -> None:
    doc = {"b": [1, 2.5], "a": "x"}
    canonical = canonicalize_value(doc)
    good = b"\x00binary\xff"
    requests = [
        pb.PutRequest(data=good, filename="a.bin", content_type="application/octet-stream"),
        pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b'{"a": "x", "b": [1, 2.50]}'),
        pb.PutRequest(blob_type=pb.BLOB_TYPE_FLOW, data=b'{"steps": []}'),
        pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b'{"a": '),  # invalid JSON
        pb.PutRequest(data=b"other", expected_id=sha256_id(b"not other")),  # digest mismatch
        pb.PutRequest(blob_type=pb.BlobType.ValueType(7), data=b"x"),  # unknown type
        pb.PutRequest(data=good, expected_id="sha256:zz"),  # malformed expected id
        pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, json=_value(doc)),  # a protobuf Value
        pb.PutRequest(data=good),  # the same content again in the same batch
    ]
    channel, stub = _stub(server.target)
    with channel:
        reply = stub.BatchPut(pb.BatchPutRequest(requests=requests), timeout=30)
    results = list(reply.results)
    assert len(results) == len(requests)
    ok = [r.response for r in results if not r.HasField("error")]
    assert [r.HasField("error") for r in results] == [
        False, False, False, True, True, True, True, False, False
    ]  # fmt: skip
    assert ok[0].id == sha256_id(good) and ok[0].created and ok[0].filename == "a.bin"
    assert ok[1].id == sha256_id(canonical) and ok[1].blob_type == pb.BLOB_TYPE_JSON
    assert ok[2].blob_type == pb.BLOB_TYPE_FLOW
    assert ok[3].id == sha256_id(canonical) and not ok[3].created
    assert ok[4].id == sha256_id(good) and not ok[4].created
    bad_json, mismatch, bad_type, bad_id = (results[i].error for i in (3, 4, 5, 6))
    assert (bad_json.code, bad_json.reason) == (3, "INVALID_JSON")
    assert "position" in bad_json.metadata
    assert (mismatch.code, mismatch.reason) == (3, "DIGEST_MISMATCH")
    assert "unknown blob_type 7" in bad_type.message
    assert (bad_id.code, bad_id.reason) == (3, "INVALID_BLOB_ID")
    assert isinstance(from_item_error(bad_json), errors.InvalidJson)
    with BlobClient(server.target) as client:
        assert client.get(sha256_id(good)).info.meta.filename == "a.bin"
        assert client.get(sha256_id(canonical)).data == canonical
        assert client.find_missing([sha256_id(b"other")]) == [sha256_id(b"other")]


def test_batch_get_gives_each_id_its_blob_or_error(server: ServerProcess) -> None:
    with BlobClient(server.target) as client:
        stored = client.put_many(
            [
                NewBlob(b"one"),
                NewBlob(b'{"k": 1}', BlobType.JSON, BlobMeta("k.json")),
                NewBlob(b"two"),
            ]
        )
        ids = [r.info.blob_id for r in stored if isinstance(r, PutResult)]
        assert len(ids) == 3
        outcomes = client.get_many([ids[0], MISSING, "not-an-id", ids[1], ids[2], ids[0]])
    one, missing, malformed, doc, two, again = outcomes
    assert isinstance(one, Blob) and one.data == b"one"
    assert isinstance(missing, errors.BlobNotFound) and missing.blob_id == MISSING
    assert isinstance(malformed, errors.InvalidBlobId)
    assert isinstance(doc, Blob) and doc.data == b'{"k":1}' and doc.info.meta.filename == "k.json"
    assert isinstance(two, Blob) and two.data == b"two"
    assert isinstance(again, Blob) and again.data == b"one"
    channel, stub = _stub(server.target)
    with channel:
        reply = stub.BatchGet(pb.BatchGetRequest(ids=[ids[1]], as_json_value=True), timeout=30)
        assert json_format.MessageToDict(reply.results[0].response.json) == {"k": 1}
        # Bare hex is taken as in Get.
        reply = stub.BatchGet(pb.BatchGetRequest(ids=[ids[2][len("sha256:") :]]), timeout=30)
        assert reply.results[0].response.data == b"two"


def test_batch_over_the_limits(start_server: ServerFactory) -> None:
    server = start_server("--max-batch-items", "5", "--max-unary-bytes", "3000")
    channel, stub = _stub(server.target)
    with channel, BlobClient(server.target) as client:
        six = pb.BatchPutRequest(requests=[pb.PutRequest(data=bytes([i])) for i in range(6)])
        with pytest.raises(grpc.RpcError) as refused:
            stub.BatchPut(six, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 5 items, got 6" in (refused.value.details() or "")
        six_ids = [sha256_id(bytes([i])) for i in range(6)]
        assert client.find_missing(six_ids) == six_ids  # nothing of a refused batch
        with pytest.raises(grpc.RpcError) as refused:
            stub.BatchGet(pb.BatchGetRequest(ids=[MISSING] * 6), timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        blobs = [bytes([i]) * 1200 for i in range(3)]
        ids = [r.info.blob_id for r in client.put_many([NewBlob(b) for b in blobs])]  # type: ignore[union-attr]
        # 3 x 1200 bytes pass the 3000-byte reply: the third is refused on its own...
        reply = stub.BatchGet(pb.BatchGetRequest(ids=ids), timeout=30)
        assert [r.response.data for r in reply.results[:2]] == blobs[:2]
        assert reply.results[2].error.reason == "USE_STREAMING"
        assert "batch reply would pass the unary limit" in reply.results[2].error.message
        # ...and a later one that still fits is served.
        small = client.put_bytes(b"tiny").info.blob_id
        reply = stub.BatchGet(pb.BatchGetRequest(ids=[*ids, small]), timeout=30)
        assert reply.results[3].response.data == b"tiny"
        # The client fetches what did not fit one by one.
        got = client.get_many(ids)
        assert [g.data for g in got if isinstance(g, Blob)] == blobs
        # Many items each within the limits, but a request over the message limit.
        big = pb.BatchPutRequest(requests=[pb.PutRequest(data=b"x" * 2_000_000)] * 5)
        with pytest.raises(grpc.RpcError) as refused:
            stub.BatchPut(big, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_counts_its_bytes_against_admission(start_server: ServerFactory) -> None:
    server = start_server("--max-inflight-bytes", "2000000")
    release = threading.Event()
    results: list[object] = []

    # A stream holds its chunk allowance (about 1 MiB) while it waits; a batch whose
    # bytes do not fit beside it is refused OVERLOADED at once, a small one goes in.
    # The stream may itself be refused while one of the big batches below holds the
    # budget (whichever arrives first is in): it tries again until it is in.
    def held_stream() -> None:
        def requests() -> Iterator[pb.PutStreamRequest]:
            yield pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, chunk=b"a" * 1000)
            release.wait(30)

        channel, stub = _stub(server.target)
        with channel:
            deadline = time.monotonic() + 30
            while True:
                try:
                    results.append(stub.PutStream(requests(), timeout=60))
                    return
                except grpc.RpcError as exc:
                    refused = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    if not refused or time.monotonic() > deadline:
                        results.append(exc)
                        return
                time.sleep(0.05)

    thread = threading.Thread(target=held_stream)
    thread.start()
    channel, stub = _stub(server.target)
    try:
        with channel:
            big = pb.BatchPutRequest(requests=[pb.PutRequest(data=b"b" * 400_000)] * 3)
            small = pb.BatchPutRequest(requests=[pb.PutRequest(data=b"c" * 10_000)] * 3)

            def refused() -> bool:
                try:
                    stub.BatchPut(big, timeout=30)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert reason_of(exc) == "OVERLOADED"
                    return True
                return False

            time.sleep(0.3)  # the stream's head start (the loop below copes without it)
            assert wait_until(refused, timeout=20), "the big batch was never refused"
            assert stub.BatchPut(small, timeout=30).results[0].response.size == 10_000
    finally:
        release.set()
        thread.join(60)
    assert results and isinstance(results[0], pb.PutResponse)
    with BlobClient(server.target) as client:  # alone, the big batch goes in
        assert client.put_many([NewBlob(b"b" * 400_000)] * 3)[0].info.size == 400_000  # type: ignore[union-attr]


def test_batch_scopes(start_server: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"{token_hash('reader-token-1')} reader read\n{token_hash('writer-token-1')} writer write\n"
    )
    server = start_server("--tokens-file", str(tokens))
    retry = RetryPolicy.off()
    reader = channel_credentials(token="reader-token-1")
    writer = channel_credentials(token="writer-token-1")
    with BlobClient(server.target, credentials=writer, retry=retry) as client:
        [stored] = client.put_many([NewBlob(b"scoped")])
        assert isinstance(stored, PutResult)
        with pytest.raises(errors.PermissionDenied):
            client.get_many([stored.info.blob_id])
    with BlobClient(server.target, credentials=reader, retry=retry) as client:
        [blob] = client.get_many([stored.info.blob_id])
        assert isinstance(blob, Blob) and blob.data == b"scoped"
        with pytest.raises(errors.PermissionDenied):
            client.put_many([NewBlob(b"refused")])
    with BlobClient(server.target, retry=retry) as anonymous, pytest.raises(errors.Unauthenticated):
        anonymous.put_many([NewBlob(b"refused")])


def test_grpcurl_calls_batch_put_and_batch_get(server: ServerProcess) -> None:
    grpcurl = str(grpcurl_dir() / "grpcurl")

    def call(method: str, body: object) -> Any:
        done = subprocess.run(
            [grpcurl, "-plaintext", "-d", json.dumps(body), server.target, method],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    put = call(
        "blobstore.v1.BlobService/BatchPut",
        {"requests": [{"json": {"a": 1}}, {"blob_type": "BLOB_TYPE_JSON", "data": "e30K"}]},
    )
    first, second = put["results"]
    assert first["response"]["id"] == sha256_id(b'{"a":1}')
    assert second["response"]["id"] == sha256_id(b"{}")
    got = call(
        "blobstore.v1.BlobService/BatchGet",
        {"ids": [first["response"]["id"], MISSING], "as_json_value": True},
    )
    found, missing = got["results"]
    assert found["response"]["json"] == {"a": 1}
    assert missing["error"]["reason"] == "BLOB_NOT_FOUND"
    assert missing["error"]["code"] == 5


def _value(doc: dict[str, Any]) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update(doc)
    return value


# -- kill -9 in the middle of batches ------------------------------------------------------


def _batch_turn(client: BlobClient, turn: Turn) -> str:
    """A BatchPut of 20 small blobs (half JSON); logs the acknowledged batch's ids on one line."""
    rng = turn.rng
    items = [
        NewBlob(
            json.dumps({"s": turn.seed, "w": turn.worker, "i": turn.i, "j": j}).encode(),
            BlobType.JSON,
        )
        if j % 2
        else NewBlob(rng.randbytes(rng.choice((100, 1000, 70_000))))
        for j in range(20)
    ]
    outcomes = client.put_many(items)
    ids = [o.info.blob_id for o in outcomes if isinstance(o, PutResult)]
    assert len(ids) == len(items), outcomes
    return " ".join(ids)


def test_kill_9_during_batch_puts_keeps_every_acknowledged_batch_whole(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    first = start_server()
    data_dir = first.data_dir
    lines = storm_until_killed(first, _batch_turn, tmp_path, writers=4, enough=30, timeout=90)

    second = start_server(data_dir=data_dir)
    assert [p for p in blob_files(data_dir) if blob_file_problem(p) is not None] == []
    acked = [line.split() for line in lines]
    with BlobClient(second.target, timeout=60) as client:
        for ids in acked:
            assert len(ids) == 20
            assert client.find_missing(ids) == [], "an acknowledged batch lost blobs"
        for ids in random.Random(0).sample(acked, min(10, len(acked))):
            for blob_id, blob in zip(ids, client.get_many(ids), strict=True):
                assert isinstance(blob, Blob) and sha256_id(blob.data) == blob_id
    print(f"{len(acked)} acknowledged batches of 20 survived kill -9 whole")
