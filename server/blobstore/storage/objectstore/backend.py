"""The object-store backend: one object per blob, written once, shared by many replicas.

Any number of `blobstore serve` processes may use the same bucket and prefix at
once, with no coordination between them: every write is conditional
(`If-None-Match: *`), so the first writer of an id wins and the others report
created=False; nothing is acknowledged before the store has answered the
publishing request. Reads are verified above this module (VerifyingBackend);
a corrupt object is moved aside under `quarantine/` (keys.py).

Life cycle: open() checks that the bucket answers with our credentials (so a
wrong URL fails at start-up, not at the first call) and deletes temporaries
left by crashed streamed puts; the same sweep runs again every SWEEP_INTERVAL,
started by the streamed puts themselves (no thread of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Container, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError

from blobstore.errors import Unavailable
from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import (
    NO_LIMIT,
    OverLimit,
    PutItem,
    PutOutcome,
    ReadLimit,
    StoredBlob,
    StreamIntent,
    put_each,
)
from blobstore.storage.objectstore import keys, metadata
from blobstore.storage.objectstore.errors import NOT_FOUND, summary, translated
from blobstore.storage.objectstore.location import Location
from blobstore.storage.objectstore.read import ObjectStream
from blobstore.storage.objectstore.writer import ObjectWriter

if TYPE_CHECKING:
    from obstore import GetResult

log = logging.getLogger(__name__)

FIND_MISSING_CONCURRENCY = 32
"""HEAD requests in flight for one FindMissing or a batch of Stats."""
TEMP_MAX_AGE = timedelta(minutes=30)
"""A temporary older than this belongs to no live put (commit publishes it at once)."""
SWEEP_INTERVAL = 600.0


def _length(result: GetResult) -> int:
    """The object's length, from the byte range a whole-object GET (or HEAD) returned.

    Not `result.meta["size"]`: obstore builds all of ObjectMeta for that, last_modified
    as a timezone-aware datetime, some thirty times the cost of the range on every Get
    (docs/scale-out.md, "Benchmark").
    """
    start, end = result.range
    return end - start


class ObjectStoreBackend:
    """BlobBackend over an S3-compatible object store; see the module docstring."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.store = location.store()
        self._next_sweep = 0.0
        self._sweeping: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Checks the bucket is reachable with our credentials; removes stale temporaries."""
        try:
            obstore.list(self.store, prefix=keys.TEMP_PREFIX, chunk_size=1).collect()
        except Exception as exc:
            raise ConnectionError(
                f"object store {self.location.description} is not usable: {summary(exc)}"
            ) from None
        self._sweep_sync()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()

    def _stale(self, modified: datetime) -> bool:
        return datetime.now(UTC) - modified > TEMP_MAX_AGE

    def _sweep_sync(self) -> None:
        try:
            for batch in obstore.list(self.store, prefix=keys.TEMP_PREFIX):
                stale = [meta["path"] for meta in batch if self._stale(meta["last_modified"])]
                if stale:
                    obstore.delete(self.store, stale)
                    log.info("deleted %d stale temporaries of streamed puts", len(stale))
        except Exception as exc:
            log.warning("could not sweep temporaries: %s", summary(exc))

    async def sweep_temporaries(self) -> int:
        """Deletes temporaries older than TEMP_MAX_AGE (left by crashes); returns how many."""
        deleted = 0
        with translated():
            async for batch in obstore.list(self.store, prefix=keys.TEMP_PREFIX):
                stale = [meta["path"] for meta in batch if self._stale(meta["last_modified"])]
                if stale:
                    await obstore.delete_async(self.store, stale)
                    deleted += len(stale)
        if deleted:
            log.info("deleted %d stale temporaries of streamed puts", deleted)
        return deleted

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep or (self._sweeping is not None and not self._sweeping.done()):
            return
        self._next_sweep = now + SWEEP_INTERVAL

        async def sweep() -> None:
            with contextlib.suppress(Exception):
                await self.sweep_temporaries()

        self._sweeping = asyncio.ensure_future(sweep())

    # -- writes --------------------------------------------------------------------------

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        return await self.put_object(blob_id, data, metadata.encode(blob_type, len(data), meta))

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        # Each object is its own conditional put; they run at once.
        return await put_each(self, items)

    async def put_object(
        self, blob_id: BlobId, data: bytes, attributes: dict[str, str]
    ) -> PutResult:
        """One conditional put of a whole blob under its key."""
        with translated(blob_id):
            try:
                await obstore.put_async(
                    self.store, keys.blob_key(blob_id), data, mode="create", attributes=attributes
                )
            except AlreadyExistsError:
                return await self.existing(blob_id)
        return self.created(blob_id, attributes, len(data))

    def created(self, blob_id: BlobId, attributes: dict[str, str], size: int) -> PutResult:
        return PutResult(metadata.decode(blob_id, attributes, size), created=True)

    async def existing(self, blob_id: BlobId) -> PutResult:
        """The result of a put that lost to an earlier writer of the same id."""
        info = await self.stat(blob_id)
        if info is None:  # quarantined between the refusal and this look
            raise Unavailable(f"blob {blob_id} vanished while it was being stored; retry")
        return PutResult(info, created=False)

    async def open_writer(self, intent: StreamIntent | None = None) -> ObjectWriter:
        self._maybe_sweep()
        return ObjectWriter(self, intent)

    async def delete_quietly(self, key: str) -> None:
        """Deletes an object we own (a temporary); a failure is only logged (the sweep retries)."""
        try:
            await obstore.delete_async(self.store, key)
        except Exception as exc:
            log.warning("could not delete %s: %s", key, summary(exc))

    # -- reads ---------------------------------------------------------------------------

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        with translated(blob_id):
            result = await obstore.get_async(self.store, keys.blob_key(blob_id))
        info = metadata.decode(blob_id, result.attributes, _length(result))
        if not limit.admit(info.size):  # before the content is read; what it raises ends here
            raise OverLimit(info)
        with translated(blob_id):
            data = bytes(await result.bytes_async())
        return Blob(info, data)

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> ObjectStream:
        with translated(blob_id):
            result = await obstore.get_async(self.store, keys.blob_key(blob_id))
            info = metadata.decode(blob_id, result.attributes, _length(result))
            return ObjectStream(info, result.stream(min_chunk_size=chunk_size), chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        with translated(blob_id):
            try:
                result = await obstore.get_async(
                    self.store, keys.blob_key(blob_id), options={"head": True}
                )
            except NOT_FOUND:
                return None
            return metadata.decode(blob_id, result.attributes, _length(result))

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        gate = asyncio.Semaphore(FIND_MISSING_CONCURRENCY)

        async def present(blob_id: BlobId) -> bool:
            async with gate:
                with translated(blob_id):
                    try:
                        await obstore.head_async(self.store, keys.blob_key(blob_id))
                    except NOT_FOUND:
                        return False
                    return True

        found = await asyncio.gather(*(present(blob_id) for blob_id in blob_ids))
        return [blob_id for blob_id, here in zip(blob_ids, found, strict=True) if not here]

    # -- removal and listing -------------------------------------------------------------

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        # An object store's DELETE succeeds whether or not the object was there: HEAD
        # first, to say which were. Nothing is journaled here, so nothing can come back.
        missing = set(await self.find_missing(blob_ids))
        present = [blob_id for blob_id in dict.fromkeys(blob_ids) if blob_id not in missing]
        if present:
            with translated():
                await obstore.delete_async(self.store, [keys.blob_key(b) for b in present])
        return present

    async def scan(self, known: Container[BlobId] = ()) -> AsyncIterator[list[StoredBlob]]:
        # The listing gives size and last-modified time (the put that stored it; a
        # deduplicated put does not change it: the store has no cheaper "touch").
        with translated():
            async for batch in obstore.list(self.store):
                yield [
                    StoredBlob(
                        blob_id_from_digest(meta["path"]),
                        meta["size"],
                        meta["last_modified"].timestamp(),
                    )
                    for meta in batch
                    if keys.is_blob_key(meta["path"])
                ]

    # -- corruption ----------------------------------------------------------------------

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        await self.quarantine_to(blob_id, reason)

    async def quarantine_to(self, blob_id: BlobId, reason: str) -> str | None:
        """Copies the object under quarantine/ and deletes it; returns the copy's key, or
        None if another replica moved it first (then there is nothing left to move)."""
        key, aside = keys.blob_key(blob_id), keys.quarantine_key(blob_id)
        with translated():
            try:
                await obstore.copy_async(self.store, key, aside)
            except NOT_FOUND:
                return None
            await obstore.delete_async(self.store, key)
        log.warning("quarantined blob %s as %s: %s", blob_id, aside, reason)
        return aside
