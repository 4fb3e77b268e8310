"""The eviction decorator, the usage index and its snapshot, durations: without processes.

EvictingBackend runs over MemoryBackend here (the store rules' reference backend);
the same decorator over real files, journals and crashes is tested in
tests/process/test_bounded_storage.py and the contract suite.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from blobstore.durations import parse_duration
from blobstore.errors import BlobNotFound, StorageFull
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.model import BlobType
from blobstore.storage.base import StoredBlob
from blobstore.storage.eviction import Caps, EvictingBackend
from blobstore.storage.factory import StorageSettings, UnknownStorage, open_storage
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.retention import ListingRetention
from blobstore.storage.usage import UsageIndex, load_snapshot, save_snapshot


def blob(seed: int, size: int = 100) -> tuple[BlobId, bytes]:
    data = seed.to_bytes(4, "big") * (size // 4)
    return blob_id_from_digest(hashlib.sha256(data).hexdigest()), data


async def until(condition: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0),
                          ("7d", 604800.0), ("2w", 1209600.0), ("0.5", 0.5), (" 1D ", 86400.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "7x", "-1s", "nan", "inf", "seven days"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_object_store_caps_need_a_cache_folder() -> None:
    settings = StorageSettings(url="s3://bucket/prefix?endpoint=http://127.0.0.1:1", max_bytes=1)
    with pytest.raises(UnknownStorage, match="--cache-dir"):
        open_storage(settings)  # refused before connecting to anything


async def test_lru_eviction_keeps_the_recently_used_and_the_cap() -> None:
    memory = MemoryBackend()
    evicting = EvictingBackend(memory, Caps(max_blobs=20))
    await evicting.start()
    try:
        first_id, first = blob(0)
        await evicting.put(first_id, BlobType.BINARY, first)
        for seed in range(1, 60):
            await evicting.get(first_id)  # the oldest put, kept in use
            blob_id, data = blob(seed)
            await evicting.put(blob_id, BlobType.BINARY, data)
            assert len(evicting.index) <= 20
        await until(lambda: len(evicting.index) <= 19)  # down to the low-water mark
        assert await evicting.stat(first_id) is not None
        assert await memory.stat(blob(1)[0]) is None  # the least recently used went first
        with pytest.raises(BlobNotFound):
            await evicting.get(blob(2)[0])
        assert len([b async for batch in memory.scan() for b in batch]) == len(evicting.index)
    finally:
        await evicting.stop()


async def test_storage_full_when_everything_is_younger_than_min_age() -> None:
    evicting = EvictingBackend(MemoryBackend(), Caps(max_bytes=1000, min_age=3600))
    await evicting.start()
    try:
        for seed in range(10):
            blob_id, data = blob(seed, 100)
            await evicting.put(blob_id, BlobType.BINARY, data)
        blob_id, data = blob(99, 100)
        with pytest.raises(StorageFull, match="--min-age"):
            await evicting.put(blob_id, BlobType.BINARY, data)
        with pytest.raises(StorageFull, match="larger than"):
            await evicting.put(*blob(98, 2000)[:1], BlobType.BINARY, blob(98, 2000)[1])
        assert evicting.index.total_bytes == 1000
        known_id, known = blob(3, 100)  # a put of stored content needs no room
        assert not (await evicting.put(known_id, BlobType.BINARY, known)).created
        assert await evicting.delete([known_id, known_id]) == [known_id]
        assert (await evicting.put(blob_id, BlobType.BINARY, data)).created
    finally:
        await evicting.stop()


async def test_prune_and_delete_are_idempotent() -> None:
    evicting = EvictingBackend(MemoryBackend(), Caps())
    await evicting.start()
    try:
        ids = []
        for seed in range(5):
            blob_id, data = blob(seed)
            await evicting.put(blob_id, BlobType.BINARY, data)
            ids.append(blob_id)
        clock = evicting.index.clock
        evicting.index.clock = lambda: clock() + 100  # everything is 100 s old now
        report = await evicting.prune(50, dry_run=True)
        assert report.blob_ids == ids and report.total_bytes == 500
        assert len(evicting.index) == 5
        assert (await evicting.prune(50)).blob_ids == ids
        assert (await evicting.prune(50)).blob_ids == []
        assert await evicting.delete(ids) == []
    finally:
        await evicting.stop()


def test_snapshot_round_trip_and_damage(tmp_path: Path) -> None:
    index = UsageIndex()
    ticks = iter(range(1, 100))
    index.clock = lambda: float(next(ticks))  # distinct times: the order read back is by use
    ids = [blob(seed)[0] for seed in range(3)]
    for blob_id in ids:
        index.stored(blob_id, 100)
    index.touch(ids[0])
    path = tmp_path / "usage.snapshot"
    save_snapshot(path, index.records())
    known = load_snapshot(path)
    assert list(known) == [ids[1], ids[2], ids[0]]  # least recently used first
    loaded = UsageIndex()
    assert loaded.load(path)
    assert list(loaded.entries) == [ids[1], ids[2], ids[0]]
    # Rebuilt from a listing: what is not on disk is dropped, new files join by their time.
    new_id = blob(7)[0]
    listing = [StoredBlob(ids[0], 0, 0.0), StoredBlob(ids[2], 0, 0.0), StoredBlob(new_id, 50, 1.0)]
    rebuilt = UsageIndex()
    rebuilt.rebuild(listing, known)
    assert list(rebuilt.entries) == [new_id, ids[2], ids[0]]
    assert rebuilt.total_bytes == 250
    path.write_bytes(path.read_bytes()[:-1])  # torn
    assert load_snapshot(path) == {}
    assert not path.exists()


async def test_prune_from_a_listing() -> None:
    memory = MemoryBackend()
    ids = []
    for seed in range(3):
        blob_id, data = blob(seed)
        await memory.put(blob_id, BlobType.BINARY, data)
        ids.append(blob_id)
        memory._blobs[blob_id].stored_at -= 100  # stored 100 s ago
    retention = ListingRetention(memory)
    late_id, late = blob(9)
    await memory.put(late_id, BlobType.BINARY, late)
    report = await retention.prune(50, dry_run=True)
    assert set(report.blob_ids) == set(ids) and report.total_bytes == 300
    assert await memory.find_missing(ids) == []
    assert set((await retention.prune(50)).blob_ids) == set(ids)
    assert await memory.find_missing([*ids, late_id]) == ids
    assert retention.last_use(late_id) is None


async def test_a_snapshot_is_loaded_then_checked_against_the_listing(tmp_path: Path) -> None:
    memory = MemoryBackend()
    stored = [blob(seed) for seed in range(3)]
    for blob_id, data in stored:
        await memory.put(blob_id, BlobType.BINARY, data)
    phantom = blob(50)[0]  # in the snapshot, no longer stored
    index = UsageIndex()
    for blob_id in (stored[0][0], phantom):
        index.stored(blob_id, 100)
    snapshot = tmp_path / "usage.snapshot"
    save_snapshot(snapshot, index.records())
    evicting = EvictingBackend(memory, Caps(), snapshot=snapshot)
    await evicting.start()
    try:
        assert set(evicting.index.entries) >= {stored[0][0], phantom}  # the snapshot, at once
        await until(lambda: set(evicting.index.entries) == {b for b, _ in stored})
        assert evicting.index.total_bytes == 300
    finally:
        await evicting.stop()
    assert set(load_snapshot(snapshot)) == {b for b, _ in stored}


class _SlowListing(MemoryBackend):
    """A MemoryBackend whose listing, once taken, waits to be let go: what the server
    sees of a million-blob folder, whose listing takes seconds while calls go on."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = asyncio.Event()
        self.go_on = asyncio.Event()

    async def scan(self, known: Any = ()) -> AsyncIterator[list[StoredBlob]]:
        async for batch in super().scan(known):
            yield batch
        self.listed.set()
        await self.go_on.wait()


