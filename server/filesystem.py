"""A BlobBackend on a local file system, durable across crashes and power cuts.

Layout under the data folder:

    LOCK            held (flock) by the one server that owns the folder
    blobs/ab/<hex>  published blobs, sharded by the first two hex digits
    tmp/            puts in progress; anything here at start-up is debris
    quarantine/     blobs that failed verification, kept for analysis

A put writes a temp file, fsyncs it, publishes it with link(2) (atomic, and
never replaces: the first writer of an id wins) and fsyncs the shard folder
before it is acknowledged. Readers therefore only ever see complete files,
and a crash leaves at most debris in tmp/, removed at the next start.

Every open checks the header (CRC, and length against the file's size), so
a broken or truncated file is DataLoss at once; a put over such a copy
quarantines it and stores a sound one. Content is checked against the id by
VerifyingBackend, one layer up. Blocking system calls run on a private
thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from server.blob_file import HEADER_SIZE, CorruptHeader, decode_header, encode_header
from server.errors import BlobNotFound, DataLoss, StorageFull, Unavailable
from server.ids import BlobId, hex_digest
from server.model import Blob, BlobInfo, BlobType, PutResult

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_HEX = "0123456789abcdef"
_CHECK_CHUNK = 1024 * 1024


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
        """Creates the sub-folders and all 256 shards, durably, if they are missing."""
        new = [d for d in (self.blobs, self.tmp, self.quarantine_dir) if not d.is_dir()]
        for directory in new:
            directory.mkdir(exist_ok=True)
        created = False
        for a in _HEX:
            for b in _HEX:
                shard = self.blobs / (a + b)
                if not shard.is_dir():
                    shard.mkdir(exist_ok=True)
                    created = True
        if created:
            fsync_dir(self.blobs)
        if new:
            fsync_dir(self.root)

    def path_of(self, blob_id: BlobId) -> Path:
        digest = hex_digest(blob_id)
        return self.blobs / digest[:2] / digest

    def all_blob_paths(self) -> list[Path]:
        return sorted(p for p in self.blobs.glob("??/*") if p.is_file())

    def read_info(self, fd: int, blob_id: BlobId) -> BlobInfo:
        """Decodes the header of an open blob file; DataLoss if it is broken or truncated."""
        try:
            blob_type, size = read_header(fd)
        except CorruptHeader as exc:
            raise DataLoss(blob_id, str(exc)) from None
        return BlobInfo(blob_id, blob_type, size)

    def check_file(self, path: Path, blob_id: BlobId) -> str | None:
        """Returns what is wrong with the blob file at `path`, or None if it is sound."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot open: {exc.strerror}"
        try:
            try:
                read_header(fd)
            except CorruptHeader as exc:
                return str(exc)
            hasher = hashlib.sha256()
            offset = HEADER_SIZE
            while chunk := os.pread(fd, _CHECK_CHUNK, offset):
                hasher.update(chunk)
                offset += len(chunk)
            if hasher.hexdigest() != hex_digest(blob_id):
                return "content does not match its SHA-256 id"
            return None
        except OSError as exc:
            return f"cannot read: {exc.strerror}"
        finally:
            os.close(fd)

    def quarantine(self, blob_id: BlobId, reason: str) -> Path | None:
        """Moves the blob's file aside; returns where it went, or None if it was not moved.

        The file is checked again after the (atomic) move: a put may have
        replaced the broken copy between the failed read and this call, and a
        sound file is put back rather than lost.
        """
        path = self.path_of(blob_id)
        target = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        problem = self.check_file(target, blob_id)
        if problem is None:
            with contextlib.suppress(FileExistsError):
                os.link(target, path)
            os.unlink(target)
            fsync_dir(path.parent)
            log.warning(
                "kept %s: reported corrupt (%s), but the stored copy is sound", blob_id, reason
            )
            return None
        fsync_dir(path.parent)
        fsync_dir(self.quarantine_dir)
        log.error("quarantined %s to %s: %s", blob_id, target, problem)
        return target


