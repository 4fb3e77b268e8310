"""`blobstore verify` of the pack segments: each read once, front to back.

The first pass reads the entries to learn which record of each blob is live
(the last word wins, as at start-up); the second checks every live record: its
CRC, header and metadata, and the SHA-256 of its content against its id. Dead
records (deleted, evicted, stored again later) are not checked: nothing reads them.

A bad record is taken out of service as the server would (quarantine/, then a
tombstone) only if no server holds the folder: appending beside a running
server's writer would corrupt its segment. With a server running it is
reported and left; the server quarantines it at its first read, as it does any
damage it meets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from blobstore.ids import BlobId, blob_id_from_digest
from blobstore.storage.filesystem.journal import SEGMENT_BYTES
from blobstore.storage.filesystem.layout import FileSystemLayout
from blobstore.storage.filesystem.packs.segment import (
    list_segments,
    read_segment,
    scan_segment,
)
from blobstore.storage.filesystem.packs.store import PackStore, problem_of


@dataclass(frozen=True)
class BadRecord:
    segment: Path
    blob_id: BlobId
    reason: str
    quarantined_to: Path | None


@dataclass
class PackCheck:
    checked: int = 0
    bytes_checked: int = 0


def verify_packs(
    layout: FileSystemLayout, check: PackCheck, *, quarantine: bool
) -> Iterator[BadRecord]:
    """Checks every live pack record; yields the bad ones (see the module docstring)."""
    segments = list_segments(layout.root / "packs")
    live: dict[bytes, tuple[int, int]] = {}
    for sequence, path in segments:
        for entry in read_segment(path).entries:
            if entry.header is None:
                live.pop(entry.digest, None)
            else:
                live[entry.digest] = (sequence, entry.offset)
    bad: list[tuple[Path, BlobId, str]] = []
    for sequence, path in segments:
        data = path.read_bytes()
        for entry in scan_segment(data).entries:
            if entry.header is None or live.get(entry.digest) != (sequence, entry.offset):
                continue
            blob_id = blob_id_from_digest(entry.digest.hex())
            raw = data[entry.file_offset : entry.file_offset + entry.file_length]
            problem = problem_of(blob_id, raw)
            if problem is None and not entry.sound:
                problem = "record CRC does not match"
            if problem is None:
                check.checked += 1
                check.bytes_checked += entry.header.size
            else:
                bad.append((path, blob_id, problem))
    if not bad:
        return
    with _owned(layout.root) if quarantine else contextlib.nullcontext(False) as owned:
        store = None
        if owned:
            store = PackStore(layout, SEGMENT_BYTES)
            store.open()
        try:
            for path, blob_id, problem in bad:
                if store is None:
                    if quarantine:
                        problem += " (left: a running server quarantines it at its first read)"
                    yield BadRecord(path, blob_id, problem, None)
                else:
                    yield BadRecord(path, blob_id, problem, store.take_out(blob_id, problem))
        finally:
            if store is not None:
                store.close()


@contextlib.contextmanager
def _owned(root: Path) -> Iterator[bool]:
    """True while this process holds the data folder's lock (no server runs there)."""
    fd = os.open(root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
