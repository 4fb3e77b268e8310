"""The pack store's in-memory index: where each blob's record is, and the open segments.

digest -> Location (segment, offset, lengths, type): rebuilt at start-up by
reading the segments in order (store.py), then kept by the one writer (appends,
tombstones, compaction) under `lock`, a short lock never held across I/O, so a
read on the event loop never waits for a disk write.

Each segment has one read-only descriptor, shared by all readers. A reader
takes it with acquire() and gives it back with release(): a segment dropped by
compaction is unlinked at once, but its descriptor is closed only when the last
read that had it is done, so a read never meets a closed (or reused) descriptor.
Per segment the index also counts the bytes of its live records, which is how
compaction (compact.py) picks the segments that are mostly dead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from blobstore.model import BlobType
from blobstore.storage.filesystem.packs.segment import RECORD_OVERHEAD


class Location(NamedTuple):
    """Where a blob's record is: its blob file part (header, content, metadata) in a segment."""

    segment: int
    offset: int
    """Of the blob file part, in the segment."""
    file_length: int
    size: int
    """Content bytes (from the header, as scanned or written)."""
    blob_type: BlobType

    @property
    def record_length(self) -> int:
        return self.file_length + RECORD_OVERHEAD


class _Segment:
    __slots__ = ("dropped", "fd", "live", "mtime", "readers", "size")

    def __init__(self, fd: int, size: int, mtime: float) -> None:
        self.fd = fd
        self.size = size
        self.live = 0
        self.readers = 0
        self.dropped = False
        self.mtime = mtime


class PackIndex:
    """Blob records by digest, and the segments they are in; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._where: dict[bytes, Location] = {}
        self._segments: dict[int, _Segment] = {}

    # -- segments ---------------------------------------------------------------------------

    def add_segment(self, sequence: int, read_fd: int, size: int, mtime: float) -> None:
        with self.lock:
            self._segments[sequence] = _Segment(read_fd, size, mtime)

    def grew(self, sequence: int, size: int) -> None:
        with self.lock:
            self._segments[sequence].size = size

    def segments(self) -> list[tuple[int, int, int]]:
        """(sequence, bytes, live record bytes) of each segment not dropped, oldest first."""
        with self.lock:
            return sorted(
                (seq, s.size, s.live) for seq, s in self._segments.items() if not s.dropped
            )

    def drop_segment(self, sequence: int) -> None:
        """Forgets a segment (no live record may point there); its descriptor is closed
        once no read holds it."""
        with self.lock:
            segment = self._segments[sequence]
            assert segment.live == 0, "a dropped segment holds no live record"
            segment.dropped = True
            if segment.readers == 0:
                self._close(sequence)

    def _close(self, sequence: int) -> None:
        os.close(self._segments.pop(sequence).fd)

    def close_all(self) -> None:
        with self.lock:
            for sequence in list(self._segments):
                self._close(sequence)
            self._where.clear()

    # -- records ----------------------------------------------------------------------------

    def get(self, digest: bytes) -> Location | None:
        return self._where.get(digest)  # one dict lookup: atomic under the GIL

    def __contains__(self, digest: object) -> bool:
        return digest in self._where

    def __len__(self) -> int:
        return len(self._where)

    def put(self, digest: bytes, location: Location) -> None:
        """Points `digest` at a record (replacing whatever it pointed at)."""
        with self.lock:
            self._unlink(digest)
            self._where[digest] = location
            self._segments[location.segment].live += location.record_length

    def load(self, sequence: int, changes: Iterable[tuple[bytes, Location | None]]) -> None:
        """Applies a segment's entries read at start-up, in order (None: a tombstone); one
        lock for all of them."""
        with self.lock:
            where, segments = self._where, self._segments
            segment = segments[sequence]
            for digest, location in changes:
                old = where.pop(digest, None)
                if old is not None:
                    segments[old.segment].live -= old.record_length
                if location is not None:
                    where[digest] = location
                    segment.live += location.record_length

    def remove(self, digest: bytes) -> Location | None:
        with self.lock:
            return self._unlink(digest)

    def _unlink(self, digest: bytes) -> Location | None:
        old = self._where.pop(digest, None)
        if old is not None:
            self._segments[old.segment].live -= old.record_length
        return old

    def totals(self) -> tuple[int, int]:
        """Blobs with a live record, and the bytes of their blob file parts."""
        with self.lock:
            live = sum(segment.live for segment in self._segments.values())
            return len(self._where), live - len(self._where) * RECORD_OVERHEAD

    def records_in(self, sequence: int) -> list[tuple[bytes, Location]]:
        with self.lock:
            return [(d, loc) for d, loc in self._where.items() if loc.segment == sequence]

    def items(self) -> Iterator[tuple[bytes, Location, float]]:
        """(digest, location, the segment's mtime) of every record: a snapshot."""
        with self.lock:
            segments = self._segments
            snapshot = [(d, loc, segments[loc.segment].mtime) for d, loc in self._where.items()]
        return iter(snapshot)

    # -- reading ----------------------------------------------------------------------------

    def acquire(self, digest: bytes) -> tuple[Location, int] | None:
        """The blob's location and its segment's descriptor, held until release(); None if
        the blob has no record."""
        with self.lock:
            location = self._where.get(digest)
            if location is None:
                return None
            segment = self._segments[location.segment]
            segment.readers += 1
            return location, segment.fd

    def release(self, location: Location) -> None:
        with self.lock:
            segment = self._segments[location.segment]
            segment.readers -= 1
            if segment.dropped and segment.readers == 0:
                self._close(location.segment)
