"""A streamed put into one named temp file, published by publish.py at commit.

Content is written after room for the header, which is written at commit once
the type and size are known, with the metadata block (if any) after the content.
Every WRITEBACK_EVERY bytes the kernel is asked to start writing the file out,
so the fsync at commit is short.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from blobstore.ids import BlobId
from blobstore.model import NO_META, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import ChunkHook
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    FileContent,
    encode_header,
    encode_meta,
)
from blobstore.storage.filesystem.fd_guard import FdGuard
from blobstore.storage.filesystem.os_calls import (
    io_error,
    start_writeback,
    unlink_quietly,
    write_all,
)
from blobstore.storage.filesystem.publish import Publisher

WRITEBACK_EVERY = 8 * 1024 * 1024
"""A streamed put starts the disk write-back of its file every this many bytes."""


class FileWriter:
    """A streamed put into one temp file of a FileSystemBackend."""

    def __init__(self, publisher: Publisher, pool: ThreadPoolExecutor, fd: int, path: str) -> None:
        self._publisher = publisher
        self._guard = FdGuard(pool, fd)
        self._path = path
        self._size = 0
        self._flushed = HEADER_SIZE

    async def write(self, chunk: bytes | memoryview, before: ChunkHook | None = None) -> None:
        offset = HEADER_SIZE + self._size
        self._size += len(chunk)
        flush_from = self._flushed
        end = offset + len(chunk)
        if end - flush_from >= WRITEBACK_EVERY:
            self._flushed = end

        def write(fd: int) -> None:
            if before is not None:
                before(chunk)
            write_all(fd, [chunk], offset)
            if end - flush_from >= WRITEBACK_EVERY:
                start_writeback(fd, flush_from, end - flush_from)

        try:
            await self._guard.run(write)
        except OSError as exc:
            await self.abort()
            raise io_error(exc, "store the blob") from None

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, meta: BlobMeta = NO_META
    ) -> PutResult:
        info = BlobInfo(blob_id, blob_type, self._size, meta)
        meta_block = encode_meta(meta)
        publisher, path = self._publisher, self._path

        def make_durable(fd: int) -> PutResult | None:
            existing = publisher.existing(blob_id, FileContent(fd, info.size))
            if existing is not None:
                return PutResult(existing, created=False)
            try:
                if meta_block:
                    write_all(fd, [meta_block], HEADER_SIZE + info.size)
                write_all(fd, [encode_header(blob_type, info.size, meta_block)], 0)
                os.fsync(fd)
            except OSError as exc:
                raise io_error(exc, "store the blob") from None
            return None

        try:
            existing = await self._guard.run(make_durable)
            if existing is not None:
                return existing
            # Publishing is a step of its own: a call cancelled while its data was
            # made durable (a client that gave up mid-stream, whose request stream
            # just ends; a server stopping) gets its CancelledError here and
            # publishes nothing.
            # The temp file now also holds its header and metadata; its content is the same.
            return await self._guard.run(
                lambda fd: publisher.publish(path, info, FileContent(fd, info.size))
            )
        finally:
            await self.abort()

    async def abort(self) -> None:
        path = self._path
        self._guard.close(then=lambda: unlink_quietly(path))
