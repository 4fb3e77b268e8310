"""The shortcuts taken for speed (docs/performance.md, phase 2) keep the store's promises.

Re-putting JSON text the server has seen (answered from a cache of text ->
id) must still find a lost or broken blob and store it again; reads answered
on the event loop (small, cached) and through the pool (larger) return the
same verified data; a streamed put hashed and written in one step per chunk
stores exactly what was sent; replies encoded by hand are byte for byte
what protobuf would send; a Get's reply is reserved before its content is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.errors import DataLoss, Overloaded
from blobstore.grpc.wire import ChunkMessage, chunk_message, parse_put_stream_request
from blobstore.ids import BlobId
from blobstore.model import BlobType
from blobstore.storage.base import OverLimit, ReadLimit
from blobstore.storage.filesystem import FileSystemBackend
from tests.processes import ServerProcess
from tests.rpc_helpers import blob_path, raw_stub


def quarantined(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "quarantine").iterdir())


def text_of(seed: str) -> bytes:
    # Not canonical (spaces, key order), so the stored form differs from the text sent.
    return json.dumps({"z": seed, "a": [1, 2.5, "x" * 500]}, indent=1).encode()


def test_re_put_text_of_a_deleted_blob_stores_it_again(
    client: BlobClient, server: ServerProcess
) -> None:
    text = text_of("deleted")
    first = client.put_json_text(text)
    assert client.put_json_text(text).created is False  # now known to the text cache
    blob_path(server.data_dir, first.info.blob_id).unlink()

    again = client.put_json_text(text)

    assert again.created is True
    assert again.info == first.info
    assert json.loads(client.get(first.info.blob_id).data) == json.loads(text)


def test_re_put_text_of_a_truncated_blob_quarantines_and_heals_it(
    client: BlobClient, server: ServerProcess
) -> None:
    text = text_of("truncated")
    first = client.put_json_text(text)
    client.put_json_text(text)
    path = blob_path(server.data_dir, first.info.blob_id)
    os.truncate(path, path.stat().st_size - 7)

    again = client.put_json_text(text)

    assert again.created is True
    assert len(quarantined(server.data_dir)) == 1
    blob = client.get(first.info.blob_id)
    assert hashlib.sha256(blob.data).hexdigest() == first.info.blob_id.removeprefix("sha256:")


def test_re_put_with_a_wrong_expected_id_is_refused_even_when_cached(
    client: BlobClient, server: ServerProcess
) -> None:
    """The cache answers with the remembered id; a mismatching expected_id still fails."""
    text = text_of("expected")
    client.put_json_text(text)
    wrong = "sha256:" + "0" * 64
    with raw_stub(server.target) as stub, pytest.raises(grpc.RpcError) as caught:
        stub.Put(pb.PutRequest(blob_type=pb.BLOB_TYPE_JSON, data=text, expected_id=wrong))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("size", [0, 1, 1000, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024])
def test_reads_inline_and_in_the_pool_return_the_same_verified_data(
    client: BlobClient, size: int
) -> None:
    data = os.urandom(size)
    blob_id = client.put_bytes(data).info.blob_id
    for _ in range(2):  # the second read finds the file in the page cache
        blob = client.get(blob_id)
        assert blob.data == data
        assert blob.info.size == size


def test_small_blob_with_a_flipped_byte_is_data_loss_on_the_inline_read(
    client: BlobClient, server: ServerProcess
) -> None:
    data = b"inline read must verify " * 10
    blob_id = client.put_bytes(data).info.blob_id
    client.get(blob_id)  # cached now, so the next read is the inline one
    path = blob_path(server.data_dir, blob_id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))

    with pytest.raises(DataLoss):
        client.get(blob_id)
    assert len(quarantined(server.data_dir)) == 1


def test_streamed_put_of_many_chunks_stores_exactly_what_was_sent(
    client: BlobClient, server: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "source.bin"
    data = os.urandom(9 * 1024 * 1024 + 12345)  # past the 8 MiB write-back step
    source.write_bytes(data)

    result = client.put_file(source, BlobType.BINARY)

    assert result.info.blob_id == "sha256:" + hashlib.sha256(data).hexdigest()
    stored = blob_path(server.data_dir, result.info.blob_id).read_bytes()
    assert stored[-len(data) :] == data
    assert list((server.data_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize("offset", [0, 1, 127, 128, 16_384, 2**40])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 70_000])
def test_hand_encoded_chunk_messages_are_what_protobuf_reads(offset: int, size: int) -> None:
    chunk = os.urandom(size)
    encoded = chunk_message(offset, chunk)
    message = pb.GetStreamResponse.FromString(encoded)
    assert (message.offset, message.chunk, message.HasField("info")) == (offset, chunk, False)
    if offset and size:  # protobuf leaves zero values out; we always write both fields
        expected = pb.GetStreamResponse(offset=offset, chunk=chunk).SerializeToString()
        assert encoded == expected


@pytest.mark.parametrize("offset", [None, 0, 5, 2**40])
@pytest.mark.parametrize("size", [0, 1, 128, 70_000])
def test_plain_chunk_messages_parse_without_protobuf_as_protobuf_would(
    offset: int | None, size: int
) -> None:
    chunk = os.urandom(size)
    request = pb.PutStreamRequest(chunk=chunk)
    if offset is not None:
        request.offset = offset
    data = request.SerializeToString()
    parsed = parse_put_stream_request(data)
    # An empty chunk is not on the wire, so that message is not "exactly a chunk".
    assert isinstance(parsed, ChunkMessage if size else pb.PutStreamRequest)
    assert bytes(parsed.chunk) == chunk
    assert (parsed.offset, parsed.HasField("offset")) == (
        request.offset,
        request.HasField("offset"),
    )
    assert parsed.ByteSize() == request.ByteSize()
    # Anything else goes to protobuf.
    assert isinstance(parse_put_stream_request(b"\x08\x02" + data), pb.PutStreamRequest)


async def test_a_read_reserves_its_size_before_reading_and_stops_when_refused(
    tmp_path: Path,
) -> None:
    backend = FileSystemBackend(tmp_path / "data")
    backend.open()
    try:
        data = os.urandom(5000)
        blob_id = BlobId("sha256:" + hashlib.sha256(data).hexdigest())
        await backend.put(blob_id, BlobType.BINARY, data)
        asked: list[int] = []
        assert (await backend.get(blob_id, ReadLimit(None, asked.append))).data == data
        assert asked == [5000]

        def refuse(size: int) -> None:
            raise Overloaded(f"no room for {size} bytes")

        descriptors = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises(Overloaded, match="5000 bytes"):
                await backend.get(blob_id, ReadLimit(None, refuse))
        assert len(os.listdir("/proc/self/fd")) == descriptors  # each refused read closed its file
        # Over max_size the read is OverLimit, never reserved: it would be refused anyway.
        with pytest.raises(OverLimit):
            await backend.get(blob_id, ReadLimit(4999, refuse))
    finally:
        backend.close()
