"""Reads of blob files: whole (get), in chunks (get_stream), metadata only (stat).

Reads of small blobs and of headers first try the event loop: open, fstat
and a preadv with RWF_NOWAIT, which fails instead of waiting when the data
is not in the page cache, and only then go to the pool - a thread round trip
costs ten times such a read. open() and fstat() of a file whose directory
entry is not cached can still wait for the disk briefly on the loop; large
reads never run there. Every open checks the header (CRC, and length against
the file's size) and the metadata block after the content (blob_file.py), so a
broken or truncated file is DataLoss at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from blobstore.errors import BlobNotFound
from blobstore.ids import BlobId
from blobstore.model import Blob, BlobInfo
from blobstore.storage.base import OverLimit, ReadLimit
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, blob_info, file_header, read_info
from blobstore.storage.filesystem.fd_guard import FdGuard
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.os_calls import io_error, pread_all, pread_cached

_T = TypeVar("_T")
_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC
INLINE_READ_LIMIT = 256 * 1024
"""Largest blob read on the event loop (when cached): about 30 us of copying at most."""


class BlobReader:
    """The read side of a FileSystemBackend."""

    def __init__(self, layout: FileSystemLayout, pool: ThreadPoolExecutor) -> None:
        self._layout = layout
        self._pool = pool

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    def open_blob(self, blob_id: BlobId) -> int:
        try:
            return os.open(self._layout.blob_path(blob_id), _OPEN_READ)
        except FileNotFoundError:
            raise BlobNotFound(blob_id) from None
        except OSError as exc:
            raise io_error(exc, "open the blob") from None

    async def get(self, blob_id: BlobId, limit: ReadLimit) -> Blob:
        """The whole blob; OverLimit (before any content is read) if `limit` refuses it.

        `limit.admit(size)` is called on the event loop once the file's size is
        known, before any content is read (the guard sizes the reply with it).
        A small blob already in the page cache is read right here, on the event
        loop (open, fstat, one preadv with RWF_NOWAIT, close: ~10 us); only
        when the read would wait for the disk does it go to the thread pool,
        whose round trip costs ten times that.
        """
        fd = self.open_blob(blob_id)
        try:
            file_size = os.fstat(fd).st_size
            # The metadata block, if any, is counted too: a few bytes more than the content.
            whole = limit.admit(max(0, file_size - HEADER_SIZE))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise io_error(exc, "read the blob") from None
            raise
        blob = await self._read_and_close(
            fd, lambda wait: _read_blob(fd, blob_id, file_size, whole, wait=wait)
        )
        assert blob is not None  # a waiting read always has the data
        return blob

    async def _read_and_close(self, fd: int, read: Callable[[bool], _T | None]) -> _T | None:
        """read(wait=False) right here; if that needs the disk (None), read(wait=True) on the
        pool. Closes `fd` either way, also if the caller gives up."""
        try:
            result = read(False)
        except BaseException:
            os.close(fd)
            raise
        if result is not None:
            os.close(fd)
            return result

        def waited() -> _T | None:
            try:
                return read(True)
            finally:
                os.close(fd)  # here, not by the caller: it may stop waiting (cancelled)

        return await self._run(waited)

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> FileStream:
        def open_stream() -> tuple[int, BlobInfo]:
            fd = self.open_blob(blob_id)
            try:
                return fd, read_info(fd, blob_id)
            except OSError as exc:
                os.close(fd)
                raise io_error(exc, "read the blob's header") from None
            except BaseException:
                os.close(fd)
                raise

        fd, info = await self._run(open_stream)
        return FileStream(self._pool, fd, info, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        """The blob's metadata; read on the event loop when its header is in the page cache."""
        try:
            fd = self.open_blob(blob_id)
        except BlobNotFound:
            return None
        return await self._read_and_close(fd, lambda wait: _read_info(fd, blob_id, wait=wait))

    def stat_sync(self, blob_id: BlobId) -> BlobInfo | None:
        try:
            fd = self.open_blob(blob_id)
        except BlobNotFound:
            return None
        try:
            return _read_info(fd, blob_id, wait=True)
        finally:
            os.close(fd)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        def missing() -> list[BlobId]:
            return [i for i in blob_ids if not os.path.exists(self._layout.blob_path(i))]

        return await self._run(missing)


