"""A BlobBackend decorator: hot small blobs served from a bounded folder on local disk.

In front of a slow backend (the object store), blobs of at most `max_blob_bytes`
that are read are kept as files in `folder`, least recently used first out once
the files pass `max_bytes`. A hit costs a local file read instead of a request to
the store; Stat and FindMissing of cached ids need no request at all (a blob's
content never changes, so a cached copy never goes stale).

Verified like everything else: a copy enters the cache only once its content
hashed to its id, and every hit is hashed again before it is served; a cached
copy that no longer matches (the local disk flipped a bit) is dropped and the
blob read from the backend instead. The outer VerifyingBackend still checks
whatever this returns, so a bad copy of the store's own is quarantined there.

The cache is not durable and needs no recovery: the folder is emptied at start
(the index of types, sizes and metadata lives in memory). Puts pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from blobstore.ids import BlobId, hex_digest
from blobstore.model import Blob, BlobInfo
from blobstore.storage.base import (
    NO_LIMIT,
    BlobBackend,
    BlobStream,
    ForwardingBackend,
    OverLimit,
    ReadLimit,
)
from blobstore.storage.memory import MemoryStream

log = logging.getLogger(__name__)

INLINE_READ = 64 * 1024
"""Cached files up to this size are read on the event loop (a page-cache hit costs
less than a thread hand-off); larger ones in a thread."""


class ReadCache(ForwardingBackend):
    """Wraps a backend; see the module docstring."""

    def __init__(
        self, inner: BlobBackend, folder: Path, *, max_bytes: int, max_blob_bytes: int
    ) -> None:
        super().__init__(inner)
        self._folder = folder
        self.max_bytes = max_bytes
        self.max_blob_bytes = max_blob_bytes
        self._index: OrderedDict[BlobId, BlobInfo] = OrderedDict()
        self.cached_bytes = 0
        # Plain counts, exported at scrape time (read_cache_metrics.py).
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        """Blobs held."""
        return len(self._index)

    def open(self) -> None:
        """Empties the folder (what a previous run left is not trusted, nor indexed)."""
        shutil.rmtree(self._folder, ignore_errors=True)
        self._folder.mkdir(parents=True)

    def _path(self, blob_id: BlobId) -> Path:
        return self._folder / hex_digest(blob_id)

    # -- reads ---------------------------------------------------------------------------

    async def _cached(self, blob_id: BlobId) -> Blob | None:
        info = self._index.get(blob_id)
        if info is None:
            return None
        path = self._path(blob_id)
        try:
            if info.size <= INLINE_READ:
                data = path.read_bytes()
            else:
                data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            data = b""
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != hex_digest(blob_id):
            log.warning("dropped a damaged cached copy of %s", blob_id)
            self._forget(blob_id)
            return None
        self._index.move_to_end(blob_id)
        self.hits += 1
        return Blob(info, data)

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        info = self._index.get(blob_id)
        if info is not None:
            if not limit.admit(info.size):
                raise OverLimit(info)
            cached = await self._cached(blob_id)
            if cached is not None:
                return cached
            # Damaged and dropped: the backend's copy, with the admission already made.
            limit = ReadLimit(limit.max_size)
        self.misses += 1
        blob = await self._inner.get(blob_id, limit)
        await self._keep(blob)
        return blob

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        cached = await self._cached(blob_id)
        if cached is not None:
            return MemoryStream(cached.info, cached.data, chunk_size)
        return await self._inner.get_stream(blob_id, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        info = self._index.get(blob_id)
        return info if info is not None else await self._inner.stat(blob_id)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        unknown = [blob_id for blob_id in blob_ids if blob_id not in self._index]
        return await self._inner.find_missing(unknown) if unknown else []

    # -- corruption: the backend's (puts pass through: ForwardingBackend) ----------------

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        # Only copies that hashed to their id are served from here, so a bad copy the
        # outer VerifyingBackend found is the backend's.
        self._forget(blob_id)
        await self._inner.quarantine(blob_id, reason)

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        for blob_id in blob_ids:
            self._forget(blob_id)
        return await self._inner.delete(blob_ids)

    # -- the index -----------------------------------------------------------------------

    async def _keep(self, blob: Blob) -> None:
        info, data = blob.info, blob.data
        if info.size > self.max_blob_bytes or info.size > self.max_bytes:
            return
        if info.blob_id in self._index or len(data) != info.size:
            return
        if hashlib.sha256(data).hexdigest() != hex_digest(info.blob_id):
            return  # the outer VerifyingBackend reports it; never cached
        try:
            await asyncio.to_thread(self._write, info.blob_id, data)
        except OSError as exc:  # a full or broken cache disk only costs speed
            log.warning("could not cache %s: %s", info.blob_id, exc)
            return
        if info.blob_id in self._index:  # another reader cached it meanwhile
            return
        self._index[info.blob_id] = info
        self.cached_bytes += info.size
        while self.cached_bytes > self.max_bytes:
            oldest = next(iter(self._index))
            self._forget(oldest)
            self.evictions += 1

    def _write(self, blob_id: BlobId, data: bytes) -> None:
        # Written aside and renamed: a reader never opens a half-written file.
        temp = self._folder / f".{uuid.uuid4().hex}"
        temp.write_bytes(data)
        os.replace(temp, self._path(blob_id))

    def _forget(self, blob_id: BlobId) -> None:
        info = self._index.pop(blob_id, None)
        if info is not None:
            self.cached_bytes -= info.size
        with contextlib.suppress(OSError):
            self._path(blob_id).unlink()
