"""A BlobBackend decorator that checks every read against the blob's id.

Data that does not hash to its id, whose size disagrees with its header, or
whose header is broken is never served: the copy is quarantined through the
inner backend and the read fails with DataLoss. Streams hold the last chunk
back until the whole content has been hashed, so a reader never receives a
complete copy of bad data.
"""

from __future__ import annotations

import hashlib
import logging
from typing import NoReturn

from blobstore.errors import DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import Blob, BlobInfo
from blobstore.offload import INLINE_LIMIT, offload, sha256_hex
from blobstore.storage.base import NO_LIMIT, BlobStream, ForwardingBackend, ReadLimit

log = logging.getLogger(__name__)


class VerifyingBackend(ForwardingBackend):
    """Wraps a backend; see the module docstring. Puts and lookups pass through."""

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        try:
            blob = await self._inner.get(blob_id, limit)
        except DataLoss as exc:
            await self.fail(blob_id, str(exc), exc)
        data = blob.data
        if len(data) != blob.info.size:
            await self.fail(blob_id, f"content is {len(data)} bytes, header says {blob.info.size}")
        if len(data) <= INLINE_LIMIT:  # offload's rule, without its coroutine: this is every Get
            digest = hashlib.sha256(data).hexdigest()
        else:
            digest = await offload(len(data), sha256_hex, data)
        if digest != hex_digest(blob_id):
            await self.fail(blob_id, "content does not match its SHA-256 id")
        return blob

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> BlobStream:
        try:
            stream = await self._inner.get_stream(blob_id, chunk_size)
        except DataLoss as exc:
            await self.fail(blob_id, str(exc), exc)
        return _VerifiedStream(self, stream)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        try:
            return await self._inner.stat(blob_id)
        except DataLoss as exc:
            await self.fail(blob_id, str(exc), exc)

    async def fail(self, blob_id: BlobId, reason: str, error: DataLoss | None = None) -> NoReturn:
        """Quarantines the blob and raises DataLoss, even if quarantining fails."""
        try:
            await self._inner.quarantine(blob_id, reason)
        except Exception:
            log.exception("could not quarantine corrupt blob %s (%s)", blob_id, reason)
        raise error or DataLoss(blob_id, reason)


class _VerifiedStream:
    """The chunks of an inner stream, hashed as they pass, the last one held back."""

    def __init__(self, owner: VerifyingBackend, inner: BlobStream) -> None:
        self.info = inner.info
        self._owner = owner
        self._inner = inner
        self._hasher = hashlib.sha256()
        self._size = 0
        self._held: bytes | None = None
        self._finished = False

    def __aiter__(self) -> _VerifiedStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._finished:
            try:
                chunk = await anext(self._inner)
            except StopAsyncIteration:
                self._finished = True
                await self._verify_whole()
                break
            except DataLoss as exc:
                self._finished = True
                await self._owner.fail(self.info.blob_id, str(exc), exc)
            self._size += len(chunk)
            if self._size > self.info.size:
                self._finished = True
                await self.aclose()
                await self._owner.fail(
                    self.info.blob_id, f"content is longer than the header's {self.info.size} bytes"
                )
            await offload(len(chunk), self._hasher.update, chunk)
            held, self._held = self._held, chunk
            if held is not None:
                return held
        held, self._held = self._held, None
        if held is None:
            raise StopAsyncIteration
        return held

    async def _verify_whole(self) -> None:
        if self._size != self.info.size:
            await self._owner.fail(
                self.info.blob_id,
                f"content is {self._size} bytes, header says {self.info.size}",
            )
        if self._hasher.hexdigest() != hex_digest(self.info.blob_id):
            await self._owner.fail(self.info.blob_id, "content does not match its SHA-256 id")

    async def aclose(self) -> None:
        self._held = None
        await self._inner.aclose()
