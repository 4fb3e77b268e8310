"""Streamed puts into the object store, in bounded memory, published write-once at commit.

A stream's id is known only at its end, so:

- up to SINGLE_PUT_MAX bytes are kept in memory; a stream that ends there is
  published with one conditional put, exactly like a unary put;
- past that, the bytes go to a multipart upload under `tmp/<random>` as they
  arrive (at most a few parts in memory: a queue of two chunks in front of
  obstore's uploader of PART_SIZE parts, PART_CONCURRENCY at a time); commit
  completes the upload, then copies the temporary to the blob's key with
  `If-None-Match: *` (losing the race to another replica means created=False)
  and the type and size as new metadata, then deletes the temporary;
- when the client promised the id (`expected_id`, a StreamIntent), the multipart
  upload goes straight to the blob's key with its metadata, so the store writes
  the bytes once instead of twice. A multipart upload is invisible until it is
  completed, and the BlobStore has checked the content's hash against the
  promise before commit, so only content matching the key can appear there. The
  completion itself cannot be conditional (obstore has no conditional multipart
  completion), so commit first looks whether the key exists and, if it does,
  aborts the upload (created=False). Two replicas completing uploads of the same
  id within that look's window both write identical, verified content; the later
  one's filename and content type win (docs/scale-out.md).

abort() (also on cancellation) makes the upload fail, and obstore then aborts
the multipart upload; a temporary left by a crash is deleted by age
(`ObjectStoreBackend.sweep_temporaries`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError

from blobstore.ids import BlobId
from blobstore.model import NO_META, BlobMeta, BlobType, PutResult
from blobstore.offload import offload
from blobstore.storage.base import ChunkHook, StreamIntent
from blobstore.storage.objectstore import keys, metadata
from blobstore.storage.objectstore.errors import translated

if TYPE_CHECKING:
    from blobstore.storage.objectstore.backend import ObjectStoreBackend

SINGLE_PUT_MAX = 8 * 1024 * 1024
PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (but the last)
PART_CONCURRENCY = 2


class _Aborted(Exception):
    """Raised into obstore's upload so that it aborts the multipart upload."""


class ObjectWriter:
    """A BlobWriter over the object store; see the module docstring."""

    def __init__(self, backend: ObjectStoreBackend, intent: StreamIntent | None = None) -> None:
        self._backend = backend
        self._intent = intent
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._queue: asyncio.Queue[bytes | _Aborted | None] | None = None
        self._upload: asyncio.Task[object] | None = None
        self._temp: str | None = None
        self._done = False

    async def write(self, chunk: bytes | memoryview, before: ChunkHook | None = None) -> None:
        if self._done:
            raise ValueError("write after commit or abort")
        if before is not None:
            await offload(len(chunk), before, chunk)
        data = bytes(chunk)
        self._size += len(data)
        if self._queue is None and self._buffered + len(data) <= SINGLE_PUT_MAX:
            self._buffer.append(data)
            self._buffered += len(data)
            return
        if self._queue is None:
            self._start_upload()
        assert self._queue is not None
        await self._put(data)

    def _start_upload(self) -> None:
        # The buffered bytes go first, straight from the generator; the queue holds two chunks.
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        self._queue = asyncio.Queue(maxsize=2)
        if self._intent is None:
            self._temp = keys.temp_key()
            key, attributes = self._temp, {}
        else:
            intent = self._intent
            key = keys.blob_key(intent.blob_id)
            attributes = metadata.encode(intent.blob_type, intent.total_size, intent.meta)
        self._upload = asyncio.ensure_future(
            obstore.put_async(
                self._backend.store,
                key,
                self._chunks(buffered),
                chunk_size=PART_SIZE,
                max_concurrency=PART_CONCURRENCY,
                attributes=attributes,
            )
        )

    async def _chunks(self, buffered: list[bytes]) -> AsyncIterator[bytes]:
        for part in buffered:
            yield part
        buffered.clear()
        assert self._queue is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, _Aborted):
                raise item
            yield item

    async def _put(self, item: bytes | _Aborted | None) -> None:
        """Hands an item to the upload; fails with the upload's error if it has ended."""
        assert self._queue is not None and self._upload is not None
        putting = asyncio.ensure_future(self._queue.put(item))
        done, _ = await asyncio.wait({putting, self._upload}, return_when=asyncio.FIRST_COMPLETED)
        if putting not in done:
            putting.cancel()
            with translated():
                self._upload.result()  # raises the upload's failure
            raise RuntimeError("the upload ended before its last chunk")

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        if self._done:
            raise ValueError("commit after commit or abort")
        attributes = metadata.encode(blob_type, self._size, meta)
        try:
            if self._upload is None:
                data = b"".join(self._buffer)
                self._buffer = []
                return await self._backend.put_object(blob_id, data, attributes)
            if self._intent is not None:
                return await self._complete_in_place(blob_id, attributes)
            await self._put(None)
            with translated():
                await self._upload
            return await self._publish(blob_id, attributes)
        finally:
            await self.abort()

    async def _complete_in_place(self, blob_id: BlobId, attributes: dict[str, str]) -> PutResult:
        assert self._intent is not None and self._upload is not None
        if blob_id != self._intent.blob_id:  # the BlobStore refuses such a commit first
            promised = self._intent.blob_id
            raise ValueError(f"commit of {blob_id} into an upload promised as {promised}")
        existing = await self._backend.stat(blob_id)
        if existing is not None:  # another writer got there first: never overwrite it
            return PutResult(existing, created=False)  # the finally's abort() drops ours
        await self._put(None)
        with translated(blob_id):
            await self._upload
        return self._backend.created(blob_id, attributes, self._size)

    async def _publish(self, blob_id: BlobId, attributes: dict[str, str]) -> PutResult:
        assert self._temp is not None
        publisher = self._backend.location.store(metadata.as_copy_headers(attributes))
        key = keys.blob_key(blob_id)
        with translated(blob_id):
            try:
                await obstore.copy_async(publisher, self._temp, key, overwrite=False)
            except AlreadyExistsError:
                return await self._backend.existing(blob_id)
        return self._backend.created(blob_id, attributes, self._size)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = []
        upload, temp = self._upload, self._temp
        if upload is None:
            return
        if not upload.done() and self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                while not self._queue.empty():  # make room for the abort signal
                    self._queue.get_nowait()
                self._queue.put_nowait(_Aborted())
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(upload)
        if temp is not None:
            await self._backend.delete_quietly(temp)
