"""The BlobService API as a user sees it: real server process, real gRPC, raw stubs and clients."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import rfc8785
from google.protobuf import json_format, struct_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import AsyncBlobClient, BlobClient, decode_json
from blobstore.errors import BlobNotFound, InvalidBlobId, InvalidJson
from blobstore.model import BlobType
from tests.processes import ServerProcess
from tests.rpc_helpers import (
    MiB,
    error_info,
    raw_stub,
    rpc_failure,
    serve_for_module,
    sha256_id,
    temp_files,
)

# The `data` object of the blobs/put request example in the seed protocol document.
SEED_DOCUMENT = {
    "processed_records": [{"id": "record_1", "data": {"name": "John", "status": "active"}}],
    "metadata": {"timestamp": "2024-01-15T10:30:00Z", "version": "1.2.3"},
}
PROTO = Path(__file__).resolve().parents[2] / "proto" / "blobstore" / "v1" / "blobstore.proto"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: every test here uses content of its own."""
    yield from serve_for_module(tmp_path_factory)


def jcs(value: Any) -> bytes:
    """The RFC 8785 encoding by the reference implementation, not ours."""
    return bytes(rfc8785.dumps(value))


def test_json_round_trip(client: BlobClient) -> None:
    value = {"name": "réseau ☃", "n": [1, 2.5, -0.0, 1e21, None, True], "nested": {"z": {}}}
    put = client.put_json(value)
    canonical = jcs(value)
    assert put.info.blob_id == sha256_id(canonical)
    assert put.info.blob_type is BlobType.JSON
    assert put.info.size == len(canonical)
    blob = client.get(put.info.blob_id)
    assert blob.data == canonical
    assert blob.info.blob_type is BlobType.JSON
    assert decode_json(blob.data) == value


@pytest.mark.parametrize("size", [0, 1, 4096, 5 * MiB])
def test_binary_round_trip(client: BlobClient, size: int) -> None:
    data = os.urandom(size)
    put = client.put_bytes(data)
    assert put.created
    assert put.info.blob_id == sha256_id(data)
    assert (put.info.blob_type, put.info.size) == (BlobType.BINARY, size)
    blob = client.get(put.info.blob_id)
    assert blob.data == data
    assert blob.info.blob_type is BlobType.BINARY


def test_seed_document_round_trip(server: ServerProcess) -> None:
    canonical = jcs(SEED_DOCUMENT)
    with raw_stub(server.target) as stub:
        text = stub.Put(
            pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=json.dumps(SEED_DOCUMENT).encode())
        )
        value = stub.Put(
            pb.PutRequest(json=json_format.ParseDict(SEED_DOCUMENT, struct_pb2.Value()))
        )
        got = stub.Get(pb.GetRequest(id=text.id))
    assert text.id == value.id == sha256_id(canonical)
    assert (text.created, value.created) == (True, False)
    assert got.blob_type == pb.BLOB_TYPE_JSON
    assert got.data == canonical
    assert json.loads(got.data) == SEED_DOCUMENT


def test_equal_json_values_get_one_id(server: ServerProcess) -> None:
    with raw_stub(server.target) as stub:
        first = stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b'{"b":1,"a":[1.0,"x"]}'))
        second = stub.Put(
            pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b'{ "a" : [1, "x"], "b" : 1e0 }')
        )
        stored = stub.Get(pb.GetRequest(id=first.id)).data
    assert first.id == second.id == sha256_id(b'{"a":[1,"x"],"b":1}')
    assert stored == b'{"a":[1,"x"],"b":1}'
    assert (first.created, second.created) == (True, False)


def test_json_value_and_json_text_give_one_id(server: ServerProcess) -> None:
    document = {"b": [1.5, "two", None, False], "a": {"c": 3}}
    value = json_format.ParseDict(document, struct_pb2.Value())
    with raw_stub(server.target) as stub:
        by_value = stub.Put(pb.PutRequest(json=value))
        by_text = stub.Put(
            pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=json.dumps(document).encode())
        )
    assert by_value.blob_type == pb.BLOB_TYPE_JSON
    assert by_value.id == by_text.id == sha256_id(jcs(document))


