"""Reads of blob files: whole (get), in chunks (get_stream), metadata only (stat).

Reads of small blobs and of headers first try the event loop: open, fstat
and a preadv with RWF_NOWAIT, which fails instead of waiting when the data
is not in the page cache, and only then go to the pool - a thread round trip
costs ten times such a read. open() and fstat() of a file whose directory
entry is not cached can still wait for the disk briefly on the loop; large
reads never run there. Every open checks the header (CRC, and length against
the file's size) and the metadata block after the content (blob_file.py), so a
broken or truncated file is DataLoss at once, and so is anything at a blob's path
that is not a regular file (os_calls.open_regular).

A put of an id already stored asks matching_copy (or match_now, on the event
loop) whether the stored copy holds exactly the content it has in hand: only
then may it answer from that copy. A positive answer is remembered for the
file as it was (device, inode, size, mtime and ctime), so that repeated puts of
the same content compare it once; any change to the file forgets it.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from blobstore.errors import BlobNotFound, DataLoss
from blobstore.ids import BlobId
from blobstore.model import Blob, BlobInfo
from blobstore.storage.base import OverLimit, ReadLimit
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    MAX_META_SIZE,
    FileContent,
    blob_info,
    file_header,
    read_info,
    same_content,
)
from blobstore.storage.filesystem.fd_guard import FdGuard, open_on_pool
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.os_calls import (
    NotRegularFile,
    io_error,
    is_regular,
    open_regular,
    pread_all,
    pread_cached,
)

_T = TypeVar("_T")
INLINE_READ_LIMIT = 256 * 1024
"""Largest blob read on the event loop (when cached): about 30 us of copying at most."""
MATCH_CACHE_ENTRIES = 4096
"""Stored copies remembered as matching a put's content (about 300 bytes each)."""


class Copy(enum.Enum):
    """What match_now found, when it is not a matching copy."""

    ABSENT = "no copy is stored"
    UNKNOWN = "a copy to compare, or to move aside, on the pool"


def _identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class _Matches:
    """Stored copies found to hold exactly the content of a put of their id, by the
    identity of their file; thread-safe (the event loop and the pool both use it)."""

    def __init__(self, entries: int = MATCH_CACHE_ENTRIES) -> None:
        self._entries: OrderedDict[BlobId, tuple[tuple[int, ...], BlobInfo]] = OrderedDict()
        self._max = entries
        self._lock = threading.Lock()

    def get(self, blob_id: BlobId, stat: os.stat_result) -> BlobInfo | None:
        with self._lock:
            hit = self._entries.get(blob_id)
            if hit is None or hit[0] != _identity(stat):
                return None
            self._entries.move_to_end(blob_id)
            return hit[1]

    def remember(self, blob_id: BlobId, stat: os.stat_result, info: BlobInfo) -> None:
        with self._lock:
            self._entries[blob_id] = (_identity(stat), info)
            self._entries.move_to_end(blob_id)
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)


