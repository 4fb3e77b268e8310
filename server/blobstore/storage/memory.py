"""A BlobBackend in process memory: the whole Protocol, nothing durable.

For unit tests of the store rules (dedup, first type wins, quarantine on a
bad copy, streamed put commit/abort, limits, metadata) without processes or disks, and
as the reference of what a backend must do. It keeps the quarantined copies
(`quarantined`) so a test can see what was moved aside, and lets a test
damage a stored copy (`corrupt`) to play the disk that flips bits.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Container, Sequence
from dataclasses import dataclass, field

from blobstore.errors import BlobNotFound
from blobstore.ids import BlobId
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import (
    NO_LIMIT,
    ChunkHook,
    OverLimit,
    PutItem,
    PutOutcome,
    ReadLimit,
    StoredBlob,
    StreamIntent,
    put_each,
)


@dataclass(slots=True)
class _Stored:
    blob_type: BlobType
    data: bytes
    meta: BlobMeta
    stored_at: float = field(default_factory=time.time)


class MemoryBackend:
    """BlobBackend over a dict; see the module docstring."""

    def __init__(self) -> None:
        self._blobs: dict[BlobId, _Stored] = {}
        self.quarantined: list[tuple[BlobId, bytes, str]] = []
        """(id, content, reason) of every copy moved out of service, oldest first."""
        self.open_writers = 0
        """Streamed puts neither committed nor aborted yet."""

    def corrupt(self, blob_id: BlobId, data: bytes) -> None:
        """Replaces the stored content of `blob_id` (a test's stand-in for a bad disk)."""
        self._blobs[blob_id].data = data

    def _info(self, blob_id: BlobId, stored: _Stored) -> BlobInfo:
        return BlobInfo(blob_id, stored.blob_type, len(stored.data), stored.meta)

    def _store(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta
    ) -> PutResult:
        # The store's rule for every backend: a put is answered from a stored copy only
        # if that copy holds exactly `data` (which hashes to the id); one that does not
        # is quarantined and `data` stored in its place.
        stored = self._blobs.get(blob_id)
        if stored is not None and stored.data == data:
            return PutResult(self._info(blob_id, stored), created=False)
        if stored is not None:
            self._quarantine(blob_id, "content differs from a put of the same id")
        stored = self._blobs[blob_id] = _Stored(blob_type, bytes(data), meta)
        return PutResult(self._info(blob_id, stored), created=True)

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        return self._store(blob_id, blob_type, data, meta)

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        return await put_each(self, items)

    async def open_writer(self, intent: StreamIntent | None = None) -> MemoryWriter:
        self.open_writers += 1
        return MemoryWriter(self)

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        stored = self._blobs.get(blob_id)
        if stored is None:
            raise BlobNotFound(blob_id)
        info = self._info(blob_id, stored)
        if not limit.admit(info.size):
            raise OverLimit(info)
        return Blob(info, stored.data)

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> MemoryStream:
        stored = self._blobs.get(blob_id)
        if stored is None:
            raise BlobNotFound(blob_id)
        return MemoryStream(self._info(blob_id, stored), stored.data, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        stored = self._blobs.get(blob_id)
        return None if stored is None else self._info(blob_id, stored)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        return [blob_id for blob_id in blob_ids if blob_id not in self._blobs]

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        self._quarantine(blob_id, reason)

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        return [b for b in dict.fromkeys(blob_ids) if self._blobs.pop(b, None) is not None]

    async def scan(self, known: Container[BlobId] = ()) -> AsyncIterator[list[StoredBlob]]:
        yield [StoredBlob(b, len(s.data), s.stored_at) for b, s in self._blobs.items()]

    def _quarantine(self, blob_id: BlobId, reason: str) -> None:
        stored = self._blobs.pop(blob_id, None)
        if stored is not None:
            self.quarantined.append((blob_id, stored.data, reason))


class MemoryWriter:
    """A streamed put into a private buffer, stored only at commit."""

    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._parts: list[bytes] = []
        self._done = False

    async def write(self, chunk: bytes | memoryview, before: ChunkHook | None = None) -> None:
        if self._done:
            raise ValueError("write after commit or abort")
        if before is not None:
            before(chunk)
        self._parts.append(bytes(chunk))

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        if self._done:
            raise ValueError("commit after commit or abort")
        data = b"".join(self._parts)
        await self.abort()
        return self._backend._store(blob_id, blob_type, data, meta)

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            self._parts = []
            self._backend.open_writers -= 1


class MemoryStream:
    """A stored blob's content handed out in chunks of `chunk_size`."""

    def __init__(self, info: BlobInfo, data: bytes, chunk_size: int) -> None:
        self.info = info
        self._data = data
        self._chunk_size = max(1, chunk_size)
        self._offset = 0
        self._closed = False

    def __aiter__(self) -> MemoryStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed or self._offset >= len(self._data):
            self._closed = True
            raise StopAsyncIteration
        chunk = self._data[self._offset : self._offset + self._chunk_size]
        self._offset += len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._closed = True