async def test_a_blob_removed_during_the_listing_check_does_not_come_back(tmp_path: Path) -> None:
    """The snapshot knows none of these blobs (stored after it was written, before a
    crash); the listing finds them; meanwhile one is deleted (evictions take the same
    road, _remove) and another deleted and stored again. The first may not come back as
    an entry without a blob (counted against the cap, never found); the second stays."""
    memory = _SlowListing()
    stored = [blob(seed) for seed in range(4)]
    for blob_id, data in stored:
        await memory.put(blob_id, BlobType.BINARY, data)
    snapshot = tmp_path / "usage.snapshot"
    save_snapshot(snapshot, UsageIndex().records())  # an empty snapshot: loaded, then checked
    evicting = EvictingBackend(memory, Caps(), snapshot=snapshot)
    await evicting.start()
    try:
        await memory.listed.wait()
        deleted = stored[0][0]
        assert await evicting.delete([deleted]) == [deleted]
        again, again_data = stored[1]
        await evicting.delete([again])
        await evicting.put(again, BlobType.BINARY, again_data)  # stored again since: kept
        memory.go_on.set()
        await until(lambda: evicting._stored_since is None)
        assert deleted not in evicting.index.entries
        assert again in evicting.index.entries
        # Every entry is a stored blob, and the byte count is theirs.
        assert set(await memory.find_missing(list(evicting.index.entries))) == set()
        assert evicting.index.total_bytes == 100 * len(evicting.index.entries)
    finally:
        await evicting.stop()
