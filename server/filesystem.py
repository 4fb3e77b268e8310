"""A BlobBackend on a local file system, durable across crashes and power cuts.

Layout under the data folder:

    LOCK            held (flock) by the one server that owns the folder
    blobs/ab/<hex>  published blobs, sharded by the first two hex digits
    tmp/            puts in progress; anything here at start-up is debris
    quarantine/     blobs that failed verification, kept for analysis

A put writes a temp file, fsyncs it, publishes it with link(2) (atomic, and
never replaces: the first writer of an id wins) and fsyncs the shard folder
before it is acknowledged. Readers therefore only ever see complete files.
Blocking system calls run on a private thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from server.blob_file import HEADER_SIZE, CorruptHeader, decode_header, encode_header
from server.errors import BlobNotFound, DataLoss, StorageFull, Unavailable
from server.ids import BlobId, hex_digest
from server.model import Blob, BlobInfo, BlobType, PutResult

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_HEX = "0123456789abcdef"


class DataFolderLocked(Exception):
    """Another server process already owns the data folder."""


def io_error(exc: OSError, action: str) -> Exception:
    """Translates an OSError from the disk into the store's error for the caller."""
    if exc.errno in _SPACE_ERRORS:
        return StorageFull(f"no space left to {action}: {os.strerror(exc.errno or 0)}")
    return Unavailable(f"I/O error while trying to {action}: {exc.strerror or exc}")


