"""A BlobBackend decorator: a size cap with LRU eviction, retention, and deletes.

Puts and reads record a use in the usage index (usage.py: in memory, snapshot
now and then). With a cap (`max_bytes`, `max_blobs`), once the stored total passes
the high-water mark (HIGH_WATER of the cap) a background task removes the least
recently used blobs, in batches through the inner backend's delete(), down to the
low-water mark (LOW_WATER). Requests never do that work; a put waits only when the
cap itself would be passed before the evictor has caught up (back-pressure), and
gets StorageFull at once when nothing can be evicted: every blob used within
`min_age`, or being written. So the total on disk never passes the cap: a put
reserves its size before anything is written, and releases it if it stored nothing.

Races, each decided on the event loop (no locks):
* a put of an id being removed waits until the removal is done, then stores the
  blob again: it is acknowledged only for a copy that stays;
* a removal skips (eviction) or waits for (delete) puts of its ids in progress;
* a read that has opened the file keeps its content (an unlinked file lives on while
  open, and VerifyingBackend still checks every byte); one that has not gets NOT_FOUND.

Crashes: the inner delete() checkpoints the group-commit journal before it
unlinks anything (filesystem/group_commit.py), so a replay never brings a removed
blob back; blobs never reported removed are still there after a kill -9.

Also the server's retention tools: prune() (blobs not used for a given time) and
last_use() for Stat.

Why one module of ~500 lines: the cap, the races and the removals share one set of
counters (reserved, waiting, being removed, in progress) decided on the event loop;
split apart they would have to share that private state. The index and its
snapshot are in usage.py, the Retention interface in retention.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blobstore.errors import StorageFull
from blobstore.ids import BlobId
from blobstore.model import NO_META, Blob, BlobMeta, BlobType, PutResult
from blobstore.storage.base import (
    NO_LIMIT,
    BlobBackend,
    BlobStream,
    BlobWriter,
    CountingWriter,
    ForwardingBackend,
    PutItem,
    PutOutcome,
    ReadLimit,
    StoredBlob,
    StreamIntent,
    put_each,
)
from blobstore.storage.metrics import StorageMetrics
from blobstore.storage.retention import BATCH, PruneReport
from blobstore.storage.usage import SNAPSHOT_INTERVAL, UsageIndex, compare, save_snapshot

log = logging.getLogger(__name__)

HIGH_WATER = 0.95
LOW_WATER = 0.90
PUT_WAIT_SECONDS = 30.0
"""Longest a put waits at the cap for the evictor before it gets StorageFull."""
LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Caps:
    max_bytes: int = 0
    """0: no cap."""
    max_blobs: int = 0
    min_age: float = 0.0
    """Seconds since its last use during which a blob is never evicted."""

    @property
    def capped(self) -> bool:
        return self.max_bytes > 0 or self.max_blobs > 0


class EvictingBackend(ForwardingBackend):
    """Wraps a backend; see the module docstring. start() before use, stop() after."""

    def __init__(
        self,
        inner: BlobBackend,
        caps: Caps,
        *,
        snapshot: Path | None = None,
        metrics: StorageMetrics | None = None,
    ) -> None:
        super().__init__(inner)
        self.caps = caps
        self.index = UsageIndex()
        self._snapshot = snapshot
        self._reserved_bytes = 0
        self._reserved_blobs = 0
        self._evicting_bytes = 0
        self._evicting_blobs = 0
        self._waiting_bytes = 0  # of puts waiting at the cap for the evictor
        self._waiting_blobs = 0
        self._pending: dict[BlobId, int] = {}
        self._doomed: dict[BlobId, asyncio.Event] = {}
        self._put_done = asyncio.Event()
        self._freed = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Puts, and removals, while the listing is compared (None: no listing under way).
        self._stored_since: set[BlobId] | None = None
        self._removed_since: set[BlobId] = set()
        self._metrics = metrics
        self._unlogged = [0, 0]  # evicted blobs and bytes not logged yet
        self._logged_at = 0.0

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Loads the index (usage.py: the snapshot, checked against the listing in the
        background; without one, the listing first); starts the evictor and the snapshot
        writer."""
        started = time.monotonic()
        snapshot = self._snapshot
        loaded = snapshot is not None and await asyncio.to_thread(self.index.load, snapshot)
        if not loaded:
            listing: list[StoredBlob] = []
            async for batch in self._inner.scan():
                listing += batch
            await asyncio.to_thread(self.index.rebuild, listing, {})
        log.log(
            logging.INFO if len(self.index) else logging.DEBUG,  # an empty store: no news
            "usage index: %d blob(s), %d byte(s), %s in %.2f s",
            len(self.index),
            self.index.total_bytes,
            "loaded from its snapshot" if loaded else "rebuilt from the folder",
            time.monotonic() - started,
        )
        if self._metrics is not None:
            self._metrics.stored_bytes.set_function(lambda: self.index.total_bytes)
            self._metrics.stored_blobs.set_function(lambda: len(self.index))
        self._tasks = [asyncio.ensure_future(self._evictor())]
        if snapshot is not None:
            self._tasks.append(asyncio.ensure_future(self._snapshots(snapshot)))
        if loaded:
            self._stored_since = set()
            self._tasks.append(asyncio.ensure_future(self._reconcile()))
        self._wake.set()

    async def _reconcile(self) -> None:
        """Compares the loaded snapshot with the folder's listing, while serving."""
        started = time.monotonic()
        listing: list[StoredBlob] = []
        try:
            async for batch in self._inner.scan(self.index.entries):
                listing += batch
            # The keys as a flat copy on the loop (tens of ms for a million), the
            # comparison on a thread: done on the loop, it held every call for seconds.
            new, gone = await asyncio.to_thread(
                compare, listing, list(dict.keys(self.index.entries))
            )
        except Exception as exc:  # the snapshot's view stays; the next start tries again
            log.warning("could not list the stored blobs: %s", exc)
            return
        finally:
            kept, self._stored_since = self._stored_since or set(), None
            removed, self._removed_since = self._removed_since, set()
        added, dropped = self.index.apply(new, gone, kept, removed)
        log.info(
            "usage index checked against %d stored blob(s) in %.2f s: %d added, %d dropped",
            len(listing),
            time.monotonic() - started,
            added,
            dropped,
        )
        self._check_water()

    async def stop(self) -> None:
        """Ends the background tasks and writes the snapshot; a second call does nothing."""
        if not self._tasks:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._snapshot is not None:
            try:
                await asyncio.to_thread(save_snapshot, self._snapshot, self.index.records())
            except OSError as exc:
                log.warning("could not write the usage snapshot: %s", exc)

    async def _snapshots(self, path: Path) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            if self.index.dirty:
                try:
                    await asyncio.to_thread(save_snapshot, path, self.index.records())
                except OSError as exc:
                    log.warning("could not write the usage snapshot: %s", exc)

    # -- uses -----------------------------------------------------------------------------

    def get(  # no coroutine layer of its own: this is every Get
        self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT
    ) -> Coroutine[Any, Any, Blob]:
        self.index.touch(blob_id)
        return self._inner.get(blob_id, limit)

    def get_stream(self, blob_id: BlobId, chunk_size: int) -> Coroutine[Any, Any, BlobStream]:
        self.index.touch(blob_id)
        return self._inner.get_stream(blob_id, chunk_size)

    def last_use(self, blob_id: BlobId) -> float | None:
        use = self.index.get(blob_id)
        return use.used if use is not None else None

    # -- puts -----------------------------------------------------------------------------

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        reserved = await self._admit(blob_id, len(data))
        try:
            result = await self._inner.put(blob_id, blob_type, data, meta)
        finally:
            self._settle(blob_id, reserved)
        self._stored(blob_id, result.info.size)
        return result

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        # Each item through put(): admitted, reserved and counted like a single put. They
        # are queued together, so the file system still commits most of them at once.
        return await put_each(self, items)

    def _stored(self, blob_id: BlobId, size: int) -> None:
        self.index.stored(blob_id, size)
        if self._stored_since is not None:
            self._stored_since.add(blob_id)
        self._check_water()

    async def open_writer(self, intent: StreamIntent | None = None) -> BlobWriter:
        return _EvictingWriter(self, await self._inner.open_writer(intent))

    async def _admit(self, blob_id: BlobId, size: int) -> int | None:
        """Waits out a removal of `blob_id`, reserves room for a blob it does not know yet;
        counts the put as in progress. Returns the bytes reserved (None: no reservation)."""
        reserved: int | None = None
        try:
            while True:
                removal = self._doomed.get(blob_id)
                if removal is not None:
                    await removal.wait()
                    continue
                if reserved is None and blob_id not in self.index and self.caps.capped:
                    reserved = await self._reserve(size)
                    continue
                break  # nothing awaited since the last check: no removal can start now
        except BaseException:  # a caller gone while it waited: its room is given back
            if reserved is not None:
                self._reserved_bytes -= reserved
                self._reserved_blobs -= 1
            raise
        self._pending[blob_id] = self._pending.get(blob_id, 0) + 1
        return reserved

    def _settle(self, blob_id: BlobId, reserved: int | None) -> None:
        count = self._pending.pop(blob_id) - 1
        if count:
            self._pending[blob_id] = count
        if reserved is not None:
            self._reserved_bytes -= reserved
            self._reserved_blobs -= 1
        self._put_done.set()
        self._put_done = asyncio.Event()

    def _over(self, size: int, blobs: int) -> bool:
        caps, index = self.caps, self.index
        return bool(
            (caps.max_bytes and index.total_bytes + self._reserved_bytes + size > caps.max_bytes)
            or (caps.max_blobs and len(index) + self._reserved_blobs + blobs > caps.max_blobs)
        )

    async def _reserve(self, size: int) -> int:
        if self.caps.max_bytes and size > self.caps.max_bytes:
            raise StorageFull(
                f"a blob of {size} bytes is larger than the store's cap of "
                f"{self.caps.max_bytes} bytes (--max-bytes)"
            )
        deadline = time.monotonic() + PUT_WAIT_SECONDS
        while self._over(size, 1):
            if not (self._evicting_blobs or self._evictable()):
                raise StorageFull(
                    "the store is at its cap and nothing can be evicted: every blob was "
                    "used within --min-age or is being written"
                )
            self._wake.set()
            freed = self._freed
            self._waiting_bytes += size
            self._waiting_blobs += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(freed.wait(), max(deadline - time.monotonic(), 0.0))
            finally:
                self._waiting_bytes -= size
                self._waiting_blobs -= 1
            if time.monotonic() >= deadline and self._over(size, 1):
                raise StorageFull("the store is at its cap and eviction did not keep up; retry")
        self._reserved_bytes += size
        self._reserved_blobs += 1
        return size

    def _evictable(self) -> bool:
        """Whether the least recently used blobs include one eviction may take now."""
        horizon = self.index.clock() - self.caps.min_age
        for checked, (blob_id, use) in enumerate(self.index.oldest()):
            if use.used > horizon or checked >= 64:
                return False
            if blob_id not in self._pending:
                return True
        return False

    # -- eviction -------------------------------------------------------------------------

    def _check_water(self) -> None:
        caps, index = self.caps, self.index
        if (
            self._waiting_blobs
            or (caps.max_bytes and index.total_bytes > caps.max_bytes * HIGH_WATER)
            or (caps.max_blobs and len(index) > caps.max_blobs * HIGH_WATER)
        ):
            self._wake.set()

    def _to_free(self) -> tuple[int, int]:
        """Bytes and blobs to remove to reach the low-water mark (with the room reserved)."""
        caps, index = self.caps, self.index
        nbytes = nblobs = 0
        if caps.max_bytes:
            stored = index.total_bytes + self._reserved_bytes + self._waiting_bytes
            nbytes = max(stored - self._evicting_bytes - int(caps.max_bytes * LOW_WATER), 0)
        if caps.max_blobs:
            stored = len(index) + self._reserved_blobs + self._waiting_blobs
            nblobs = max(stored - self._evicting_blobs - int(caps.max_blobs * LOW_WATER), 0)
        return nbytes, nblobs

    async def _evictor(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.caps.capped:
                continue
            self._check_water()
            if not self._wake.is_set():
                continue  # under the high-water mark
            self._wake.clear()
            while True:
                nbytes, nblobs = self._to_free()
                if not (nbytes or nblobs):
                    break
                victims = self._select(nbytes, nblobs)
                if not victims:
                    break
                try:
                    await self._remove(victims, "evicted")
                except Exception as exc:  # a failed checkpoint or unlink: try again later
                    log.warning("could not evict %d blob(s): %s", len(victims), exc)
                    await asyncio.sleep(1.0)
                    break

    def _select(self, nbytes: int, nblobs: int) -> list[BlobId]:
        horizon = self.index.clock() - self.caps.min_age
        victims: list[BlobId] = []
        freed = 0
        for blob_id, use in self.index.oldest():
            if (freed >= nbytes and len(victims) >= nblobs) or len(victims) >= BATCH:
                break
            if use.used > horizon:
                break  # this one and every later one used within --min-age
            if blob_id in self._pending or blob_id in self._doomed:
                continue
            victims.append(blob_id)
            freed += use.size
        return victims

    async def _remove(self, blob_ids: list[BlobId], reason: str) -> list[BlobId]:
        """Removes blobs not being written through the inner backend; returns those it
        removed; raises what the inner delete raises (the blobs then stay indexed).

        Their entries stay counted until their files are gone, so a put never fills the
        room they still hold."""
        removal = asyncio.Event()
        for blob_id in blob_ids:
            self._doomed[blob_id] = removal
        sizes = sum((u.size if (u := self.index.get(b)) else 0) for b in blob_ids)
        self._evicting_bytes += sizes
        self._evicting_blobs += len(blob_ids)
        try:
            removed = await self._inner.delete(blob_ids)
            freed = 0
            for blob_id in blob_ids:
                use = self.index.pop(blob_id)
                freed += use.size if use is not None else 0
            if self._stored_since is not None:  # a listing under way may have seen them
                self._removed_since.update(blob_ids)
        finally:
            self._evicting_bytes -= sizes
            self._evicting_blobs -= len(blob_ids)
            for blob_id in blob_ids:
                if self._doomed.get(blob_id) is removal:
                    del self._doomed[blob_id]
            removal.set()
            self._freed.set()
            self._freed = asyncio.Event()
        self._count(reason, len(removed), freed)
        return removed

    def _count(self, reason: str, blobs: int, nbytes: int) -> None:
        if self._metrics is not None and blobs:
            self._metrics.removed.labels(reason).inc(blobs)
            self._metrics.removed_bytes.labels(reason).inc(nbytes)
        if reason != "evicted":
            log.info("%s %d blob(s), %d byte(s)", reason, blobs, nbytes)
            return
        self._unlogged[0] += blobs
        self._unlogged[1] += nbytes
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL:
            log.info(
                "evicted %d least recently used blob(s), %d byte(s) (cap: %d bytes, %d blobs)",
                *self._unlogged,
                self.caps.max_bytes,
                self.caps.max_blobs,
            )
            self._unlogged = [0, 0]
            self._logged_at = now

    # -- deletes and retention --------------------------------------------------------------

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        """Removes the blobs (waiting for puts of them in progress); idempotent."""
        unique = list(dict.fromkeys(blob_ids))
        removed: list[BlobId] = []
        for start in range(0, len(unique), BATCH):
            batch = unique[start : start + BATCH]
            while True:
                busy = [b for b in batch if b in self._doomed]
                if busy:
                    await self._doomed[busy[0]].wait()
                    continue
                if any(b in self._pending for b in batch):
                    await self._put_done.wait()
                    continue
                break
            removed += await self._remove(batch, "deleted")
        return removed

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Removes every blob not used for `older_than` seconds (only lists them if dry_run)."""
        horizon = self.index.clock() - older_than
        victims: list[BlobId] = []
        total = 0
        for blob_id, use in self.index.oldest():
            if use.used > horizon:
                break
            victims.append(blob_id)
            total += use.size
        if not dry_run:
            for start in range(0, len(victims), BATCH):
                batch = [b for b in victims[start : start + BATCH] if b not in self._pending]
                await self._remove([b for b in batch if b not in self._doomed], "pruned")
        return PruneReport(victims, total)


class _EvictingWriter(CountingWriter):
    """A streamed put: counted as it is written, admitted (and reserved) at commit."""

    def __init__(self, owner: EvictingBackend, inner: BlobWriter) -> None:
        super().__init__(inner)
        self._owner = owner

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        owner = self._owner
        reserved = await owner._admit(blob_id, self._written)
        try:
            result = await self._inner.commit(blob_id, blob_type, meta)
        finally:
            owner._settle(blob_id, reserved)
        owner._stored(blob_id, result.info.size)
        return result