def _read_blob(fd: int, blob_id: BlobId, file_size: int, whole: bool, *, wait: bool) -> Blob | None:
    """Reads the blob of an open file of `file_size` bytes (only its header unless `whole`);
    None if `wait` is False and the disk is needed."""
    try:
        if not wait:
            if whole and file_size > HEADER_SIZE + INLINE_READ_LIMIT:
                return None
            # One byte more than the file holds, so a file that grew is noticed.
            want = file_size + 1 if whole else HEADER_SIZE
            raw = pread_cached(fd, want, min(want, file_size))
            if raw is None:
                return None
            header, rest = raw[:HEADER_SIZE], raw[HEADER_SIZE:]
        else:
            header = os.pread(fd, HEADER_SIZE, 0)
            rest = pread_all(fd, file_size - HEADER_SIZE + 1, HEADER_SIZE) if whole else b""
    except OSError as exc:
        raise io_error(exc, "read the blob") from None
    decoded = file_header(blob_id, header, file_size)
    if not whole:
        # The caller of an over-limit read wants only the size: metadata is not read.
        raise OverLimit(BlobInfo(blob_id, decoded.blob_type, decoded.size))
    # The metadata block is the file's tail: a file that grew shifts it (its length or CRC
    # tells), and without one the extra byte makes the content too long (VerifyingBackend).
    split = max(0, len(rest) - decoded.meta_size)
    return Blob(blob_info(blob_id, decoded, rest[split:]), rest[:split])


def _read_info(fd: int, blob_id: BlobId, *, wait: bool) -> BlobInfo | None:
    """The header, then the metadata block if the header says there is one."""
    try:
        file_size = os.fstat(fd).st_size
        header = _pread(fd, HEADER_SIZE, 0, file_size, wait=wait)
        if header is None:
            return None
        decoded = file_header(blob_id, header, file_size)
        meta_block: bytes | None = b""
        if decoded.meta_size:
            offset = HEADER_SIZE + decoded.size
            meta_block = _pread(fd, decoded.meta_size, offset, file_size, wait=wait)
        if meta_block is None:
            return None
    except OSError as exc:
        raise io_error(exc, "read the blob's header") from None
    return blob_info(blob_id, decoded, meta_block)


def _pread(fd: int, size: int, offset: int, file_size: int, *, wait: bool) -> bytes | None:
    """`size` bytes at `offset` (fewer at the end of the file); if not `wait`, None unless
    they are all in the page cache."""
    if wait:
        return os.pread(fd, size, offset)
    return pread_cached(fd, size, max(0, min(size, file_size - offset)), offset)


class FileStream:
    """A blob file being read in chunks; content starts after the header."""

    def __init__(self, pool: ThreadPoolExecutor, fd: int, info: BlobInfo, chunk_size: int) -> None:
        self.info = info
        self._guard = FdGuard(pool, fd)
        self._offset = HEADER_SIZE
        # The content ends where the metadata block starts; one byte past it is asked for
        # with the last read, so content that is longer than the header says is noticed
        # (VerifyingBackend) in a file without metadata, as before metadata existed.
        self._end = HEADER_SIZE + info.size + (0 if info.meta else 1)
        self._chunk_size = chunk_size

    def __aiter__(self) -> FileStream:
        return self

    async def __anext__(self) -> bytes:
        if self._guard.closed:
            raise StopAsyncIteration
        offset, size = self._offset, min(self._chunk_size, self._end - self._offset)
        if size <= 0:
            await self.aclose()
            raise StopAsyncIteration
        try:
            chunk = await self._guard.run(lambda fd: os.pread(fd, size, offset))
        except OSError as exc:
            await self.aclose()
            raise io_error(exc, "read the blob") from None
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        self._offset += len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._guard.close()