def test_get_as_json_value(server: ServerProcess) -> None:
    with raw_stub(server.target) as stub:
        json_id = stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=b'{"k":[1,"v"]}')).id
        binary = b'{"k":[1,"v"]} but binary'
        binary_id = stub.Put(pb.PutRequest(data=binary)).id
        as_value = stub.Get(pb.GetRequest(id=json_id, as_json_value=True))
        binary_reply = stub.Get(pb.GetRequest(id=binary_id, as_json_value=True))
    assert as_value.WhichOneof("content") == "json"
    assert json_format.MessageToDict(as_value.json) == {"k": [1, "v"]}
    # as_json_value is ignored for Binary blobs: they come back as bytes.
    assert binary_reply.WhichOneof("content") == "data"
    assert binary_reply.data == binary


def test_stat(client: BlobClient) -> None:
    data = b"stat me"
    blob_id = client.put_bytes(data).info.blob_id
    info = client.stat(blob_id)
    assert info is not None
    assert (info.blob_id, info.blob_type, info.size) == (blob_id, BlobType.BINARY, len(data))
    json_id = client.put_json_text(b"[1, 2, 3]").info.blob_id
    json_info = client.stat(json_id)
    assert json_info is not None
    assert (json_info.blob_type, json_info.size) == (BlobType.JSON, len(b"[1,2,3]"))
    assert client.stat(sha256_id(b"never stored")) is None


def test_stat_reply_for_absent_blob(server: ServerProcess) -> None:
    absent = sha256_id(b"absent")
    with raw_stub(server.target) as stub:
        reply = stub.Stat(pb.StatRequest(id=absent))
    assert (reply.id, reply.exists, reply.size, reply.blob_type) == (absent, False, 0, 0)


def test_find_missing_keeps_order_and_drops_duplicates(client: BlobClient) -> None:
    present = [client.put_bytes(f"present {i}".encode()).info.blob_id for i in range(3)]
    absent = [sha256_id(f"absent {i}".encode()) for i in range(3)]
    asked = [absent[2], present[0], absent[0], absent[2], present[1], absent[1], absent[0]]
    assert client.find_missing(asked) == [absent[2], absent[0], absent[1]]
    assert client.find_missing(present) == []
    assert client.find_missing([]) == []


def test_find_missing_names_the_invalid_id(server: ServerProcess) -> None:
    good = sha256_id(b"x")
    with raw_stub(server.target) as stub:
        exc = rpc_failure(lambda: stub.FindMissing(pb.FindMissingRequest(ids=[good, good, "nope"])))
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc).reason == "INVALID_BLOB_ID"
    assert "ids[2]" in (exc.details() or "")


def test_bare_hex_ids_are_accepted_and_answered_in_sha256_form(server: ServerProcess) -> None:
    data = b"bare hex"
    full = sha256_id(data)
    bare = full.removeprefix("sha256:")
    with raw_stub(server.target) as stub:
        stub.Put(pb.PutRequest(data=data))
        got = stub.Get(pb.GetRequest(id=bare))
        stat = stub.Stat(pb.StatRequest(id=bare))
        missing = stub.FindMissing(pb.FindMissingRequest(ids=[bare, "0" * 64]))
        streamed = list(stub.GetStream(pb.GetStreamRequest(id=bare)))
    assert (got.id, got.data) == (full, data)
    assert (stat.id, stat.exists) == (full, True)
    assert list(missing.missing_ids) == ["sha256:" + "0" * 64]
    assert streamed[0].info.id == full


def test_first_type_wins(client: BlobClient) -> None:
    canonical_text = b'{"a":1}'  # already canonical, so both puts address the same content
    as_binary = client.put_bytes(canonical_text, BlobType.BINARY)
    as_json = client.put_json_text(canonical_text)
    assert as_json.info.blob_id == as_binary.info.blob_id
    assert (as_binary.created, as_json.created) == (True, False)
    assert as_json.info.blob_type is BlobType.BINARY
    info = client.stat(as_binary.info.blob_id)
    assert info is not None and info.blob_type is BlobType.BINARY
    assert client.get(as_binary.info.blob_id).info.blob_type is BlobType.BINARY
    # The rule is part of the API contract, written where API users read it.
    assert "keeps the type it was first stored with" in " ".join(PROTO.read_text().split())


