"""Retention: removing blobs not used for a while (`blobstore prune`), and their last use.

The server asks a Retention, which the factory picks with the chain: the
EvictingBackend (eviction.py) over a local folder, which knows every blob's last
put or read from its usage index; or, over an object store, ListingRetention,
which works from the object listing, where the last use is the time the object
was stored (a store has no cheap way to record reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from blobstore.ids import BlobId
from blobstore.storage.base import BlobBackend

BATCH = 1000
"""Most blobs removed by one delete() of the backend."""


@dataclass(frozen=True, slots=True)
class PruneReport:
    blob_ids: list[BlobId]
    """Removed (or, in a dry run, that would be)."""
    total_bytes: int


class Retention(Protocol):
    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Removes every blob not used for `older_than` seconds (only lists them if dry_run)."""
        ...

    def last_use(self, blob_id: BlobId) -> float | None:
        """When the blob was last put or read (seconds since the epoch), if known."""
        ...


class ListingRetention:
    """Retention from the medium's listing (BlobBackend.scan); see the module docstring."""

    def __init__(self, backend: BlobBackend) -> None:
        self._backend = backend

    async def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        horizon = time.time() - older_than
        victims: list[BlobId] = []
        total = 0
        async for batch in self._backend.scan():
            old = [blob for blob in batch if blob.last_use <= horizon]
            if old and not dry_run:
                removed = set(await self._backend.delete([blob.blob_id for blob in old]))
                old = [blob for blob in old if blob.blob_id in removed]
            victims += [blob.blob_id for blob in old]
            total += sum(blob.size for blob in old)
        return PruneReport(victims, total)

    def last_use(self, blob_id: BlobId) -> float | None:
        return None
