"""The one writer of the pack segments: appends entries to the active segment, durably.

Every append - a group commit of records, a batch of tombstones, a chunk of
compaction - is one writev and one fdatasync, under `lock`, and then updates
the index (index.py) before the lock is let go: the order of entries in the log
is the order of changes to the index, so a restart that reads the log back in
order rebuilds what was acknowledged. Nothing else is written per blob: no file,
no inode, no folder entry; a new segment costs one fsync of packs/.

A failed append may have left a torn entry behind: the segment is sealed there
and the next append starts a new one (a restart skips the torn bytes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from blobstore.storage.filesystem.os_calls import fsync_dir, write_all
from blobstore.storage.filesystem.packs.index import PackIndex
from blobstore.storage.filesystem.packs.segment import segment_name

if TYPE_CHECKING:
    from blobstore.storage.filesystem.layout import FileSystemLayout

log = logging.getLogger(__name__)


_datasync = getattr(os, "fdatasync", os.fsync)  # fdatasync is Linux's; fsync elsewhere


class Appender:
    """The active segment and the write lock; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        index: PackIndex,
        segment_bytes: int,
        layout: FileSystemLayout,
        on_sealed: Callable[[int], None] = lambda sequence: None,
    ) -> None:
        self.folder = folder
        self.lock = threading.RLock()
        """Held by every writer of the log; never taken by a read."""
        self._index = index
        self._segment_bytes = segment_bytes
        self._layout = layout
        self.on_sealed = on_sealed
        """Called when a segment is sealed (compact.py looks for work)."""
        self._fd: int | None = None
        self._size = 0
        self.active: int | None = None
        """The sequence of the segment appends go to (None: the next append starts one)."""
        self.next_sequence = 0

    def append(self, parts: Sequence[bytes | memoryview]) -> tuple[int, int]:
        """Writes `parts` at the end of the active segment and waits until they are durable;
        returns (segment, offset of the first byte). The caller holds `lock`. Raises OSError."""
        if self._fd is not None and self._size >= self._segment_bytes:
            self.seal()
        if self._fd is None:
            self._start()
        fd, sequence, start = self._fd, self.active, self._size
        assert fd is not None and sequence is not None
        try:
            written = write_all(fd, parts)
            _datasync(fd)
        except OSError:
            self.seal()
            raise
        self._size += written
        self._index.grew(sequence, self._size)
        return sequence, start

    def seal(self) -> None:
        """Closes the active segment for writing: it is never appended to again."""
        if self._fd is None or self.active is None:
            return
        os.close(self._fd)
        sealed = self.active
        self._fd, self.active, self._size = None, None, 0
        self.on_sealed(sealed)

    def _start(self) -> None:
        sequence = self.next_sequence
        path = self.folder / segment_name(sequence)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = self._layout.in_folder(self.folder, lambda: os.open(path, flags, 0o644))
        try:
            read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        try:
            fsync_dir(self.folder)  # fdatasync of the file does not cover its name
        except OSError:
            os.close(fd)
            os.close(read_fd)
            raise
        self.next_sequence = sequence + 1
        self._index.add_segment(sequence, read_fd, 0, time.time())
        self._fd, self.active, self._size = fd, sequence, 0

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd, self.active, self._size = None, None, 0
