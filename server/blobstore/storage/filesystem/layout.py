"""The data folder: its sub-folders, where a blob's file lives, and moving files aside.

    LOCK            held (flock) by the one server that owns the folder
    blobs/ab/<hex>  published blobs, sharded by the first two hex digits
    tmp/            puts in progress; anything here at start-up is debris
    quarantine/     blobs that failed verification, kept for analysis
    journal/        the group-commit journal of small puts (journal.py)

Shared by the backend and the offline scrub (scrub.py); synchronous.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from blobstore.ids import PREFIX, BlobId
from blobstore.storage.filesystem.blob_file import check_file
from blobstore.storage.filesystem.os_calls import fsync_dir

log = logging.getLogger(__name__)

_HEX = "0123456789abcdef"
_ID_PREFIX = len(PREFIX)


class FileSystemLayout:
    """Paths and synchronous primitives of the data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.journal = root / "journal"  # created by Journal.open(), not by create()
        self._blobs_dir = str(self.blobs)

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

    def blob_path(self, blob_id: BlobId) -> str:
        """Where the blob's file lives, as a plain string: pathlib costs microseconds per call,
        and every read starts here."""
        digest = blob_id[_ID_PREFIX:]
        return f"{self._blobs_dir}/{digest[:2]}/{digest}"

    def path_of(self, blob_id: BlobId) -> Path:
        return Path(self.blob_path(blob_id))

    def all_blob_paths(self) -> list[Path]:
        return sorted(p for p in self.blobs.glob("??/*") if p.is_file())

    def move_aside(self, path: Path | str, label: str = "") -> Path | None:
        """Moves a file into quarantine/ (durably); returns where it went, None if it was gone."""
        path = Path(path)
        target = self.quarantine_dir / f"{label}{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        fsync_dir(path.parent)
        fsync_dir(self.quarantine_dir)
        return target

    def quarantine(self, blob_id: BlobId, reason: str) -> Path | None:
        """Moves the blob's file aside; returns where it went, or None if it was not moved.

        The file is checked again after the (atomic) move: a put may have
        replaced the broken copy between the failed read and this call, and a
        sound file is put back rather than lost.
        """
        path = self.path_of(blob_id)
        target = self.move_aside(path)
        if target is None:
            return None
        problem = check_file(target, blob_id)
        if problem is None:
            with contextlib.suppress(FileExistsError):
                os.link(target, path)
            os.unlink(target)
            fsync_dir(path.parent)
            log.warning(
                "kept %s: reported corrupt (%s), but the stored copy is sound", blob_id, reason
            )
            return None
        log.error("quarantined %s to %s: %s", blob_id, target, problem)
        return target
