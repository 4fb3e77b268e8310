"""A BlobBackend decorator that checks every read against the blob's id.

Data that does not hash to its id (or whose size disagrees with its header)
is never served: the copy is quarantined through the inner backend and the
read fails with DataLoss. For streams the last chunk is held back until the
whole content has been hashed, so a reader never receives a complete copy of
bad data.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

from server.backend import BlobBackend, BlobWriter
from server.errors import DataLoss
from server.ids import BlobId, hex_digest
from server.model import Blob, BlobInfo, BlobType, PutResult


class VerifyingBackend:
    """Wraps a backend; see the module docstring."""

    def __init__(self, inner: BlobBackend) -> None:
        self._inner = inner

    async def put(self, blob_id: BlobId, blob_type: BlobType, data: bytes) -> PutResult:
        return await self._inner.put(blob_id, blob_type, data)

    async def open_writer(self) -> BlobWriter:
        return await self._inner.open_writer()

    async def get(self, blob_id: BlobId) -> Blob:
        blob = await self._inner.get(blob_id)
        if len(blob.data) != blob.info.size:
            await self._fail(
                blob_id, f"content is {len(blob.data)} bytes, header says {blob.info.size}"
            )
        if hashlib.sha256(blob.data).hexdigest() != hex_digest(blob_id):
            await self._fail(blob_id, "content does not match its SHA-256 id")
        return blob

    async def get_stream(
        self, blob_id: BlobId, chunk_size: int
    ) -> tuple[BlobInfo, AsyncIterator[bytes]]:
        info, chunks = await self._inner.get_stream(blob_id, chunk_size)
        return info, self._verified(info, chunks)

    async def _verified(self, info: BlobInfo, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        hasher = hashlib.sha256()
        size = 0
        held: bytes | None = None
        try:
            async for chunk in chunks:
                if held is not None:
                    yield held
                hasher.update(chunk)
                size += len(chunk)
                if size > info.size:
                    break
                held = chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        if size != info.size:
            await self._fail(
                info.blob_id, f"content length differs from the header's {info.size} bytes"
            )
        if hasher.hexdigest() != hex_digest(info.blob_id):
            await self._fail(info.blob_id, "content does not match its SHA-256 id")
        if held is not None:
            yield held

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        return await self._inner.stat(blob_id)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        return await self._inner.find_missing(blob_ids)

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        await self._inner.quarantine(blob_id, reason)

    async def _fail(self, blob_id: BlobId, reason: str) -> None:
        await self._inner.quarantine(blob_id, reason)
        raise DataLoss(blob_id, reason)