def read_header(fd: int) -> tuple[BlobType, int]:
    """Returns (type, content length) of an open blob file; CorruptHeader if the two disagree."""
    blob_type, size = decode_header(os.pread(fd, HEADER_SIZE, 0))
    actual = os.fstat(fd).st_size - HEADER_SIZE
    if actual != size:
        raise CorruptHeader(f"file holds {actual} content bytes, its header says {size}")
    return blob_type, size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSystemBackend:
    """BlobBackend over a local folder; see the module docstring for the guarantees."""

    def __init__(self, root: Path, *, io_threads: int = 32) -> None:
        self.layout = FileSystemLayout(root)
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")
        self._lock_fd: int | None = None

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Takes ownership of the folder (creating it), and removes debris of earlier crashes."""
        root = self.layout.root
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True)
            fsync_dir(root.parent)
        fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataFolderLocked(
                f"data folder {root} is in use by another blobstore server "
                f"(it holds the lock on {root / 'LOCK'}); stop it or choose another --data-dir"
            ) from None
        self._lock_fd = fd
        # Only the lock holder touches the layout, so two servers starting at once cannot race.
        self.layout.create()
        removed = 0
        for leftover in self.layout.tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                _unlink_quietly(leftover)
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
        existing = self._existing(blob_id)
        if existing is not None:
            return PutResult(existing, created=False)
        fd, tmp_path = self._create_temp()
        try:
            try:
                _write_all(fd, encode_header(blob_type, len(data)))
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            raise io_error(exc, "store the blob") from None
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

    def _existing(self, blob_id: BlobId) -> BlobInfo | None:
        """The stored blob's metadata; a visibly broken copy is quarantined so a put heals it."""
        try:
            return self._stat_sync(blob_id)
        except DataLoss as exc:
            reason = str(exc)
        try:
            self.layout.quarantine(blob_id, reason)
        except OSError as exc:
            raise io_error(exc, "quarantine a corrupt blob") from None
        return None

    def _publish(self, tmp_path: Path, blob_id: BlobId, info: BlobInfo) -> PutResult:
        """Links the fsynced temp file into place; the first writer of an id wins."""
        final = self.layout.path_of(blob_id)
        try:
            # More than one round only if a broken copy was in the way and got quarantined.
            for _ in range(3):
                try:
                    os.link(tmp_path, final)
                except FileExistsError:
                    existing = self._existing(blob_id)
                    if existing is not None:
                        return PutResult(existing, created=False)
                    continue
                try:
                    fsync_dir(final.parent)
                except OSError:
                    # Not durable, so not acknowledged: take it back so a retry writes it again.
                    _unlink_quietly(final)
                    raise
                return PutResult(info, created=True)
            raise Unavailable(f"blob {blob_id} kept changing while it was stored; retry")
        except OSError as exc:
            raise io_error(exc, "publish the blob") from None
        finally:
            _unlink_quietly(tmp_path)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, blob_id: BlobId) -> Blob:
        return await self._run(lambda: self._get_sync(blob_id))

    def _get_sync(self, blob_id: BlobId) -> Blob:
        fd = self._open_blob(blob_id)
        try:
            info = self.layout.read_info(fd, blob_id)
            # One byte more than the header promises, so a file that grew is noticed.
            data = _pread_all(fd, info.size + 1, HEADER_SIZE)
        except OSError as exc:
            raise io_error(exc, "read the blob") from None
        finally:
            os.close(fd)
        return Blob(info, data)

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> _FileStream:
        def open_stream() -> tuple[int, BlobInfo]:
            fd = self._open_blob(blob_id)
            try:
                return fd, self.layout.read_info(fd, blob_id)
            except OSError as exc:
                os.close(fd)
                raise io_error(exc, "read the blob's header") from None
            except BaseException:
                os.close(fd)
                raise

        fd, info = await self._run(open_stream)
        return _FileStream(self._pool, fd, info, chunk_size)

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
        try:
            await self._run(lambda: self.layout.quarantine(blob_id, reason))
        except OSError as exc:
            raise io_error(exc, "quarantine a corrupt blob") from None


class _FdGuard:
    """A file descriptor used from pool threads, closed only once no thread is using it.

    A cancelled caller stops waiting for its pool thread, but the thread goes
    on with the descriptor. Closing it at that moment would let a concurrent
    open() reuse the number, and the late write would land in another file.
    """

    def __init__(self, pool: ThreadPoolExecutor, fd: int) -> None:
        self._pool = pool
        self._fd: int | None = fd
        self._busy: asyncio.Future[Any] | None = None

    @property
    def closed(self) -> bool:
        return self._fd is None

    async def run(self, func: Callable[[int], _T]) -> _T:
        fd = self._fd
        if fd is None:
            raise Unavailable("the file was already closed")
        future = asyncio.get_running_loop().run_in_executor(self._pool, func, fd)
        future.add_done_callback(_retrieve)
        self._busy = future
        return await asyncio.shield(future)

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Closes the descriptor (and calls `then`) now, or when the running operation ends."""
        fd, self._fd = self._fd, None
        if fd is None:
            return

        def finish(_: object = None) -> None:
            os.close(fd)
            if then is not None:
                then()

        busy = self._busy
        if busy is None or busy.done():
            finish()
        else:
            busy.add_done_callback(finish)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a shielded operation's failure as seen when its caller was cancelled."""
    if not future.cancelled():
        future.exception()


class _FileStream:
    """A blob file being read in chunks; content starts after the header."""

    def __init__(self, pool: ThreadPoolExecutor, fd: int, info: BlobInfo, chunk_size: int) -> None:
        self.info = info
        self._guard = _FdGuard(pool, fd)
        self._offset = HEADER_SIZE
        self._chunk_size = chunk_size

    def __aiter__(self) -> _FileStream:
        return self

    async def __anext__(self) -> bytes:
        if self._guard.closed:
            raise StopAsyncIteration
        offset, size = self._offset, self._chunk_size
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


class _FileWriter:
    """A streamed put into one temp file of a FileSystemBackend."""

    def __init__(self, backend: FileSystemBackend, fd: int, path: Path) -> None:
        self._backend = backend
        self._guard = _FdGuard(backend._pool, fd)
        self._path = path
        # Content starts after the header, which is written at commit once the
        # type and size are known.
        self._size = 0

    async def write(self, chunk: bytes) -> None:
        offset = HEADER_SIZE + self._size
        self._size += len(chunk)
        try:
            await self._guard.run(lambda fd: _pwrite_all(fd, chunk, offset))
        except OSError as exc:
            await self.abort()
            raise io_error(exc, "store the blob") from None

    async def commit(self, blob_id: BlobId, blob_type: BlobType) -> PutResult:
        info = BlobInfo(blob_id, blob_type, self._size)
        backend, path = self._backend, self._path

        def make_durable(fd: int) -> PutResult | None:
            existing = backend._existing(blob_id)
            if existing is not None:
                return PutResult(existing, created=False)
            try:
                _pwrite_all(fd, encode_header(blob_type, info.size), 0)
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
            return await self._guard.run(lambda _: backend._publish(path, blob_id, info))
        finally:
            await self.abort()

    async def abort(self) -> None:
        path = self._path
        self._guard.close(then=lambda: _unlink_quietly(path))


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
