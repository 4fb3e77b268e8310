"""Flow blobs and per-blob metadata (filename, content type) as the store's rules have them,
over the in-memory backend: flow is canonical JSON of its own type, metadata is kept from
the put that stored the blob (first writer wins, like the type), unfit metadata is refused
with a clear error and stores nothing; and the blob file format's metadata block decodes
what it encodes, reads files without one, and notices damage."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import pytest

from blobstore.errors import InvalidArgument
from blobstore.metadata import MAX_FILENAME_BYTES
from blobstore.model import NO_META, BlobMeta, BlobType
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    CorruptHeader,
    decode_header,
    decode_meta,
    encode_header,
    encode_meta,
)
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.verifying import VerifyingBackend
from blobstore.store import BlobStore
from tests.rpc_helpers import sha256_id

REPORT = BlobMeta("report.json", "application/json")


@pytest.fixture
def store(memory: MemoryBackend) -> BlobStore:
    return BlobStore(VerifyingBackend(memory))


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_flow_is_canonical_json_of_its_own_type(store: BlobStore) -> None:
    flow = await store.put(BlobType.FLOW, b'{"steps": [], "name": "f", "n": 1.0}')
    canonical = b'{"n":1,"name":"f","steps":[]}'

    assert flow.info.blob_id == sha256_id(canonical)
    assert flow.info.blob_type is BlobType.FLOW
    blob = await store.get(flow.info.blob_id)
    assert (blob.data, blob.info.blob_type) == (canonical, BlobType.FLOW)


async def test_a_flow_keeps_its_type_and_data_of_the_same_value_gets_the_same_id(
    store: BlobStore,
) -> None:
    flow = await store.put_json_value({"b": [1, 2], "a": "x"}, blob_type=BlobType.FLOW)
    data_later = await store.put(BlobType.JSON, b'{"a": "x", "b": [1, 2.0]}')

    assert not data_later.created and data_later.info.blob_id == flow.info.blob_id
    assert data_later.info.blob_type is BlobType.FLOW  # the first type wins


async def test_flow_text_that_is_not_json_is_refused(store: BlobStore) -> None:
    with pytest.raises(InvalidArgument):
        await store.put(BlobType.FLOW, b"{not json")


async def test_a_json_value_cannot_be_stored_as_binary(store: BlobStore) -> None:
    with pytest.raises(InvalidArgument, match="cannot be stored as a Binary blob"):
        await store.put_json_value([1], blob_type=BlobType.BINARY)


async def test_metadata_is_kept_and_returned_by_get_stat_and_streams(store: BlobStore) -> None:
    put = await store.put(BlobType.BINARY, b"%PDF-1.7", meta=BlobMeta("a.pdf", "application/pdf"))
    blob_id = put.info.blob_id

    assert put.created and put.info.meta == BlobMeta("a.pdf", "application/pdf")
    assert (await store.get(blob_id)).info.meta == put.info.meta
    assert (await store.stat(blob_id)) == put.info
    stream = await store.get_stream(blob_id, 4)
    try:
        assert stream.info.meta == put.info.meta
        assert b"".join([chunk async for chunk in stream]) == b"%PDF-1.7"
    finally:
        await stream.aclose()


async def test_the_first_writers_metadata_wins(store: BlobStore) -> None:
    first = await store.put(BlobType.JSON, b"[1, 2]", meta=REPORT)
    renamed = await store.put(BlobType.JSON, b"[1,2]", meta=BlobMeta("other.json"))
    bare = await store.put(BlobType.JSON, b"[1,2]")

    assert not renamed.created and renamed.info.meta == REPORT
    assert bare.info.meta == REPORT
    assert (await store.stat(first.info.blob_id)) == first.info


async def test_a_blob_stored_without_metadata_keeps_none(store: BlobStore) -> None:
    first = await store.put(BlobType.BINARY, b"anonymous")
    later = await store.put(BlobType.BINARY, b"anonymous", meta=REPORT)

    assert first.info.meta is NO_META or first.info.meta == NO_META
    assert later.info.meta == NO_META


@pytest.mark.parametrize("blob_type", [BlobType.BINARY, BlobType.JSON, BlobType.FLOW])
async def test_streamed_puts_keep_metadata(store: BlobStore, blob_type: BlobType) -> None:
    put = await store.put_stream(blob_type, chunks_of(b'{"a":', b" 1}"), meta=REPORT)

    assert put.info.blob_type is blob_type and put.info.meta == REPORT
    assert (await store.get(put.info.blob_id)).info.meta == REPORT


async def test_empty_metadata_fields_mean_none(store: BlobStore) -> None:
    put = await store.put(BlobType.BINARY, b"x", meta=BlobMeta("", "text/plain"))

    assert put.info.meta == BlobMeta(None, "text/plain")


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        (BlobMeta("a\nb.txt"), "control characters"),
        (BlobMeta("a\x00b"), "control characters"),
        (BlobMeta("\x85"), "control characters"),
        (BlobMeta("é" * (MAX_FILENAME_BYTES // 2 + 1)), "over the limit of 1024"),
        (BlobMeta("\ud800.txt"), "lone surrogate"),
        (BlobMeta(None, "text/plain; charset=\u00e9"), "printable ASCII"),
        (BlobMeta(None, "text/\tplain"), "printable ASCII"),
        (BlobMeta(None, "x" * 256), "over the limit of 255"),
    ],
)
async def test_unfit_metadata_is_refused_and_nothing_is_stored(
    store: BlobStore, memory: MemoryBackend, meta: BlobMeta, words: str
) -> None:
    for put in (
        store.put(BlobType.BINARY, b"never stored", meta=meta),
        store.put_stream(BlobType.BINARY, chunks_of(b"never stored"), meta=meta),
    ):
        with pytest.raises(InvalidArgument, match=words):
            await put
    assert await memory.find_missing([sha256_id(b"never stored")]) == [sha256_id(b"never stored")]


async def test_a_unicode_filename_at_the_limit_is_kept(store: BlobStore) -> None:
    name = "Ω" * (MAX_FILENAME_BYTES // 2)
    put = await store.put(BlobType.BINARY, b"greek", meta=BlobMeta(name))

    assert put.info.meta.filename == name


# -- the blob file format's metadata block ----------------------------------------------


@pytest.mark.parametrize(
    "meta",
    [REPORT, BlobMeta("only a name"), BlobMeta(None, "text/plain"), BlobMeta("名前.txt")],
)
def test_the_metadata_block_decodes_what_it_encodes(meta: BlobMeta) -> None:
    block = encode_meta(meta)
    header = decode_header(encode_header(BlobType.FLOW, 7, block))

    assert decode_meta(block) == meta
    assert header == (BlobType.FLOW, 7, len(block))
    assert header.file_size == HEADER_SIZE + 7 + len(block)


def test_a_blob_without_metadata_is_written_in_the_first_format() -> None:
    header = encode_header(BlobType.BINARY, 5, encode_meta(NO_META))

    assert header[:4] == b"CAB1" and header[5:8] == b"\0\0\0"
    assert decode_header(header) == (BlobType.BINARY, 5, 0)


def test_every_flipped_bit_of_a_metadata_block_is_noticed() -> None:
    block = encode_meta(REPORT)
    for index in range(len(block)):
        for bit in range(8):
            damaged = bytearray(block)
            damaged[index] ^= 1 << bit
            with pytest.raises(CorruptHeader):
                decode_meta(bytes(damaged))


def test_a_header_that_disagrees_with_its_version_is_refused() -> None:
    with_meta = bytearray(encode_header(BlobType.JSON, 3, encode_meta(REPORT)))
    with_meta[:4] = b"CAB1"  # a first-format header claiming a metadata block
    with_meta[16:20] = zlib.crc32(bytes(with_meta[:16])).to_bytes(4, "big")
    with pytest.raises(CorruptHeader, match="CAB1 header with"):
        decode_header(bytes(with_meta))
