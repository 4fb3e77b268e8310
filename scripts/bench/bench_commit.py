"""Group-commit experiments for bench_variants: durable small writes, batched.

Each writer makes a Put's 1 KiB durable before it is acknowledged, with no
canonicalising, hashing or checks, as bench_echo's DurableWriter does, but
shares the expensive steps between the puts that arrive together:

    batched  file per blob, as the store keeps them: one committer thread
             takes every waiting put, writes each to an O_TMPFILE file,
             starts write-back of all, fsyncs each file, links each, then
             fsyncs each folder touched - the same syscalls per put, but the
             journal commits are shared by the batch
    pack     one append-only file: the batch is one write and one fdatasync

The event loop is woken once per batch, not once per put.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import queue
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

_WRITE = 2  # SYNC_FILE_RANGE_WRITE


class GroupCommitter:
    """Runs batches of waiting writes on one thread; resolves their futures together."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True, name="committer").start()

    async def write(self, data: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((data, future))
        await future

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.commit([data for data, _ in batch])
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_resolve, [future for _, future in batch])

    def commit(self, items: list[bytes]) -> None:
        raise NotImplementedError


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class BatchedFiles(GroupCommitter):
    """File per blob, with the fsyncs of a batch issued together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = str(root / "tmp")
        os.makedirs(self.tmp, exist_ok=True)
        for i in range(256):
            (root / "blobs" / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        super().__init__()

    def commit(self, items: list[bytes]) -> None:
        fds = []
        for data in items:
            fd = os.open(self.tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            os.write(fd, data)
            fds.append(fd)
        for fd in fds:
            _start_writeback(fd)
        for fd in fds:
            os.fsync(fd)
        shards = set()
        for fd in fds:
            name = secrets.token_hex(16)
            shard = f"{self.root}/blobs/{name[:2]}"
            os.link(
                f"/proc/self/fd/{fd}",
                f"{shard}/{name}",
                src_dir_fd=self._root_fd,
                dst_dir_fd=self._root_fd,
            )
            os.close(fd)
            shards.add(shard)
        for shard in shards:
            dir_fd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class JournalThenFiles(BatchedFiles):
    """File per blob made durable by a journal: the batch is appended to one
    file and fdatasynced, then each blob is written to its own file and linked
    without an fsync of its own (a checkpoint would sync them later)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._journal = os.open(root / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def commit(self, items: list[bytes]) -> None:
        os.write(self._journal, b"".join(items))
        os.fdatasync(self._journal)
        for data in items:
            fd = os.open(self.tmp, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                name = secrets.token_hex(16)
                os.link(
                    f"/proc/self/fd/{fd}",
                    f"{self.root}/blobs/{name[:2]}/{name}",
                    src_dir_fd=self._root_fd,
                    dst_dir_fd=self._root_fd,
                )
            finally:
                os.close(fd)


class PackFile(GroupCommitter):
    """One append-only file: a batch is one write and one fdatasync."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(root / "pack", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        super().__init__()

    def commit(self, items: list[bytes]) -> None:
        os.write(self._fd, b"".join(items))
        os.fdatasync(self._fd)


_LIBC = ctypes.CDLL(None, use_errno=True)


def _start_writeback(fd: int) -> None:
    _LIBC.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), ctypes.c_uint(_WRITE))


COMMITTERS: dict[str, Callable[[Path], GroupCommitter]] = {
    "batched": BatchedFiles,
    "journal": JournalThenFiles,
    "pack": PackFile,
}
