"""The store's rules over the in-memory backend (no processes, no disk): dedup, the first
type wins, a bad copy is quarantined and never served, a streamed put stores nothing until
it commits, and a read over the unary limit is refused before any content is returned."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from blobstore.errors import BlobNotFound, DataLoss, DigestMismatch, Overloaded, UseStreaming
from blobstore.model import BlobType
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.verifying import VerifyingBackend
from blobstore.store import BlobStore, Limits
from tests.rpc_helpers import sha256_id


@pytest.fixture
def store(memory: MemoryBackend) -> BlobStore:
    return BlobStore(VerifyingBackend(memory), Limits(max_unary_bytes=1000))


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_the_same_content_is_stored_once(store: BlobStore, memory: MemoryBackend) -> None:
    first = await store.put(BlobType.BINARY, b"hello")
    again = await store.put(BlobType.BINARY, b"hello")

    assert first.created and not again.created
    assert first.info == again.info
    assert await memory.find_missing([first.info.blob_id, sha256_id(b"other")]) == [
        sha256_id(b"other")
    ]


async def test_json_is_stored_canonical_and_the_same_value_dedups(store: BlobStore) -> None:
    first = await store.put(BlobType.JSON, b'{"b": 1, "a": [1.0, 2]}')
    again = await store.put(BlobType.JSON, b'{"a":[1,2],"b":1}')

    assert not again.created and again.info.blob_id == first.info.blob_id
    assert (await store.get(first.info.blob_id)).data == b'{"a":[1,2],"b":1}'


async def test_the_first_type_wins(store: BlobStore) -> None:
    json_first = await store.put(BlobType.JSON, b"[1]")
    binary_later = await store.put(BlobType.BINARY, b"[1]")

    assert not binary_later.created
    assert binary_later.info.blob_type is BlobType.JSON
    assert (await store.get(json_first.info.blob_id)).info.blob_type is BlobType.JSON


async def test_a_copy_that_does_not_match_its_id_is_quarantined_and_never_served(
    store: BlobStore, memory: MemoryBackend
) -> None:
    blob_id = (await store.put(BlobType.BINARY, b"precious")).info.blob_id
    memory.corrupt(blob_id, b"precioUs")

    with pytest.raises(DataLoss):
        await store.get(blob_id)
    assert memory.quarantined == [(blob_id, b"precioUs", "content does not match its SHA-256 id")]
    with pytest.raises(BlobNotFound):
        await store.get(blob_id)
    # A put of the content stores a sound copy again.
    assert (await store.put(BlobType.BINARY, b"precious")).created
    assert (await store.get(blob_id)).data == b"precious"


@pytest.mark.parametrize("road", ["unary", "stream", "stream_expected_id", "json_text_again"])
async def test_a_reput_over_a_copy_that_does_not_match_stores_a_sound_one(
    store: BlobStore, memory: MemoryBackend, road: str
) -> None:
    """Never answered from a bad copy, whichever road the put takes (issue 10, point 1)."""
    text = b'{"a": [1, 2]}'
    if road == "json_text_again":
        blob_id = (await store.put(BlobType.JSON, text)).info.blob_id
        content = b'{"a":[1,2]}'
    else:
        content = b"precious content"
        blob_id = (await store.put(BlobType.BINARY, content)).info.blob_id
    memory.corrupt(blob_id, content[:-1] + b"X")

    if road == "unary":
        again = await store.put(BlobType.BINARY, content)
    elif road == "stream":
        again = await store.put_stream(BlobType.BINARY, chunks_of(content))
    elif road == "stream_expected_id":
        again = await store.put_stream(
            BlobType.BINARY, chunks_of(content), total_size=len(content), expected_id=blob_id
        )
    else:
        again = await store.put(BlobType.JSON, text)  # remembered by the store: not parsed

    assert again.info.blob_id == blob_id
    assert (await store.get(blob_id)).data == content
    assert [(entry[0], entry[1]) for entry in memory.quarantined] == [
        (blob_id, content[:-1] + b"X")
    ]


async def test_a_reput_of_a_sound_copy_is_answered_from_it(
    store: BlobStore, memory: MemoryBackend
) -> None:
    content = b"x" * 3000  # over the unary limit of 1000: the expected_id check streams it
    blob_id = (await store.put_stream(BlobType.BINARY, chunks_of(content))).info.blob_id
    for again in (
        await store.put_stream(BlobType.BINARY, chunks_of(content)),
        await store.put_stream(BlobType.BINARY, chunks_of(), expected_id=blob_id),
    ):
        assert (again.info.blob_id, again.created) == (blob_id, False)
    assert memory.quarantined == []


async def test_a_stream_of_a_bad_copy_never_hands_out_its_last_chunk(
    store: BlobStore, memory: MemoryBackend
) -> None:
    blob_id = (await store.put(BlobType.BINARY, b"abcdefgh")).info.blob_id
    memory.corrupt(blob_id, b"abcdefgX")
    stream = await store.get_stream(blob_id, chunk_size=4)
    received = []
    with pytest.raises(DataLoss):
        async for chunk in stream:
            received.append(chunk)
    await stream.aclose()

    assert received == [b"abcd"]
    assert [entry[0] for entry in memory.quarantined] == [blob_id]


async def test_a_streamed_put_commits_what_was_sent(
    store: BlobStore, memory: MemoryBackend
) -> None:
    result = await store.put_stream(BlobType.BINARY, chunks_of(b"ab", b"cd", b""), total_size=4)

    assert result.created and result.info.blob_id == sha256_id(b"abcd")
    assert (await store.get(result.info.blob_id)).data == b"abcd"
    assert memory.open_writers == 0


async def test_a_failed_streamed_put_stores_nothing(
    store: BlobStore, memory: MemoryBackend
) -> None:
    with pytest.raises(DigestMismatch):
        await store.put_stream(
            BlobType.BINARY, chunks_of(b"ab", b"cd"), expected_id=sha256_id(b"something else")
        )

    assert await memory.stat(sha256_id(b"abcd")) is None
    assert memory.open_writers == 0  # the writer was aborted


async def test_a_stream_cut_off_by_its_sender_stores_nothing(
    store: BlobStore, memory: MemoryBackend
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        await store.put_stream(BlobType.BINARY, broken())

    assert await memory.stat(sha256_id(b"partial")) is None
    assert memory.open_writers == 0


async def test_a_read_over_the_unary_limit_is_refused_before_admission(
    store: BlobStore,
) -> None:
    big = (await store.put(BlobType.BINARY, b"x" * 1001)).info.blob_id
    small = (await store.put(BlobType.BINARY, b"x" * 1000)).info.blob_id
    asked: list[int] = []

    with pytest.raises(UseStreaming, match="1001 bytes, over the unary limit of 1000"):
        await store.get(big, asked.append)
    assert asked == []  # never reserved: it would not be read
    assert (await store.get(small, asked.append)).data == b"x" * 1000
    assert asked == [1000]

    def refuse(size: int) -> None:
        raise Overloaded(f"no room for {size} bytes")

    with pytest.raises(Overloaded, match="1000 bytes"):
        await store.get(small, refuse)
    # A large blob is still readable as a stream.
    stream = await store.get_stream(big, chunk_size=600)
    assert b"".join([chunk async for chunk in stream]) == b"x" * 1001
    await stream.aclose()
