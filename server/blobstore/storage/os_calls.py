"""File-system calls the os module lacks or spells out at length: folder fsync,
syncfs(2) and sync_file_range(2) (Linux, through ctypes; None elsewhere), a
writev loop that respects IOV_MAX, and the one way blob files are opened for
reading (never through a symlink, never waiting on a FIFO).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    """Makes the folder's entries (files created, linked, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iov_max() -> int:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        value = -1
    return value if value > 0 else 1024


IOV_MAX = _iov_max()
"""Most pieces one writev(2) takes; more fail the whole call with EINVAL."""


def writev_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Writes the parts in order with as few system calls as the kernel allows.

    One writev per IOV_MAX parts (a group commit of 342 small puts is 1026
    parts); a short write (a signal, a disk filling up) is finished piece by piece.
    """
    for start in range(0, len(parts), IOV_MAX):
        batch = parts[start : start + IOV_MAX]
        total = sum(len(part) for part in batch)
        written = os.writev(fd, batch)
        if written < total:
            rest = memoryview(b"".join(batch))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class NotRegularFile(Exception):
    """Something other than a regular file (folder, FIFO, socket, symlink) is at the path."""


_OPEN_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


def open_regular(path: str | Path) -> tuple[int, int]:
    """Opens a regular file for reading; returns (descriptor, size).

    O_NOFOLLOW: a symlink is refused, not followed out of the data folder;
    O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (which
    would hang the caller; on regular files the flag does nothing). Raises
    FileNotFoundError if nothing is there, NotRegularFile if something else is.
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
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise NotRegularFile(f"{kind} is where a blob file belongs")
    return fd, info.st_size


def is_regular(path: str | Path) -> bool:
    """True if a regular file (not a symlink to one) is at the path."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def make_folder(path: Path) -> None:
    """Creates a folder that went missing (deleted behind the server's back), durably."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    fsync_dir(path.parent)


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
