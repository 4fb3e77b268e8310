"""The storage Protocol's contract, run against every backend (memory, file system, object store).

What the server relies on from any medium: write-once (the first writer and its
type win, also under a race), streamed puts of any size that store nothing until
commit, reads bounded by a ReadLimit before any content is read, chunks of at most
the asked size, and — behind VerifyingBackend, as the server always runs them —
a damaged copy never served but reported DataLoss and moved out of service. Each
blob keeps the type, filename and content type of its first writer, whichever road
(unary, streamed small, streamed large) stored it. Deleting is idempotent and final
(the blob is NOT_FOUND, absent from the listing, and can be put again).
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from blobstore.errors import BlobNotFound, DataLoss
from blobstore.ids import BlobId
from blobstore.model import NO_META, BlobMeta, BlobType, PutResult
from blobstore.storage.base import OverLimit, ReadLimit, StreamIntent
from blobstore.storage.verifying import VerifyingBackend
from tests.contract.conftest import Kit
from tests.rpc_helpers import sha256_id

META = BlobMeta(filename="résumé 2026 (final).pdf", content_type="application/pdf; q=0.5")


async def stream_put(
    kit: Kit,
    data: bytes,
    blob_type: BlobType,
    meta: BlobMeta = NO_META,
    chunk: int = 1 << 20,
    *,
    promised: bool = False,
) -> PutResult:
    """A streamed put; `promised`: its id, type and metadata are told before the content, as
    when the client sends expected_id (the object store then uploads in place)."""
    intent = StreamIntent(sha256_id(data), blob_type, meta, len(data)) if promised else None
    writer = await kit.backend.open_writer(intent)
    hasher = hashlib.sha256()
    try:
        for start in range(0, len(data), chunk):
            await writer.write(memoryview(data)[start : start + chunk], hasher.update)
        assert hasher.hexdigest() == sha256_id(data).removeprefix("sha256:")
        return await writer.commit(sha256_id(data), blob_type, meta)
    finally:
        await writer.abort()


async def read_stream(kit: Kit, blob_id: BlobId, chunk_size: int) -> list[bytes]:
    stream = await VerifyingBackend(kit.backend).get_stream(blob_id, chunk_size)
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


async def test_put_get_stat_find_missing(kit: Kit) -> None:
    data = os.urandom(1000)
    blob_id, absent = sha256_id(data), sha256_id(b"never stored " + os.urandom(8))
    result = await kit.backend.put(blob_id, BlobType.BINARY, data)
    assert result.created and result.info.size == 1000
    blob = await VerifyingBackend(kit.backend).get(blob_id)
    assert blob.data == data and blob.info.blob_type is BlobType.BINARY
    info = await kit.backend.stat(blob_id)
    assert info is not None and (info.blob_type, info.size) == (BlobType.BINARY, 1000)
    assert await kit.backend.stat(absent) is None
    assert await kit.backend.find_missing([absent, blob_id, absent]) == [absent, absent]


async def test_the_first_writer_and_its_type_win(kit: Kit) -> None:
    data = b'{"a":1}' + os.urandom(4).hex().encode()
    blob_id = sha256_id(data)
    first = await kit.backend.put(blob_id, BlobType.JSON, data)
    again = await kit.backend.put(blob_id, BlobType.BINARY, data)
    assert first.created and not again.created
    assert again.info.blob_type is BlobType.JSON


async def test_racing_writers_of_one_id_store_it_once(kit: Kit) -> None:
    data = os.urandom(5000)
    results = await asyncio.gather(
        *(kit.backend.put(sha256_id(data), BlobType.BINARY, data) for _ in range(8))
    )
    assert sum(result.created for result in results) == 1
    assert (await VerifyingBackend(kit.backend).get(sha256_id(data))).data == data


async def test_missing_blobs(kit: Kit) -> None:
    absent = sha256_id(os.urandom(16))
    with pytest.raises(BlobNotFound):
        await kit.backend.get(absent)
    with pytest.raises(BlobNotFound):
        await kit.backend.get_stream(absent, 1024)


async def test_a_read_limit_refuses_before_reading(kit: Kit) -> None:
    data = os.urandom(3000)
    await kit.backend.put(sha256_id(data), BlobType.BINARY, data)
    reserved: list[int] = []
    with pytest.raises(OverLimit) as refused:
        await kit.backend.get(sha256_id(data), ReadLimit(max_size=2999, reserve=reserved.append))
    assert refused.value.info.size == 3000 and reserved == []
    blob = await kit.backend.get(sha256_id(data), ReadLimit(max_size=3000, reserve=reserved.append))
    assert blob.data == data and reserved == [3000]


@pytest.mark.parametrize("path", ["small", "large"])
async def test_streamed_put_and_chunked_read(kit: Kit, path: str) -> None:
    data = os.urandom(100_000 if path == "small" else kit.large)
    result = await stream_put(kit, data, BlobType.BINARY)
    assert result.created and result.info.size == len(data)
    chunks = await read_stream(kit, sha256_id(data), 64 * 1024)
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 64 * 1024
    assert kit.leftovers() == []


@pytest.mark.parametrize("promised", [False, True], ids=["unpromised", "promised"])
@pytest.mark.parametrize("size", ["small", "large"])
async def test_streamed_put_of_a_stored_id_keeps_the_first(
    kit: Kit, size: str, promised: bool
) -> None:
    data = os.urandom(10_000 if size == "small" else kit.large)
    await kit.backend.put(sha256_id(data), BlobType.JSON, data, META)
    again = await stream_put(kit, data, BlobType.BINARY, promised=promised)
    assert not again.created and again.info.blob_type is BlobType.JSON
    assert again.info.meta == META
    assert (await VerifyingBackend(kit.backend).get(sha256_id(data))).data == data
    assert kit.leftovers() == []


async def test_a_promised_stream_stored_by_another_writer_meanwhile_keeps_the_first(
    kit: Kit,
) -> None:
    """Another replica stores the id while our in-place upload runs: ours is dropped, never
    completed over it (the first writer's metadata stays), and nothing is left behind."""
    data = os.urandom(kit.large)
    blob_id = sha256_id(data)
    writer = await kit.backend.open_writer(StreamIntent(blob_id, BlobType.BINARY, NO_META))
    try:
        for start in range(0, len(data), 1 << 20):
            await writer.write(data[start : start + (1 << 20)])
        first = await kit.backend.put(blob_id, BlobType.FLOW, data, META)
        assert first.created
        result = await writer.commit(blob_id, BlobType.BINARY, NO_META)
    finally:
        await writer.abort()
    assert not result.created and result.info.blob_type is BlobType.FLOW
    info = await kit.backend.stat(blob_id)
    assert info is not None and (info.blob_type, info.meta) == (BlobType.FLOW, META)
    assert (await VerifyingBackend(kit.backend).get(blob_id)).data == data
    assert kit.leftovers() == []


async def test_an_aborted_promised_stream_shows_nothing_under_its_id(kit: Kit) -> None:
    """A client that promised an id and then failed (wrong content, cancelled) leaves no
    object under that id: an in-place upload is invisible until completed."""
    data = os.urandom(kit.large)
    blob_id = sha256_id(data)
    writer = await kit.backend.open_writer(StreamIntent(blob_id, BlobType.BINARY, NO_META))
    for start in range(0, len(data), 1 << 20):
        await writer.write(data[start : start + (1 << 20)])
    await writer.abort()
    assert await kit.backend.stat(blob_id) is None
    assert kit.leftovers() == []


async def test_an_aborted_stream_stores_nothing_and_leaves_nothing(kit: Kit) -> None:
    data = os.urandom(kit.large)
    writer = await kit.backend.open_writer()
    for start in range(0, len(data), 1 << 20):
        await writer.write(data[start : start + (1 << 20)])
    await writer.abort()
    await writer.abort()
    assert await kit.backend.find_missing([sha256_id(data)]) == [sha256_id(data)]
    assert kit.leftovers() == []


async def test_a_cancelled_stream_stores_nothing(kit: Kit) -> None:
    data = os.urandom(kit.large)

    async def put_forever() -> None:
        writer = await kit.backend.open_writer()
        try:
            for start in range(0, len(data), 1 << 20):
                await writer.write(data[start : start + (1 << 20)])
            await asyncio.Event().wait()
        finally:
            await writer.abort()

    task = asyncio.ensure_future(put_forever())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await kit.backend.find_missing([sha256_id(data)]) == [sha256_id(data)]
    assert kit.leftovers() == []


@pytest.mark.parametrize("read", ["get", "get_stream"])
async def test_a_damaged_copy_is_never_served_and_is_moved_aside(kit: Kit, read: str) -> None:
    data = os.urandom(200_000)
    blob_id = sha256_id(data)
    await kit.backend.put(blob_id, BlobType.BINARY, data)
    kit.corrupt(blob_id)
    verifying = VerifyingBackend(kit.backend)
    with pytest.raises(DataLoss):
        if read == "get":
            await verifying.get(blob_id)
        else:
            await read_stream(kit, blob_id, 64 * 1024)
    assert await kit.backend.stat(blob_id) is None
    # The id can be stored again, soundly.
    assert (await kit.backend.put(blob_id, BlobType.BINARY, data)).created
    assert (await verifying.get(blob_id)).data == data


@pytest.mark.parametrize("road", ["unary", "stream-small", "stream-large", "stream-large-promised"])
async def test_type_and_metadata_are_kept_by_every_road(kit: Kit, road: str) -> None:
    data = os.urandom(kit.large if road.startswith("stream-large") else 5000)
    if road == "unary":
        result = await kit.backend.put(sha256_id(data), BlobType.FLOW, data, META)
    else:
        promised = road.endswith("promised")
        result = await stream_put(kit, data, BlobType.FLOW, META, promised=promised)
    assert result.created and result.info.meta == META and result.info.blob_type is BlobType.FLOW
    verifying = VerifyingBackend(kit.backend)
    for info in (
        await kit.backend.stat(sha256_id(data)),
        (await verifying.get(sha256_id(data))).info,
        (await verifying.get_stream(sha256_id(data), 1 << 20)).info,
    ):
        assert info is not None
        assert (info.blob_type, info.size, info.meta) == (BlobType.FLOW, len(data), META)
    # The first writer's metadata wins; a blob stored without metadata has none.
    again = await kit.backend.put(
        sha256_id(data), BlobType.BINARY, data, BlobMeta(filename="other")
    )
    assert not again.created and again.info.meta == META
    plain = os.urandom(100)
    assert (await kit.backend.put(sha256_id(plain), BlobType.BINARY, plain)).info.meta == NO_META
    assert (await kit.backend.stat(sha256_id(plain))).meta == NO_META  # type: ignore[union-attr]


async def test_delete_is_idempotent_and_the_listing_follows(kit: Kit) -> None:
    backend = kit.backend
    keep, gone = b"keep" * 1000, b"gone" * 1000
    keep_id, gone_id = sha256_id(keep), sha256_id(gone)
    await backend.put(keep_id, BlobType.BINARY, keep)
    await backend.put(gone_id, BlobType.BINARY, gone)
    listed = {blob.blob_id: blob async for batch in backend.scan() for blob in batch}
    assert {keep_id, gone_id} <= set(listed)
    assert listed[keep_id].size >= len(keep)  # at most an upper bound
    absent = BlobId("sha256:" + "0" * 64)
    assert await backend.delete([gone_id, gone_id, absent]) == [gone_id]
    with pytest.raises(BlobNotFound):
        await backend.get(gone_id)
    assert await backend.stat(gone_id) is None
    assert await backend.find_missing([keep_id, gone_id]) == [gone_id]
    assert await backend.delete([gone_id]) == []
    after = {blob.blob_id async for batch in backend.scan() for blob in batch}
    assert keep_id in after and gone_id not in after
    assert (await backend.put(gone_id, BlobType.BINARY, gone)).created
    assert (await backend.get(gone_id)).data == gone
