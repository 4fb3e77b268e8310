"""The read cache decorator over the in-memory backend: hits, LRU by bytes, limits, and a
damaged cached copy never served (dropped, read again from the backend)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blobstore.errors import DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import NO_META, BlobMeta, BlobType
from blobstore.storage import read_cache_metrics
from blobstore.storage.base import OverLimit, ReadLimit
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.read_cache import ReadCache
from blobstore.storage.verifying import VerifyingBackend
from tests.rpc_helpers import sha256_id


@pytest.fixture
def behind() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def cache(behind: MemoryBackend, tmp_path: Path) -> ReadCache:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "left-by-a-previous-run").write_bytes(b"x")
    cache = ReadCache(behind, tmp_path / "cache", max_bytes=10_000, max_blob_bytes=4_000)
    cache.open()
    assert list((tmp_path / "cache").iterdir()) == []
    return cache


async def put(cache: ReadCache, data: bytes, meta: BlobMeta = NO_META) -> BlobId:
    await cache.put(sha256_id(data), BlobType.BINARY, data, meta)
    return sha256_id(data)


async def test_a_read_blob_is_served_from_the_cache_after(
    cache: ReadCache, behind: MemoryBackend
) -> None:
    meta = BlobMeta(filename="a.bin")
    blob_id = await put(cache, os.urandom(1000), meta)
    first = await cache.get(blob_id)
    behind.corrupt(blob_id, b"the backend would now fail verification")
    for _ in range(3):
        again = await VerifyingBackend(cache).get(blob_id)
        assert again.data == first.data and again.info.meta == meta
    assert (cache.misses, cache.hits) == (1, 3)
    stream = await cache.get_stream(blob_id, 300)
    assert b"".join([chunk async for chunk in stream]) == first.data
    assert await cache.stat(blob_id) == first.info
    assert await cache.find_missing([blob_id]) == []


async def test_least_recently_used_out_by_bytes_and_big_blobs_never_in(cache: ReadCache) -> None:
    ids = [await put(cache, os.urandom(3000)) for _ in range(4)]
    big = await put(cache, os.urandom(5000))
    for blob_id in [*ids[:3], ids[0], big]:  # ids[0] used again: ids[1] is the oldest
        await cache.get(blob_id)
    await cache.get(ids[3])
    assert cache.cached_bytes <= 10_000
    assert cache.misses == 5 and cache.hits == 1
    await cache.get(ids[0])  # still cached
    await cache.get(ids[1])  # evicted: read from the backend again
    assert (cache.misses, cache.hits) == (6, 2)


async def test_a_damaged_cached_copy_is_dropped_and_read_again(
    cache: ReadCache, tmp_path: Path
) -> None:
    data = os.urandom(2000)
    blob_id = await put(cache, data)
    await cache.get(blob_id)
    path = tmp_path / "cache" / hex_digest(blob_id)
    path.write_bytes(b"\0" + path.read_bytes()[1:])
    assert (await VerifyingBackend(cache).get(blob_id)).data == data
    assert cache.misses == 2 and path.read_bytes() == data  # cached again, soundly


async def test_a_bad_backend_copy_is_never_cached_and_is_quarantined(
    cache: ReadCache, behind: MemoryBackend
) -> None:
    blob_id = await put(cache, os.urandom(2000))
    behind.corrupt(blob_id, os.urandom(2000))
    with pytest.raises(DataLoss):
        await VerifyingBackend(cache).get(blob_id)
    assert cache.cached_bytes == 0 and [q[0] for q in behind.quarantined] == [blob_id]


async def test_limits_are_applied_before_reading(cache: ReadCache) -> None:
    blob_id = await put(cache, os.urandom(3000))
    await cache.get(blob_id)
    reserved: list[int] = []
    with pytest.raises(OverLimit):
        await cache.get(blob_id, ReadLimit(max_size=100, reserve=reserved.append))
    assert reserved == [] and cache.hits == 0


async def test_the_caches_metrics_count_hits_misses_and_evictions(cache: ReadCache) -> None:
    """The read cache's own families (read_cache_metrics.py), as a scrape shows them."""
    registry = CollectorRegistry()
    read_cache_metrics.watch(cache, registry)
    ids = [await put(cache, os.urandom(3000)) for _ in range(4)]
    for blob_id in ids:  # 4 misses; the 4th copy passes the 10 000-byte bound: 1 eviction
        await cache.get(blob_id)
    await cache.get(ids[-1])  # a hit
    scraped = {
        sample.name: sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    assert scraped == {
        "blobstore_read_cache_hits_total": 1.0,
        "blobstore_read_cache_misses_total": 4.0,
        "blobstore_read_cache_evictions_total": 1.0,
        "blobstore_read_cache_blobs": 3.0,
        "blobstore_read_cache_bytes": 9000.0,
        "blobstore_read_cache_max_bytes": 10000.0,
    }