def test_expected_id(server: ServerProcess) -> None:
    data = b"expected content"
    right, wrong = sha256_id(data), sha256_id(b"something else")
    with raw_stub(server.target) as stub:
        assert stub.Put(pb.PutRequest(data=data, expected_id=right)).id == right
        unary = rpc_failure(lambda: stub.Put(pb.PutRequest(data=b"other", expected_id=right)))
        streamed = rpc_failure(
            lambda: stub.PutStream(
                iter(
                    [
                        pb.PutStreamRequest(blob_type=pb.BLOB_TYPE_BINARY, expected_id=wrong),
                        pb.PutStreamRequest(chunk=data),
                    ]
                )
            )
        )
        # A streamed put with a matching id is stored too.
        fresh = b"streamed with the right id"
        ok = stub.PutStream(
            iter(
                [
                    pb.PutStreamRequest(expected_id=sha256_id(fresh)),
                    pb.PutStreamRequest(chunk=fresh),
                ]
            )
        )
        assert ok.id == sha256_id(fresh) and ok.created
        stored_other = stub.Stat(pb.StatRequest(id=sha256_id(b"other"))).exists
    for exc in (unary, streamed):
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(exc).reason == "DIGEST_MISMATCH"
        assert "digest mismatch" in (exc.details() or "")
    assert not stored_other
    assert temp_files(server.data_dir) == []


def test_client_errors_are_typed(client: BlobClient) -> None:
    with pytest.raises(BlobNotFound):
        client.get(sha256_id(b"not there"))
    with pytest.raises(InvalidJson) as caught:
        client.put_json_text(b'{"a": 1,}')
    assert caught.value.position == 8
    with pytest.raises(InvalidBlobId):
        client.stat("sha256:xyz")


async def test_async_client_covers_every_method(server: ServerProcess, tmp_path: Path) -> None:
    big = os.urandom(6 * MiB)  # over the client's unary limit: streamed
    files = tmp_path / "files"
    files.mkdir()
    source = files / "source.bin"
    source.write_bytes(big[: 3 * MiB] + b"file")
    async with AsyncBlobClient(server.target, timeout=30) as client:
        document = {"async": SEED_DOCUMENT}
        json_put = await client.put_json(document)
        text_put = await client.put_json_text('{"b":2,"a":[2.0,"y"]}')
        small_put = await client.put_bytes(b"small")
        big_put = await client.put_bytes(big)
        file_put = await client.put_file(source)
        assert json_put.info.blob_id == sha256_id(jcs(document))
        assert text_put.info.blob_id == sha256_id(b'{"a":[2,"y"],"b":2}')
        assert big_put.info.blob_id == sha256_id(big)
        assert file_put.info.blob_id == sha256_id(source.read_bytes())
        assert (await client.get(json_put.info.blob_id)).data == jcs(document)
        assert (await client.get(small_put.info.blob_id)).data == b"small"
        assert (await client.get(big_put.info.blob_id)).data == big
        target = files / "out.bin"
        info = await client.get_to_file(file_put.info.blob_id, target)
        assert target.read_bytes() == source.read_bytes()
        assert info.size == source.stat().st_size
        stat = await client.stat(text_put.info.blob_id)
        assert stat is not None and stat.blob_type is BlobType.JSON
        absent = sha256_id(b"absent")
        assert await client.stat(absent) is None
        assert await client.find_missing([absent, small_put.info.blob_id, absent]) == [absent]
        with pytest.raises(BlobNotFound):
            await client.get(absent)
        with pytest.raises(BlobNotFound):
            await client.get_to_file(absent, files / "absent.bin")
    # No partial download is left behind, and nothing appeared for the missing blob.
    leftovers = await asyncio.to_thread(lambda: [p.name for p in files.iterdir()])
    assert sorted(leftovers) == ["out.bin", "source.bin"]
