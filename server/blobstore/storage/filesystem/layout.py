"""The data folder: its sub-folders, where a blob's file lives, and moving files aside.

    LOCK            held (flock) by the one server that owns the folder
    blobs/ab/<hex>  published blobs, sharded by the first two hex digits
    tmp/            puts in progress; anything here at start-up is debris
    quarantine/     blobs that failed verification, kept for analysis
    journal/        the group-commit journal of small puts (journal.py)

Shared by the backend and the offline scrub (scrub.py); synchronous.

A folder of the layout deleted while the server runs (`rm -r data/tmp`, a
shard), or replaced by a plain file, is made again by the next call that needs
it (in_folder, make_folder); whatever was in its place is moved to quarantine/
first, kept for analysis. Blobs that were in a deleted shard are gone (NOT_FOUND
until put again), as they would be if their files had been deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TypeVar

from blobstore.ids import PREFIX, BlobId
from blobstore.storage.base import StoredBlob
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, check_file
from blobstore.storage.filesystem.os_calls import fsync_dir, is_folder
from blobstore.storage.filesystem.usage import StoreUsage

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_HEX = "0123456789abcdef"
_HEX_SET = frozenset(_HEX)
_ID_PREFIX = len(PREFIX)
_ID_PREFIX_TEXT = PREFIX


class FileSystemLayout:
    """Paths and synchronous primitives of the data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.journal = root / "journal"  # created by Journal.open(), not by create()
        self._blobs_dir = str(self.blobs)
        self.usage = StoreUsage()  # kept by publish.py and quarantine(), read by the metrics

    def create(self) -> None:
        """Creates the sub-folders and all 256 shards, durably, if they are missing."""
        for folder in (self.quarantine_dir, self.blobs, self.tmp):
            if not is_folder(folder):
                self.make_folder(folder, quietly=True)
        created = False
        for a in _HEX:
            for b in _HEX:
                shard = self.blobs / (a + b)
                if not is_folder(shard):
                    self.make_folder(shard, quietly=True, sync=False)
                    created = True
        if created:
            fsync_dir(self.blobs)

    def make_folder(self, folder: Path, *, quietly: bool = False, sync: bool = True) -> Path | None:
        """Makes a folder of the layout that is missing, durably; whatever else is in its
        place (a plain file, a symlink) is moved to quarantine/ first: returns where."""
        moved = None
        try:
            os.mkdir(folder)
        except FileExistsError:
            if is_folder(folder):
                return None  # made meanwhile by another call
            # quarantine/ itself is moved aside next to where it was.
            aside = self.root if folder == self.quarantine_dir else None
            moved = self.move_aside(folder, label=f"not-a-folder-{folder.parent.name}-", to=aside)
            log.warning("%s was not a folder: moved it to %s", folder, moved)
            os.mkdir(folder)
        else:
            if not quietly:
                log.warning("%s was missing (deleted while the server ran): made it again", folder)
        if sync:
            fsync_dir(folder.parent)
        return moved

    def in_folder(self, folder: Path | str, act: Callable[[], _T]) -> _T:
        """act(), which makes an entry in `folder`; if that fails because the folder is
        gone (deleted, or replaced by a file), the folder is made again and act() run
        once more. Any other failure, or a second one, is raised."""
        try:
            return act()
        except (FileNotFoundError, NotADirectoryError):
            if is_folder(folder):
                raise  # the folder is there: something else is missing
        self.make_folder(Path(folder))
        return act()

    def blob_path(self, blob_id: BlobId) -> str:
        """Where the blob's file lives, as a plain string: pathlib costs microseconds per call,
        and every read starts here."""
        digest = blob_id[_ID_PREFIX:]
        return f"{self._blobs_dir}/{digest[:2]}/{digest}"

    def path_of(self, blob_id: BlobId) -> Path:
        return Path(self.blob_path(blob_id))

    def shards(self) -> list[str]:
        """The 256 shard folders, as plain strings."""
        return [f"{self._blobs_dir}/{a}{b}" for a in _HEX for b in _HEX]

    def all_blob_paths(self) -> list[Path]:
        """Everything in the shards: blob files, and whatever else was put there."""
        return sorted(self.blobs.glob("??/*"))

    def stray_shards(self) -> list[Path]:
        """Things in blobs/ named like a shard that are not folders (a plain file, a link)."""
        return sorted(p for p in self.blobs.glob("??") if not is_folder(p))

    def move_aside(self, path: Path | str, label: str = "", to: Path | None = None) -> Path | None:
        """Moves a file (or anything else) into quarantine/ - or `to` - durably; returns
        where it went, None if it was gone. A deleted quarantine/ is made again."""
        path = Path(path)
        folder = self.quarantine_dir if to is None else to
        target = folder / f"{label}{path.name}.{time.time_ns()}"
        try:
            self.in_folder(folder, lambda: os.rename(path, target))
        except FileNotFoundError:
            if os.path.lexists(path):
                raise
            return None
        fsync_dir(path.parent)
        fsync_dir(folder)
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
        with contextlib.suppress(OSError):
            self.usage.removed(os.stat(target).st_size)
        log.error("quarantined %s to %s: %s", blob_id, target, problem)
        return target


def list_shard(shard: str, known: Container[BlobId] = ()) -> list[StoredBlob]:
    """The blob files of one shard folder, with sizes (the file's, less its header: an upper
    bound of the content's) and mtimes, except for `known` ids (size and time 0: no stat);
    names that are not ids, and non-files, are skipped."""
    found = []
    try:
        entries = os.scandir(shard)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with entries:
        for entry in entries:
            name = entry.name
            blob_id = BlobId(_ID_PREFIX_TEXT + name)
            if blob_id in known:  # a valid id, listed before: no check, no stat
                found.append(StoredBlob(blob_id, 0, 0.0))
                continue
            if len(name) != 64 or not _HEX_SET.issuperset(name):
                continue
            if not entry.is_file(follow_symlinks=False):  # the folder entry's type: no stat
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            size = max(stat.st_size - HEADER_SIZE, 0)
            found.append(StoredBlob(blob_id, size, stat.st_mtime))
    return found


def list_shards(shards: Sequence[str], known: Container[BlobId] = ()) -> list[StoredBlob]:
    return [blob for shard in shards for blob in list_shard(shard, known)]


def unlink_blobs(
    layout: FileSystemLayout, blob_ids: Sequence[BlobId], touched: set[str]
) -> list[BlobId]:
    """Unlinks the blobs' files; returns those that were there. Adds each shard folder it
    changed to `touched` (also when it raises OSError), for sync_folders() after.

    Something at a blob's path that unlink cannot remove (a folder) is moved to
    quarantine/ instead.
    """
    removed: list[BlobId] = []
    for blob_id in blob_ids:
        path = layout.blob_path(blob_id)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (IsADirectoryError, PermissionError):
            if layout.move_aside(path, label="deleted-") is None:
                continue
        removed.append(blob_id)
        touched.add(os.path.dirname(path))
    return removed


def sync_folders(touched: set[str], sync_all: Callable[[], None] | None) -> None:
    """Makes the unlinks in the `touched` shard folders durable: by one `sync_all()` (syncfs
    of the data folder's file system) if given, else by an fsync of each folder.

    A batch of evicted blobs spans most of the 256 shards, and each folder's fsync
    may cost a journal commit and a flush of the disk's cache: under put load, those
    fsyncs were a large part of eviction's cost (put_small_at_cap, docs/performance.md).
    """
    if not touched:
        return
    if sync_all is not None:
        sync_all()
        return
    for shard in touched:
        fsync_dir(shard)