class BlobReader:
    """The read side of a FileSystemBackend."""

    def __init__(self, layout: FileSystemLayout, pool: ThreadPoolExecutor) -> None:
        self._layout = layout
        self._pool = pool
        self._matches = _Matches()

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    def open_blob(self, blob_id: BlobId) -> tuple[int, os.stat_result]:
        """The descriptor and fstat of the blob's file; DataLoss if something else is there.

        A missing shard folder, or a plain file in its place, holds no blob: BlobNotFound
        (a put makes the folder again).
        """
        try:
            return open_regular(self._layout.blob_path(blob_id))
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(blob_id) from None
        except NotRegularFile as exc:
            raise DataLoss(blob_id, str(exc)) from None
        except OSError as exc:
            raise io_error(exc, "open the blob") from None

    def match_now(self, blob_id: BlobId, data: bytes) -> BlobInfo | Copy:
        """On the event loop, never waiting for the disk: the stored copy's metadata if it
        holds exactly `data` (remembered, or small and in the page cache); else ABSENT or
        UNKNOWN (matching_copy decides on the pool)."""
        try:
            fd, stat = self.open_blob(blob_id)
        except BlobNotFound:
            return Copy.ABSENT
        except DataLoss:
            return Copy.UNKNOWN
        try:
            known = self._matches.get(blob_id, stat)
            if known is not None:
                return known
            file_size = stat.st_size
            meta_size = file_size - HEADER_SIZE - len(data)
            if not 0 <= meta_size <= MAX_META_SIZE or len(data) > INLINE_READ_LIMIT:
                return Copy.UNKNOWN
            raw = pread_cached(fd, file_size + 1, file_size)  # a byte more: a file that grew
            if raw is None:
                return Copy.UNKNOWN
            decoded = file_header(blob_id, raw[:HEADER_SIZE], len(raw))
            content_end = HEADER_SIZE + decoded.size
            if memoryview(raw)[HEADER_SIZE:content_end] != data:
                return Copy.UNKNOWN
            info = blob_info(blob_id, decoded, raw[content_end:])
        except (DataLoss, OSError):
            return Copy.UNKNOWN
        finally:
            os.close(fd)
        self._matches.remember(blob_id, stat, info)
        return info

    def matching_copy(self, blob_id: BlobId, content: bytes | FileContent) -> BlobInfo | None:
        """The stored copy's metadata if it holds exactly `content` (bytes, or the content
        of a streamed put's temp file, FileContent); None if no copy is stored.

        `content` hashes to `blob_id`, so a copy that is broken or differs does not
        match its id: DataLoss, for the caller to quarantine it and store `content`.
        Blocking: runs on the pool.
        """
        try:
            fd, stat = self.open_blob(blob_id)
        except BlobNotFound:
            return None
        try:
            known = self._matches.get(blob_id, stat)
            if known is not None:
                return known
            info = read_info(fd, blob_id)
            if not same_content(fd, info.size, content):
                raise DataLoss(
                    blob_id, "content differs from a put of the same id: it does not match its id"
                )
        except OSError as exc:
            raise io_error(exc, "read the stored copy") from None
        finally:
            os.close(fd)
        self._matches.remember(blob_id, stat, info)
        return info

    async def get(self, blob_id: BlobId, limit: ReadLimit) -> Blob:
        """The whole blob; OverLimit (before any content is read) if `limit` refuses it.

        `limit.admit(size)` is called on the event loop once the file's size is
        known, before any content is read (the guard sizes the reply with it).
        A small blob already in the page cache is read right here, on the event
        loop (open, fstat, one preadv with RWF_NOWAIT, close: ~10 us); only
        when the read would wait for the disk does it go to the thread pool,
        whose round trip costs ten times that.
        """
        fd, stat = self.open_blob(blob_id)
        file_size = stat.st_size
        try:
            # The metadata block, if any, is counted too: a few bytes more than the content.
            whole = limit.admit(max(0, file_size - HEADER_SIZE))
        except BaseException:
            os.close(fd)
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
            fd, _ = self.open_blob(blob_id)
            try:
                return fd, read_info(fd, blob_id)
            except OSError as exc:
                os.close(fd)
                raise io_error(exc, "read the blob's header") from None
            except BaseException:
                os.close(fd)
                raise

        fd, info = await open_on_pool(self._pool, open_stream, lambda opened: os.close(opened[0]))
        return FileStream(self._pool, fd, info, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        """The blob's metadata; read on the event loop when its header is in the page cache."""
        try:
            fd, stat = self.open_blob(blob_id)
        except BlobNotFound:
            return None
        size = stat.st_size
        return await self._read_and_close(fd, lambda wait: _read_info(fd, blob_id, size, wait=wait))

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        def missing() -> list[BlobId]:
            # Anything but a regular file there is as good as missing: the client puts
            # the blob, and the put moves the odd thing aside.
            return [i for i in blob_ids if not is_regular(self._layout.blob_path(i))]

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


def _read_info(fd: int, blob_id: BlobId, file_size: int, *, wait: bool) -> BlobInfo | None:
    """The header, then the metadata block if the header says there is one."""
    try:
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
