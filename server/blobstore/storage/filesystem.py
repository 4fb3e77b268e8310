"""A BlobBackend on a local file system, durable across crashes and power cuts.

Layout under the data folder:

    LOCK            held (flock) by the one server that owns the folder
    blobs/ab/<hex>  published blobs, sharded by the first two hex digits
    tmp/            puts in progress; anything here at start-up is debris
    quarantine/     blobs that failed verification, kept for analysis
    journal/        the group-commit journal of small puts (server/blobstore/storage/journal.py)

A put writes a temp file, fsyncs it, publishes it with link(2) (atomic, and
never replaces: the first writer of an id wins) and fsyncs the shard folder
before it is acknowledged. Readers therefore only ever see complete files,
and a crash leaves at most debris in tmp/, removed at the next start.

Small unary puts (up to `journal_max_blob_bytes`, on Linux) take a cheaper
road to the same promise: server/blobstore/storage/group_commit.py makes a batch of them
durable with one journal write and one fdatasync, then publishes each file
the same way but without its own fsyncs; a checkpoint syncs those files
later, and start-up replays whatever journal a crash left behind, before
the first request is served.

Every open checks the header (CRC, and length against the file's size), so
a broken or truncated file is DataLoss at once; a put over such a copy
quarantines it and stores a sound one. Content is checked against the id by
VerifyingBackend, one layer up.

Blocking work runs on a private thread pool. Reads of small blobs and of
headers (get, stat, and the existence check of a put) first try the event
loop: open, fstat and a preadv with RWF_NOWAIT, which fails instead of
waiting when the data is not in the page cache, and only then go to the
pool - a thread round trip costs ten times such a read. open() and fstat()
of a file whose directory entry is not cached can still wait for the disk
briefly on the loop; writes, fsyncs and large reads never run there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from blobstore.errors import BlobNotFound, DataLoss, StorageFull, Unavailable
from blobstore.ids import PREFIX, BlobId, blob_id_from_digest, hex_digest
from blobstore.model import NO_METADATA, Blob, BlobInfo, BlobMetadata, BlobType, PutResult
from blobstore.storage.base import OverLimit
from blobstore.storage.blob_file import (
    HEADER_SIZE,
    blob_info,
    check_file,
    encode_header,
    encode_parts,
    encode_trailer,
    read_info,
    trailer_size,
)
from blobstore.storage.group_commit import GroupCommitter
from blobstore.storage.journal import SEGMENT_BYTES, Journal, JournalRecord, read_segment
from blobstore.storage.os_calls import fsync_dir, start_writeback, sync_filesystem, syncfs_available

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_HEX = "0123456789abcdef"
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC
_ID_PREFIX = len(PREFIX)
_ANONYMOUS_TEMP = hasattr(os, "O_TMPFILE")
WRITEBACK_EVERY = 8 * 1024 * 1024
"""A streamed put starts the disk write-back of its file every this many bytes."""
INLINE_READ_LIMIT = 256 * 1024
"""Largest blob read on the event loop (when cached): about 30 us of copying at most."""
JOURNAL_MAX_BLOB_BYTES = 64 * 1024
"""Largest unary put made durable through the group-commit journal (0: none)."""


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
        self.journal = root / "journal"  # created by Journal.open(), not by create()

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
        """Decodes the header (and metadata) of an open blob file; DataLoss if it is broken."""
        return read_info(fd, blob_id)

    def check_file(self, path: Path, blob_id: BlobId) -> str | None:
        """Returns what is wrong with the blob file at `path`, or None if it is sound."""
        return check_file(path, blob_id)

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


class FileSystemBackend:
    """BlobBackend over a local folder; see the module docstring for the guarantees."""

    def __init__(
        self,
        root: Path,
        *,
        io_threads: int = 32,
        journal_max_blob_bytes: int = JOURNAL_MAX_BLOB_BYTES,
        journal_segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.layout = FileSystemLayout(root)
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")
        self._journal_max_blob = journal_max_blob_bytes
        self._journal_segment = journal_segment_bytes
        self._committer: GroupCommitter | None = None
        self._lock_fd: int | None = None
        self._root_fd: int | None = None
        self._anonymous_temp = False
        self._blobs_dir = str(self.layout.blobs)
        self._temp_prefix = f"{self.layout.tmp}/{secrets.token_hex(6)}-"
        self._temp_seq = itertools.count()

    def _blob_path(self, blob_id: BlobId) -> str:
        """layout.path_of as a plain string: pathlib costs microseconds per call."""
        digest = hex_digest(blob_id)
        return f"{self._blobs_dir}/{digest[:2]}/{digest}"

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
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._anonymous_temp = _ANONYMOUS_TEMP and os.path.isdir("/proc/self/fd")
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
        journal = Journal(self.layout.journal, self._journal_segment)
        self._replay(journal)
        if self._journal_max_blob > 0 and syncfs_available():
            self._committer = GroupCommitter(journal, self._file_blob, self._sync_all, io_error)
            self._committer.start()

    def close(self) -> None:
        if self._committer is not None:
            self._committer.stop()
            self._committer = None
        self._pool.shutdown(wait=True)
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    # -- writes -----------------------------------------------------------------------------

    async def put(
        self,
        blob_id: BlobId,
        blob_type: BlobType,
        data: bytes,
        metadata: BlobMetadata = NO_METADATA,
    ) -> PutResult:
        # Most often answered here, without a thread: the blob exists (its header is
        # cached) or its file is missing. A broken copy is left to the pool's check,
        # which quarantines it so that this put stores a sound one.
        try:
            existing = await self.stat(blob_id)
        except DataLoss:
            check = True
        else:
            if existing is not None:
                return PutResult(existing, created=False)
            check = False  # a writer that gets there first is caught by link(2) in _publish
        if self._committer is not None and len(data) <= self._journal_max_blob:
            return await self._committer.put(blob_id, blob_type, data, metadata)
        return await self._run(
            lambda: self._put_sync(blob_id, blob_type, data, metadata, check=check)
        )

    def _file_blob(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, metadata: BlobMetadata
    ) -> PutResult:
        """Publishes a blob whose journal record is durable: no fsync of its own."""
        return self._put_sync(blob_id, blob_type, data, metadata, check=False, durable=False)

    def _put_sync(
        self,
        blob_id: BlobId,
        blob_type: BlobType,
        data: bytes,
        metadata: BlobMetadata,
        *,
        check: bool = True,
        durable: bool = True,
    ) -> PutResult:
        if check:
            existing = self._existing(blob_id)
            if existing is not None:
                return PutResult(existing, created=False)
        info = BlobInfo(blob_id, blob_type, len(data), metadata)
        parts = encode_parts(blob_type, data, metadata)
        if self._anonymous_temp:
            fd = self._create_anonymous()
            if fd is not None:
                try:
                    try:
                        _writev_all(fd, parts)
                        if durable:
                            os.fsync(fd)
                    except OSError as exc:
                        raise io_error(exc, "store the blob") from None
                    return self._publish(
                        f"/proc/self/fd/{fd}", blob_id, info, anonymous=True, durable=durable
                    )
                finally:
                    os.close(fd)  # an anonymous file not linked by now vanishes with it
        fd, tmp_path = self._create_temp()
        try:
            try:
                _writev_all(fd, parts)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp_path)
            raise io_error(exc, "store the blob") from None
        return self._publish(tmp_path, blob_id, info, durable=durable)

    def _create_anonymous(self) -> int | None:
        """An unnamed file in tmp/ (O_TMPFILE), or None if the file system has none.

        It needs no name, no unlink afterwards, and leaves no debris after a
        crash: two directory updates fewer per put than a named temp file.
        """
        try:
            return os.open(self.layout.tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._anonymous_temp = False
                return None
            raise io_error(exc, "create a temporary file") from None

    async def open_writer(self) -> _FileWriter:
        fd, path = await self._run(self._create_temp)
        return _FileWriter(self, fd, path)

    def _create_temp(self) -> tuple[int, str]:
        # Unique within this server's run (O_EXCL catches any clash); debris of earlier
        # runs is removed at start-up.
        path = f"{self._temp_prefix}{next(self._temp_seq)}.tmp"
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

    def _publish(
        self,
        tmp_path: str,
        blob_id: BlobId,
        info: BlobInfo,
        *,
        anonymous: bool = False,
        durable: bool = True,
    ) -> PutResult:
        """Links the fsynced temp file into place; the first writer of an id wins.

        `anonymous`: tmp_path is /proc/self/fd/N of an O_TMPFILE file, linked
        with linkat(AT_SYMLINK_FOLLOW) - os.link uses that only when given a
        folder descriptor (ignored, as both paths are absolute).
        `durable=False`: the shard folder is not fsynced (a journal covers the blob).
        """
        final = self._blob_path(blob_id)
        root_fd = self._root_fd if anonymous else None
        try:
            # More than one round only if a broken copy was in the way and got quarantined.
            for _ in range(3):
                try:
                    if root_fd is None:
                        os.link(tmp_path, final)
                    else:
                        os.link(tmp_path, final, src_dir_fd=root_fd, dst_dir_fd=root_fd)
                except FileExistsError:
                    existing = self._existing(blob_id)
                    if existing is not None:
                        return PutResult(existing, created=False)
                    continue
                try:
                    if durable:
                        fsync_dir(os.path.dirname(final))
                except OSError:
                    # Not durable, so not acknowledged: take it back so a retry writes it again.
                    _unlink_quietly(final)
                    raise
                return PutResult(info, created=True)
            raise Unavailable(f"blob {blob_id} kept changing while it was stored; retry")
        except OSError as exc:
            raise io_error(exc, "publish the blob") from None
        finally:
            if not anonymous:
                _unlink_quietly(tmp_path)

    # -- the journal ------------------------------------------------------------------------

    def _sync_all(self) -> None:
        """Makes every blob filed so far durable (one syncfs of the data folder's file system)."""
        assert self._root_fd is not None
        sync_filesystem(self._root_fd)

    def _replay(self, journal: Journal) -> None:
        """Files every blob that journal segments left by a crash hold, durably, then
        deletes the segments. A damaged segment goes to quarantine/ after what could be read."""
        segments = journal.segments()
        if not segments:
            return
        restored = checked = 0
        damaged = []
        for segment in segments:
            contents = read_segment(segment)
            for record in contents.records:
                checked += 1
                restored += self._restore(record)
            if contents.damaged:
                damaged.append((segment, contents.valid_bytes, contents.total_bytes))
        if syncfs_available():
            self._sync_all()  # blobs filed before the crash but never synced
        else:
            os.sync()
        for segment, valid, total in damaged:
            target = self.layout.quarantine_dir / f"journal-{segment.name}.{time.time_ns()}"
            os.rename(segment, target)
            fsync_dir(self.layout.quarantine_dir)
            # A cut-off tail is a batch the crash interrupted, never acknowledged.
            log.warning(
                "journal segment %s: bytes %d..%d are cut short or broken and were not "
                "replayed (kept as %s)",
                segment.name,
                valid,
                total,
                target,
            )
        for segment in segments:
            journal.retire(segment)
        log.info(
            "replayed %d journal segment(s): %d blob(s) checked, %d restored",
            len(segments),
            checked,
            restored,
        )

    def _restore(self, record: JournalRecord) -> int:
        """Makes sure the blob of a journal record is filed and sound; 1 if it had to be."""
        blob_id = blob_id_from_digest(record.digest.hex())
        path = self.layout.path_of(blob_id)
        if os.path.lexists(path):
            problem = self.layout.check_file(path, blob_id)
            if problem is None:
                return 0
            self.layout.quarantine(blob_id, f"found by journal replay: {problem}")
        self._put_sync(blob_id, record.blob_type, record.data, record.metadata, check=False)
        return 1

    # -- reads ------------------------------------------------------------------------------

    async def get(
        self,
        blob_id: BlobId,
        max_size: int | None = None,
        reserve: Callable[[int], object] | None = None,
    ) -> Blob:
        """The whole blob; OverLimit (before any content is read) if it is over max_size.

        `reserve(size)` is called on the event loop once the file's size is
        known, before any content is read (the guard sizes the reply with it).
        A small blob already in the page cache is read right here, on the event
        loop (open, fstat, one preadv with RWF_NOWAIT, close: ~10 us); only
        when the read would wait for the disk does it go to the thread pool,
        whose round trip costs ten times that.
        """
        fd = self._open_blob(blob_id)
        try:
            file_size = os.fstat(fd).st_size
            whole = max_size is None or file_size - HEADER_SIZE <= max_size
            if whole and reserve is not None:
                reserve(max(0, file_size - HEADER_SIZE))
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise io_error(exc, "read the blob") from None
            raise
        try:
            blob = self._read_blob(fd, blob_id, file_size, max_size, wait=False)
        except BaseException:
            os.close(fd)
            raise
        if blob is not None:
            os.close(fd)
            return blob
        blob = await self._read_in_pool(
            fd, lambda wait: self._read_blob(fd, blob_id, file_size, max_size, wait=True)
        )
        assert blob is not None  # a waiting read always has the data
        return blob

    async def _read_in_pool(self, fd: int, read: Callable[[bool], _T | None]) -> _T | None:
        """Runs read(wait=True) on the pool and closes `fd` (also if the caller gives up)."""

        def waited() -> _T | None:
            try:
                return read(True)
            finally:
                os.close(fd)  # here, not by the caller: it may stop waiting (cancelled)

        return await self._run(waited)

    def _read_blob(
        self, fd: int, blob_id: BlobId, file_size: int, max_size: int | None, *, wait: bool
    ) -> Blob | None:
        """Reads the blob of an open file of `file_size` bytes; None if `wait` is False and
        the disk is needed."""
        whole = max_size is None or file_size - HEADER_SIZE <= max_size
        try:
            if not wait:
                if whole and file_size > HEADER_SIZE + INLINE_READ_LIMIT:
                    return None
                # One byte more than the file holds, so a file that grew is noticed.
                want = file_size + 1 if whole else HEADER_SIZE
                raw = _pread_cached(fd, want, min(want, file_size))
                if raw is None:
                    return None
                header = raw[:HEADER_SIZE]
                if not whole:
                    raise OverLimit(blob_info(blob_id, header, file_size, trailer=None))
                metadata_size = trailer_size(header)
                trailer = raw[file_size - metadata_size : file_size] if metadata_size else b""
                info = blob_info(blob_id, header, file_size, trailer)
                data = raw[HEADER_SIZE : len(raw) - metadata_size]
            else:
                if not whole:
                    header = os.pread(fd, HEADER_SIZE, 0)
                    raise OverLimit(blob_info(blob_id, header, file_size, trailer=None))
                info = read_info(fd, blob_id)
                # The trailer's bytes and one more: data longer than info.size means the
                # file grew.
                metadata_size = file_size - HEADER_SIZE - info.size
                raw = _pread_all(fd, info.size + metadata_size + 1, HEADER_SIZE)
                data = raw[: len(raw) - metadata_size]
        except OSError as exc:
            raise io_error(exc, "read the blob") from None
        if max_size is not None and info.size > max_size:
            raise OverLimit(info)
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
        digest = blob_id[_ID_PREFIX:]  # _blob_path, inlined: every read starts here
        try:
            return os.open(f"{self._blobs_dir}/{digest[:2]}/{digest}", _OPEN_READ)
        except FileNotFoundError:
            raise BlobNotFound(blob_id) from None
        except OSError as exc:
            raise io_error(exc, "open the blob") from None

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        """The blob's metadata; read on the event loop when its header is in the page cache."""
        try:
            fd = self._open_blob(blob_id)
        except BlobNotFound:
            return None
        try:
            info = self._read_info(fd, blob_id, wait=False)
        except BaseException:
            os.close(fd)
            raise
        if info is not None:
            os.close(fd)
            return info
        return await self._read_in_pool(fd, lambda wait: self._read_info(fd, blob_id, wait=wait))

    def _read_info(self, fd: int, blob_id: BlobId, *, wait: bool) -> BlobInfo | None:
        try:
            if wait:
                return read_info(fd, blob_id)
            file_size = os.fstat(fd).st_size
            cached = _pread_cached(fd, HEADER_SIZE, min(HEADER_SIZE, file_size))
            if cached is None:
                return None
            metadata_size = trailer_size(cached)
            if metadata_size == 0:
                return blob_info(blob_id, cached, file_size)
            # Metadata ends the file: read it whole when it is small and cached, else in
            # the pool.
            if file_size > INLINE_READ_LIMIT:
                return None
            whole = _pread_cached(fd, file_size, file_size)
            if whole is None:
                return None
            return blob_info(blob_id, whole[:HEADER_SIZE], file_size, whole[-metadata_size:])
        except OSError as exc:
            raise io_error(exc, "read the blob's header") from None

    def _stat_sync(self, blob_id: BlobId) -> BlobInfo | None:
        try:
            fd = self._open_blob(blob_id)
        except BlobNotFound:
            return None
        try:
            return self._read_info(fd, blob_id, wait=True)
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
        # Content runs to the end of the file (so a file that grew shows as more content,
        # which the verifying stream refuses), or, when metadata follows it, to its size.
        self._end = HEADER_SIZE + info.size if info.metadata else None

    def __aiter__(self) -> _FileStream:
        return self

    async def __anext__(self) -> bytes:
        if self._guard.closed:
            raise StopAsyncIteration
        offset, size = self._offset, self._chunk_size
        if self._end is not None:
            size = min(size, self._end - offset)
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


class _FileWriter:
    """A streamed put into one temp file of a FileSystemBackend."""

    def __init__(self, backend: FileSystemBackend, fd: int, path: str) -> None:
        self._backend = backend
        self._guard = _FdGuard(backend._pool, fd)
        self._path = path
        # Content starts after the header, which is written at commit once the
        # type and size are known (with the metadata trailer after the content).
        self._size = 0
        self._flushed = HEADER_SIZE

    async def write(
        self,
        chunk: bytes | memoryview,
        before: Callable[[bytes | memoryview], object] | None = None,
    ) -> None:
        offset = HEADER_SIZE + self._size
        self._size += len(chunk)
        flush_from = self._flushed
        end = offset + len(chunk)
        if end - flush_from >= WRITEBACK_EVERY:
            self._flushed = end

        def write(fd: int) -> None:
            if before is not None:
                before(chunk)
            _pwrite_all(fd, chunk, offset)
            if end - flush_from >= WRITEBACK_EVERY:
                start_writeback(fd, flush_from, end - flush_from)

        try:
            await self._guard.run(write)
        except OSError as exc:
            await self.abort()
            raise io_error(exc, "store the blob") from None

    async def commit(
        self, blob_id: BlobId, blob_type: BlobType, metadata: BlobMetadata = NO_METADATA
    ) -> PutResult:
        info = BlobInfo(blob_id, blob_type, self._size, metadata)
        trailer = encode_trailer(metadata)
        backend, path = self._backend, self._path

        def make_durable(fd: int) -> PutResult | None:
            existing = backend._existing(blob_id)
            if existing is not None:
                return PutResult(existing, created=False)
            try:
                if trailer:  # after the content, which is all written by now
                    _pwrite_all(fd, trailer, HEADER_SIZE + info.size)
                _pwrite_all(fd, encode_header(blob_type, info.size, len(trailer)), 0)
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


def _pread_cached(fd: int, size: int, expected: int) -> bytes | None:
    """Up to `size` bytes from offset 0 if all of them are in the page cache, else None.

    None also when fewer than `expected` bytes came back (only part was
    cached) or the system cannot say (no RWF_NOWAIT): the caller then reads
    in a pool thread, where waiting for the disk blocks nothing else.
    """
    if _RWF_NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], 0, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    if got < expected:
        return None
    del buffer[got:]
    return bytes(buffer)


def _writev_all(fd: int, parts: list[bytes]) -> None:
    """Writes the parts in order with as few system calls as the kernel allows (one)."""
    total = sum(len(part) for part in parts)
    written = os.writev(fd, parts)
    if written < total:  # rare: a signal or a full disk mid-write; finish part by part
        rest = memoryview(b"".join(parts))[written:]
        while rest:
            rest = rest[os.write(fd, rest) :]


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
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


def _unlink_quietly(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
