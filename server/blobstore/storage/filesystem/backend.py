"""A BlobBackend on a local file system, durable across crashes and power cuts.

This module owns the life cycle (the folder lock, start-up clean-up and
journal replay, the thread pool) and routes each call to the module that
does the work:

    layout.py        the data folder: sub-folders, blob paths, quarantine
    blob_file.py     the on-disk format of a blob file (the one header decoder)
    publish.py       temp file → fsync → link(2) → fsync folder: every put ends there
    writer.py        streamed puts
    read.py          get / get_stream / stat / find_missing
    (layout.py)      delete (after a journal checkpoint) and scan
    journal.py       the group-commit journal's segments and records
    group_commit.py  the committer thread batching small puts
    replay.py        journal replay at start-up
    os_calls.py      system calls the os module lacks; the write loop; io_error
    scrub.py         the offline check (`blobstore verify`)
    packs/           the pack store of small blobs (`small_blob_store="packs"`; packs/__init__.py)

Small unary puts (up to `journal_max_blob_bytes`, on Linux) take a cheaper
road to the same promise: group_commit.py makes a batch of them durable with
one journal write and one fdatasync, then publishes each file without its
own fsyncs; a checkpoint syncs those files later, and start-up replays
whatever journal a crash left behind, before the first request is served.

With `small_blob_store="packs"` the committed record is the blob's home, in the
pack store (packs/): every call asks it first, the files second; large blobs and
streamed puts are files. A folder holding packs is opened with them whatever the setting.
(Why over 400 lines: which store holds a blob is decided in each call, here.)

Content is checked against the id by VerifyingBackend, one layer up.
Blocking work runs on a private thread pool; writes and fsyncs never run on
the event loop.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from blobstore.errors import BlobNotFound
from blobstore.ids import PREFIX, BlobId
from blobstore.model import NO_META, Blob, BlobInfo, BlobMeta, BlobType, PutResult
from blobstore.storage.base import (
    NO_LIMIT,
    OverLimit,
    PutItem,
    PutOutcome,
    ReadLimit,
    StoredBlob,
    StreamIntent,
)
from blobstore.storage.filesystem.fd_guard import open_on_pool
from blobstore.storage.filesystem.group_commit import GroupCommitter
from blobstore.storage.filesystem.journal import SEGMENT_BYTES, Journal
from blobstore.storage.filesystem.layout import (
    FileSystemLayout,
    list_shards,
    sync_folders,
    unlink_blobs,
)
from blobstore.storage.filesystem.os_calls import (
    fsync_dir,
    io_error,
    sync_filesystem,
    syncfs_available,
    unlink_quietly,
)
from blobstore.storage.filesystem.packs import Compactor, PackCommitLog, PackReads, PackStore
from blobstore.storage.filesystem.packs.segment import list_segments
from blobstore.storage.filesystem.publish import Publisher
from blobstore.storage.filesystem.read import BlobReader, Copy, FileStream
from blobstore.storage.filesystem.replay import replay
from blobstore.storage.filesystem.usage import StoreUsage
from blobstore.storage.filesystem.writer import FileWriter
from blobstore.storage.memory import MemoryStream

log = logging.getLogger(__name__)

_T = TypeVar("_T")
JOURNAL_MAX_BLOB_BYTES = 64 * 1024
"""Largest unary put made durable through the group-commit journal (0: none)."""
SMALL_BLOB_STORES = ("files", "packs")
"""Where small puts end up: a file each (after the journal), or pack segments."""
UNLINK_THREADS = 8
"""Pool threads a large delete (an eviction round) unlinks from at once."""
_SHARD = slice(len(PREFIX), len(PREFIX) + 2)


class DataFolderLocked(Exception):
    """Another server process already owns the data folder."""


class FileSystemBackend:
    """BlobBackend over a local folder; see the module docstring for the guarantees."""

    def __init__(
        self,
        root: Path,
        *,
        io_threads: int = 32,
        journal_max_blob_bytes: int = JOURNAL_MAX_BLOB_BYTES,
        journal_segment_bytes: int = SEGMENT_BYTES,
        small_blob_store: str = "files",
    ) -> None:
        if small_blob_store not in SMALL_BLOB_STORES:
            raise ValueError(f"small blob store {small_blob_store!r}: not {SMALL_BLOB_STORES}")
        self.layout = FileSystemLayout(root)
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="blob-io")
        self._journal_max_blob = journal_max_blob_bytes
        self._journal_segment = journal_segment_bytes
        self._committer: GroupCommitter | None = None
        self._lock_fd: int | None = None
        self._root_fd: int | None = None
        self._reader = BlobReader(self.layout, self._pool)
        self._publisher = Publisher(self.layout, self._reader)
        self._small_store = small_blob_store
        self.packs: PackStore | None = None
        self.compactor: Compactor | None = None

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
        self._publisher.open(self._root_fd)
        # Only the lock holder touches the layout, so two servers starting at once cannot race.
        self.layout.create()
        removed = 0
        for leftover in self.layout.tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                unlink_quietly(leftover)
            removed += 1
        if removed:
            log.info("removed %d unfinished temporary file(s) from %s", removed, self.layout.tmp)
        journal = Journal(self.layout.journal, self._journal_segment, self.layout)
        replay(journal, self.layout, self._publisher, self._sync_all)
        if self._small_store == "packs" or list_segments(root / "packs"):
            if self._small_store != "packs":
                log.warning("%s holds pack segments: small blobs are stored there", root)
            self._open_packs()
        elif self._journal_max_blob > 0 and syncfs_available():
            self._committer = GroupCommitter(journal, self._file_blob, self._sync_all, io_error)
            self._committer.start()

    def _open_packs(self) -> None:
        packs = PackStore(self.layout, self._journal_segment)
        packs.open()
        self.packs, self.compactor = packs, Compactor(packs)
        self._pack_reads = PackReads(packs, self._pool)
        packs.appender.on_sealed = self.compactor.request  # index file, then compaction
        self._publisher.other_copy = packs.existing  # a streamed put of a blob in a pack
        self.compactor.request()  # segments left mostly dead by the last run
        if self._journal_max_blob > 0:
            self._committer = GroupCommitter(
                PackCommitLog(packs), packs.filed, lambda: None, io_error
            )
            self._committer.start()

    # -- what the metrics read (storage/filesystem/metrics.py) -------------------------------

    @property
    def usage(self) -> StoreUsage:
        return self.layout.usage

    @property
    def committer(self) -> GroupCommitter | None:
        """The group committer (None: every put syncs its own file, or not open yet)."""
        return self._committer

    def journal_backlog(self) -> int:
        """Journal segments on disk not yet checkpointed (the active one included)."""
        return len(Journal(self.layout.journal).segments())

    def close(self) -> None:
        if self._committer is not None:
            self._committer.stop()
            self._committer = None
        if self.compactor is not None:
            self.compactor.stop()
        if self.packs is not None:
            self.packs.close()
        self._pool.shutdown(wait=True)
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, func: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    def _sync_all(self) -> None:
        """Makes every blob filed so far durable (one syncfs of the data folder's file system)."""
        assert self._root_fd is not None
        sync_filesystem(self._root_fd)

    # -- writes -----------------------------------------------------------------------------

    async def put(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
    ) -> PutResult:
        # A re-put is answered only from a stored copy that holds exactly `data` (which
        # hashes to the id): most often found right here, without a thread (remembered,
        # or small and cached), or its file is missing. Any other copy is compared on
        # the pool, which quarantines it if it does not match so that this put stores
        # a sound one.
        found = await self._stored_copy(blob_id, data)
        if isinstance(found, BlobInfo):
            return PutResult(found, created=False)
        absent = found is Copy.ABSENT  # a writer that gets there first meets link(2)
        if absent and self._committer is not None and len(data) <= self._journal_max_blob:
            return await self._committer.put(blob_id, blob_type, data, meta)
        publisher = self._publisher
        return await self._run(
            lambda: publisher.store(blob_id, blob_type, data, meta, check=not absent)
        )

    async def put_many(self, items: Sequence[PutItem]) -> list[PutOutcome]:
        """put() of each item; the small new ones made durable by one journal commit.

        Copies already stored are answered as put() answers them; blobs over the
        journal's size (or every one without a journal) are published on the pool,
        each with its own fsyncs, at the same time. Returns once all are durable.
        """
        outcomes: list[PutOutcome | None] = [None] * len(items)
        journaled: list[int] = []
        published: list[tuple[int, bool]] = []
        for index, item in enumerate(items):
            found = await self._stored_copy(item.blob_id, item.data)
            if isinstance(found, BlobInfo):
                outcomes[index] = PutResult(found, created=False)
                continue
            absent = found is Copy.ABSENT
            small = len(item.data) <= self._journal_max_blob
            if absent and small and self._committer is not None:
                journaled.append(index)
            else:
                published.append((index, absent))

        async def publish(index: int, absent: bool) -> None:
            item, publisher = items[index], self._publisher
            try:
                outcomes[index] = await self._run(
                    lambda: publisher.store(
                        item.blob_id, item.blob_type, item.data, item.meta, check=not absent
                    )
                )
            except Exception as exc:
                outcomes[index] = exc

        async def commit() -> None:
            if not journaled or self._committer is None:
                return
            group = [items[i] for i in journaled]
            try:
                results = await self._committer.put_many(
                    [(i.blob_id, i.blob_type, i.data, i.meta) for i in group]
                )
            except Exception as exc:
                results = [exc] * len(group)
            for index, outcome in zip(journaled, results, strict=True):
                outcomes[index] = outcome

        await asyncio.gather(commit(), *(publish(i, absent) for i, absent in published))
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(items), "every item of a put_many gets an outcome"
        return done

    async def _stored_copy(self, blob_id: BlobId, data: bytes) -> BlobInfo | Copy:
        """The stored copy's metadata if one holds exactly `data`: a pack record (compared
        on the event loop if it is in the page cache, else on the pool, which quarantines
        one that differs), else a file (read.match_now). ABSENT: no copy at all."""
        if self.packs is not None and self.packs.holds(blob_id):
            info = await self._pack_reads.match(blob_id, data)
            if info is not None:
                return info
        return self._reader.match_now(blob_id, data)

    def _file_blob(
        self, blob_id: BlobId, blob_type: BlobType, data: bytes, meta: BlobMeta
    ) -> PutResult:
        """Publishes a blob whose journal record is durable: no fsync of its own."""
        return self._publisher.store(blob_id, blob_type, data, meta, check=False, durable=False)

    async def open_writer(self, intent: StreamIntent | None = None) -> FileWriter:
        # A client that abandons its stream while the file is made must not leave it behind
        # (nor its descriptor open) until the next start-up's clean-up.
        fd, path = await open_on_pool(self._pool, self._publisher.create_temp, _discard_temp)
        return FileWriter(self._publisher, self._pool, fd, path)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, blob_id: BlobId, limit: ReadLimit = NO_LIMIT) -> Blob:
        location = None if self.packs is None else self.packs.location(blob_id)
        if location is None:
            return await self._reader.get(blob_id, limit)
        if not limit.admit(location.size):
            raise OverLimit(BlobInfo(blob_id, location.blob_type, location.size))
        blob = await self._pack_reads.read(blob_id)
        if blob is None:
            raise BlobNotFound(blob_id)  # removed since the look-up
        return blob

    async def _packed(self, blob_id: BlobId) -> Blob | None:
        """The blob as its pack record holds it (None: it has none)."""
        packed = self.packs is not None and self.packs.holds(blob_id)
        return await self._pack_reads.read(blob_id) if packed else None

    async def get_stream(self, blob_id: BlobId, chunk_size: int) -> FileStream | MemoryStream:
        if (blob := await self._packed(blob_id)) is not None:
            return MemoryStream(blob.info, blob.data, chunk_size)
        return await self._reader.get_stream(blob_id, chunk_size)

    async def stat(self, blob_id: BlobId) -> BlobInfo | None:
        blob = await self._packed(blob_id)
        return blob.info if blob is not None else await self._reader.stat(blob_id)

    async def find_missing(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        packs = self.packs
        if packs is not None:
            blob_ids = [blob_id for blob_id in blob_ids if not packs.holds(blob_id)]
            if not blob_ids:
                return []
        return await self._reader.find_missing(blob_ids)

    async def quarantine(self, blob_id: BlobId, reason: str) -> None:
        packs, compactor = self.packs, self.compactor
        try:
            if packs is not None and await self._run(lambda: packs.quarantine(blob_id, reason)):
                if compactor is not None:
                    compactor.request()  # the tombstone may leave a segment mostly dead
                return
            await self._run(lambda: self.layout.quarantine(blob_id, reason))
        except OSError as exc:
            raise io_error(exc, "quarantine a corrupt blob") from None

    # -- removal and listing -------------------------------------------------------------

    async def delete(self, blob_ids: Sequence[BlobId]) -> list[BlobId]:
        # The journal first: a segment still holding a record of one of these blobs
        # would bring it back at the next start-up's replay.
        committer, packs = self._committer, self.packs
        if committer is not None and committer.holds_any(blob_ids):
            await committer.checkpoint()
        # Unlinks from a few pool threads at once, each its own shards: one thread took
        # about 2 ms per unlink on a busy disk, slower than puts arrive at the cap (the
        # file system runs unlinks in different folders side by side).
        groups: list[list[BlobId]] = [[] for _ in range(UNLINK_THREADS)]
        for blob_id in blob_ids:
            groups[int(blob_id[_SHARD], 16) % UNLINK_THREADS].append(blob_id)
        touched: set[str] = set()
        layout = self.layout
        outcomes = await asyncio.gather(
            *(self._run(functools.partial(unlink_blobs, layout, g, touched)) for g in groups if g),
            return_exceptions=True,
        )
        sync_all = self._sync_all if syncfs_available() else None
        try:
            await self._run(lambda: sync_folders(touched, sync_all))
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            # A pack record is removed by a tombstone: the next start does not read it back.
            packed = [] if packs is None else await self._run(lambda: packs.delete(blob_ids))
        except OSError as exc:
            raise io_error(exc, "delete blobs") from None
        removed = {b for outcome in outcomes if isinstance(outcome, list) for b in outcome}
        if packed and self.compactor is not None:
            removed.update(packed)
            self.compactor.request()
        return [b for b in dict.fromkeys(blob_ids) if b in removed]

    async def scan(self, known: Container[BlobId] = ()) -> AsyncIterator[list[StoredBlob]]:
        packs = self.packs
        if packs is not None:
            yield await self._run(lambda: packs.listing(known))
        shards = self.layout.shards()
        for start in range(0, len(shards), 16):  # 16 shards a thread hop
            group = shards[start : start + 16]
            yield await self._run(functools.partial(list_shards, group, known))


def _discard_temp(created: tuple[int, str]) -> None:
    """Closes and removes a temp file that nobody will write (see open_writer)."""
    fd, path = created
    os.close(fd)
    unlink_quietly(path)