class FileSystemLayout:
    """Paths and synchronous primitives of the data folder; shared with offline tools."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"

    def create(self) -> None:
        for directory in (self.root, self.blobs, self.tmp, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)
        created = False
        for a in _HEX:
            for b in _HEX:
                shard = self.blobs / (a + b)
                if not shard.exists():
                    shard.mkdir()
                    created = True
        if created:
            fsync_dir(self.blobs)
            fsync_dir(self.root)

    def path_of(self, blob_id: BlobId) -> Path:
        digest = hex_digest(blob_id)
        return self.blobs / digest[:2] / digest

    def all_blob_paths(self) -> list[Path]:
        return sorted(p for p in self.blobs.glob("??/*") if p.is_file())

    def move_to_quarantine(self, path: Path, reason: str) -> Path | None:
        """Moves `path` aside; returns where it went, or None if it was already gone."""
        target = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        fsync_dir(path.parent)
        fsync_dir(self.quarantine_dir)
        log.error("quarantined %s to %s: %s", path.name, target, reason)
        return target

    def read_info(self, fd: int, blob_id: BlobId) -> BlobInfo:
        header = os.pread(fd, HEADER_SIZE, 0)
        try:
            blob_type, size = decode_header(header)
        except CorruptHeader as exc:
            raise DataLoss(blob_id, str(exc)) from None
        return BlobInfo(blob_id, blob_type, size)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FileSystemBackend:
    """BlobBackend over a local folder; see the module docstring for the guarantees."""

    def __init__(self, root: Path, *, io_threads: int = 32) -> None:
        self.layout = FileSystemLayout(root)
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")
        self._lock_fd: int | None = None

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Creates the folder, takes ownership of it and removes debris of earlier crashes."""
        self.layout.create()
        fd = os.open(self.layout.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataFolderLocked(
                f"data folder {self.layout.root} is in use by another blobstore server"
            ) from None
        self._lock_fd = fd
        removed = 0
        for leftover in self.layout.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        if removed:
            log.info("removed %d unfinished temporary file(s) from %s", removed, self.layout.tmp)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    # -- writes -----------------------------------------------------------------------------

    async def put(self, blob_id: BlobId, blob_type: BlobType, data: bytes) -> PutResult:
        return await self._run(lambda: self._put_sync(blob_id, blob_type, data))

    def _put_sync(self, blob_id: BlobId, blob_type: BlobType, data: bytes) -> PutResult:
        existing = self._stat_sync(blob_id)
        if existing is not None:
            return PutResult(existing, created=False)
        fd, tmp_path = self._create_temp()
        try:
            _write_all(fd, encode_header(blob_type, len(data)) + data)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            _unlink_quietly(tmp_path)
            raise io_error(exc, "store the blob") from None
        os.close(fd)
        return self._publish(tmp_path, blob_id, BlobInfo(blob_id, blob_type, len(data)))

    async def open_writer(self) -> _FileWriter:
        fd, path = await self._run(self._create_temp)
        return _FileWriter(self, fd, path)

    def _create_temp(self) -> tuple[int, Path]:
        path = self.layout.tmp / f"{secrets.token_hex(12)}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise io_error(exc, "create a temporary file") from None
        return fd, path

    def _publish(self, tmp_path: Path, blob_id: BlobId, info: BlobInfo) -> PutResult:
        """Links the fsynced temp file into place; the first writer of an id wins."""
        final = self.layout.path_of(blob_id)
        try:
            os.link(tmp_path, final)
        except FileExistsError:
            _unlink_quietly(tmp_path)
            existing = self._stat_sync(blob_id)
            if existing is None:  # quarantined between link and stat
                raise Unavailable(f"blob {blob_id} changed while it was stored; retry") from None
            return PutResult(existing, created=False)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            raise io_error(exc, "publish the blob") from None
        try:
            fsync_dir(final.parent)
        except OSError as exc:
            # Not acknowledged as durable: take it back so a retry writes it again.
            _unlink_quietly(final)
            _unlink_quietly(tmp_path)
            raise io_error(exc, "make the blob durable") from None
        _unlink_quietly(tmp_path)
        return PutResult(info, created=True)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, blob_id: BlobId) -> Blob:
        return await self._run(lambda: self._get_sync(blob_id))

    def _get_sync(self, blob_id: BlobId) -> Blob:
        fd = self._open_blob(blob_id)
        try:
            info = self.layout.read_info(fd, blob_id)
            data = os.pread(fd, info.size + 1, HEADER_SIZE)
        except OSError as exc:
            raise io_error(exc, "read the blob") from None
        finally:
            os.close(fd)
        return Blob(info, data)

    async def get_stream(
        self, blob_id: BlobId, chunk_size: int
    ) -> tuple[BlobInfo, AsyncIterator[bytes]]:
        fd = await self._run(lambda: self._open_blob(blob_id))
        try:
            info = await self._run(lambda: self.layout.read_info(fd, blob_id))
        except BaseException:
            os.close(fd)
            raise
        return info, self._chunks(fd, blob_id, chunk_size)

    async def _chunks(self, fd: int, blob_id: BlobId, chunk_size: int) -> AsyncIterator[bytes]:
        offset = HEADER_SIZE
        try:
            while True:
                try:
                    chunk = await self._run(functools.partial(os.pread, fd, chunk_size, offset))
                except OSError as exc:
                    raise io_error(exc, "read the blob") from None
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def _open_blob(self, blob_id: BlobId) -> int:
        try:
            return os.open(self.layout.path_of(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(blob_id) from None
        except OSError as exc:
            raise io_error(exc, "open the blob") from None

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        return await self._run(lambda: self._stat_sync(blob_id))

    def _stat_sync(self, blob_id: BlobId) -> BlobInfo | None:
        try:
            fd = self._open_blob(blob_id)
        except BlobNotFound:
            return None
        try:
            return self.layout.read_info(fd, blob_id)
        except OSError as exc:
            raise io_error(exc, "read the blob's header") from None
        finally:
            os.close(fd)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        def missing() -> list[BlobId]:
            return [i for i in blob_ids if not os.path.exists(self.layout.path_of(i))]

        return await self._run(missing)

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        await self._run(
            lambda: self.layout.move_to_quarantine(self.layout.path_of(blob_id), reason)
        )


class _FileWriter:
    """A streamed put into one temp file of a FileSystemBackend."""

    def __init__(self, backend: FileSystemBackend, fd: int, path: Path) -> None:
        self._backend = backend
        self._fd: int | None = fd
        self._path = path
        # Content starts after the header, which is written at commit once the
        # type and size are known.
        self._size = 0

    async def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise Unavailable("the write was already finished")
        fd, offset = self._fd, HEADER_SIZE + self._size
        self._size += len(chunk)
        try:
            await self._backend._run(lambda: _pwrite_all(fd, chunk, offset))
        except OSError as exc:
            await self.abort()
            raise io_error(exc, "store the blob") from None

    async def commit(self, blob_id: BlobId, blob_type: BlobType) -> PutResult:
        fd = self._fd
        if fd is None:
            raise Unavailable("the write was already finished")
        info = BlobInfo(blob_id, blob_type, self._size)

        def finish() -> PutResult:
            existing = self._backend._stat_sync(blob_id)
            if existing is not None:
                return PutResult(existing, created=False)
            try:
                _pwrite_all(fd, encode_header(blob_type, info.size), 0)
                os.fsync(fd)
            except OSError as exc:
                raise io_error(exc, "store the blob") from None
            return self._backend._publish(self._path, blob_id, info)

        try:
            return await self._backend._run(finish)
        finally:
            await self.abort()

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            _unlink_quietly(self._path)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
