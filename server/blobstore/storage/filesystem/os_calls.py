"""File-system calls the os module lacks or spells out at length: folder fsync,
syncfs(2) and sync_file_range(2) (Linux, through ctypes; None elsewhere), the
one write loop (split at IOV_MAX), the one way a blob file is opened for reading
(open_regular: never through a symlink, never waiting on a FIFO), whole and
cache-only reads, and the one translation of an OSError into the error a caller
of the store sees (logged, with its errno, when it is not a full disk)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blobstore.errors import StorageFull, Unavailable

log = logging.getLogger(__name__)

_SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def io_error(exc: OSError, action: str) -> Exception:
    """Translates an OSError from the disk into the store's error for the caller.

    A full disk is expected (STORAGE_FULL tells the client); anything else is
    not, and is logged here, once per translation, with its errno name and
    number. They are part of the message's text, not its arguments, so that the
    throttled logging (service/hardening.py) counts repeats of one error but
    never folds a different one into it.
    """
    if exc.errno in _SPACE_ERRORS:
        return StorageFull(f"no space left to {action}: {os.strerror(exc.errno or 0)}")
    code = exc.errno or 0
    name = errno.errorcode.get(code, "?")
    log.error(f"I/O error {name} (errno {code}) while trying to {action}: %s", exc.strerror or exc)
    return Unavailable(f"I/O error while trying to {action}: {exc.strerror or exc}")


class NotRegularFile(Exception):
    """Something other than a regular file (folder, FIFO, socket, symlink) is at the path."""


_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def open_regular(path: str | Path) -> tuple[int, os.stat_result]:
    """Opens a regular file for reading; returns its descriptor and fstat.

    O_NOFOLLOW: a symlink is refused, never followed out of the data folder;
    O_NONBLOCK: a FIFO opens at once instead of waiting for a writer, which
    would hang the caller (on a regular file the flag does nothing). Raises
    FileNotFoundError or NotADirectoryError if nothing can be there,
    NotRegularFile if something else is.
    """
    try:
        fd = os.open(path, _OPEN_READ)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile("a symbolic link is where a blob file belongs") from None
        if exc.errno == errno.ENXIO:  # a socket (or a device without a driver)
            raise NotRegularFile("a socket is where a blob file belongs") from None
        raise
    try:
        info = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "something that is not a regular file")
        raise NotRegularFile(f"{kind} is where a blob file belongs")
    return fd, info


def is_regular(path: str | Path) -> bool:
    """True if a regular file (not a symlink to one) is at the path."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def is_folder(path: str | Path) -> bool:
    """True if a folder (not a symlink to one) is at the path."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def fsync_dir(path: Path | str) -> None:
    """Makes the folder's entries (files created, linked, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_function(name: str, *argtypes: Any) -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = list(argtypes)
    func.restype = ctypes.c_int
    return func


_SYNCFS = _libc_function("syncfs", ctypes.c_int)
_SYNC_FILE_RANGE = _libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def syncfs_available() -> bool:
    return _SYNCFS is not None


def sync_filesystem(fd: int) -> None:
    """syncfs(2): makes everything written to the file system holding `fd` durable.

    Raises OSError, also for a write-back error since `fd` was opened (Linux 5.8+).
    """
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    if _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing a range to disk now, without waiting for it.

    Only a head start, never a durability step: the caller still fsyncs. It
    makes that fsync short, because the data is already on its way.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # errors: harmless


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        value = -1
    return value if value > 0 else 1024  # POSIX leaves it unset where there is no limit


IOV_MAX = _iov_max()
"""Most pieces one writev(2) takes: more fail the whole call with EINVAL (1024 on Linux)."""


def write_all(fd: int, parts: Sequence[bytes | memoryview], offset: int | None = None) -> int:
    """Writes the parts in order, at `offset` (None: the file position); returns the bytes written.

    One system call (writev/pwritev) per IOV_MAX parts - a group commit of 342
    small puts is 1026 parts; more calls only when the kernel writes less (a
    signal, or the disk filling up mid-write).
    """
    total = 0
    for start in range(0, len(parts), IOV_MAX):
        batch = parts[start : start + IOV_MAX]
        total += _write_batch(fd, batch, None if offset is None else offset + total)
    return total


def _write_batch(fd: int, parts: Sequence[bytes | memoryview], offset: int | None) -> int:
    total = sum(len(part) for part in parts)
    written = os.writev(fd, parts) if offset is None else os.pwritev(fd, parts, offset)
    if written < total:
        rest = memoryview(parts[0] if len(parts) == 1 else b"".join(parts))[written:]
        while rest:
            step = os.write(fd, rest) if offset is None else os.pwrite(fd, rest, offset + written)
            rest = rest[step:]
            written += step
    return total


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """Up to `size` bytes from `offset`, fewer only at the end of the file."""
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            break
        parts.append(part)
        size -= len(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def pread_cached(fd: int, size: int, expected: int, offset: int = 0) -> bytes | None:
    """Up to `size` bytes from `offset` if all of them are in the page cache, else None.

    None also when fewer than `expected` bytes came back (only part was
    cached) or the system cannot say (no RWF_NOWAIT): the caller then reads
    in a pool thread, where waiting for the disk blocks nothing else.
    """
    if _RWF_NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
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


def unlink_quietly(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
