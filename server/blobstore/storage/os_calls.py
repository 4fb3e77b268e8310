"""File-system calls the os module lacks or spells out at length: folder fsync,
syncfs(2) and sync_file_range(2) (Linux, through ctypes; None elsewhere)."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path
from typing import Any


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
