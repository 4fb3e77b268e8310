"""The commit journal: an append-only log that makes many small puts durable at once.

A batch of puts is appended as records to the active segment with one write
and one fdatasync; only then are the puts acknowledged and their blobs filed
as ordinary blob files (without an fsync each). A checkpoint later makes the
filed blobs durable with one syncfs() and deletes the segments that covered
them. After a crash, the segments left over are replayed at start-up, so a
put acknowledged from the journal is never lost.

Layout under the data folder:

    journal/<16-digit sequence>.log   segments, oldest first

A record:

    offset  size  field
    0       4     magic b"CAJ1"
    4       32    SHA-256 digest of the content (the blob's id)
    36      20    the blob file header (blob_file.py): type, lengths, CRC
    56      n     content
    56+n    m     the metadata block (blob_file.py; m from the header, often 0)
    56+n+m  4     CRC-32 of bytes 0..56+n+m, big-endian

Bytes 36..56+n+m are the blob file itself, as blob_file.py writes it.

A record that is cut short or fails its CRC ends the segment: at the tail
that is a batch whose write the crash interrupted (never acknowledged).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from blobstore.model import NO_META, BlobMeta, BlobType
from blobstore.storage.filesystem.blob_file import (
    HEADER_SIZE,
    CorruptHeader,
    decode_header,
    decode_meta,
    encode_header,
    encode_meta,
)
from blobstore.storage.filesystem.os_calls import fsync_dir, write_all

if TYPE_CHECKING:
    from blobstore.storage.filesystem.layout import FileSystemLayout

log = logging.getLogger(__name__)

MAGIC = b"CAJ1"
_PREFIX = len(MAGIC) + 32 + HEADER_SIZE
_CRC = struct.Struct(">I")
SEGMENT_BYTES = 16 * 1024 * 1024
"""A segment is retired (and checkpointed) once it holds this much."""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    digest: bytes
    blob_type: BlobType
    data: bytes
    meta: BlobMeta = NO_META


def encode_record(
    digest: bytes, blob_type: BlobType, data: bytes, meta: BlobMeta = NO_META
) -> list[bytes]:
    """The record as parts for one writev: the content is not copied."""
    meta_block = encode_meta(meta)
    head = MAGIC + digest + encode_header(blob_type, len(data), meta_block)
    crc = zlib.crc32(meta_block, zlib.crc32(data, zlib.crc32(head)))
    return [head, data, meta_block + _CRC.pack(crc)]


@dataclass(frozen=True, slots=True)
class SegmentContents:
    records: list[JournalRecord]
    valid_bytes: int
    total_bytes: int

    @property
    def damaged(self) -> bool:
        return self.valid_bytes < self.total_bytes


def read_segment(path: Path) -> SegmentContents:
    """The segment's sound records, up to the first that is cut short or broken."""
    data = path.read_bytes()
    records = []
    offset = 0
    while len(data) - offset >= _PREFIX:
        if data[offset : offset + 4] != MAGIC:
            break
        try:
            header = decode_header(data[offset + 36 : offset + _PREFIX])
        except CorruptHeader:
            break
        content_end = offset + _PREFIX + header.size
        end = content_end + header.meta_size
        if end + _CRC.size > len(data):
            break
        (crc,) = _CRC.unpack_from(data, end)
        if zlib.crc32(data[offset:end]) != crc:
            break
        try:
            meta = decode_meta(data[content_end:end])
        except CorruptHeader:
            break
        content = data[offset + _PREFIX : content_end]
        records.append(
            JournalRecord(data[offset + 4 : offset + 36], header.blob_type, content, meta)
        )
        offset = end + _CRC.size
    return SegmentContents(records, offset, len(data))


class Journal:
    """The segments of one data folder; appends go to the newest.

    Not thread-safe: one committer thread appends, and it alone rotates.
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = SEGMENT_BYTES,
        layout: FileSystemLayout | None = None,
    ) -> None:
        """`layout`, if given, makes the folder again if it is deleted while appending."""
        self.directory = directory
        self._layout = layout
        self.segment_bytes = segment_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._next_seq = 0
        self._retired: list[Path] = []
        # Which blobs have a record in a segment not yet deleted (appended by the committer
        # thread, retired by the checkpoint thread, asked by removals): a removal of blobs
        # that have none needs no checkpoint first.
        self._lock = threading.Lock()
        self._live: Counter[bytes] = Counter()
        self._digests: dict[Path, list[bytes]] = {}

    def segments(self) -> list[Path]:
        """Every segment on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.log"))

    def open(self) -> None:
        """Creates the folder if needed; the first append starts a new segment."""
        if self.directory.is_dir():
            pass
        elif self._layout is not None:  # also moves a plain file in its place aside
            self._layout.make_folder(self.directory, quietly=True)
        else:
            self.directory.mkdir()
            fsync_dir(self.directory.parent)
        existing = self.segments()
        self._next_seq = int(existing[-1].stem) + 1 if existing else 0

    def holds_any(self, digests: Iterable[bytes]) -> bool:
        """Whether a segment still on disk may hold a record of one of these blobs."""
        with self._lock:
            live = self._live
            return bool(live) and any(live[d] for d in digests)

    def append(self, parts: list[bytes], digests: Sequence[bytes] = ()) -> None:
        """Writes `parts` at the end of the active segment and waits until they are durable.

        `digests`: the blobs whose records `parts` are (holds_any).

        Raises OSError. A failed append may have left a torn record, after
        which replay would not read on, so the segment is closed and retired
        with it: later appends go to a new one.
        """
        if self._fd is not None and self._size >= self.segment_bytes:
            self._close_active()
        if self._fd is None:
            self._start_segment()
        fd = self._fd
        assert fd is not None and self._path is not None
        if digests:  # counted before the write: a record on disk is never missed
            with self._lock:
                self._live.update(digests)
                self._digests.setdefault(self._path, []).extend(digests)
        try:
            total = write_all(fd, parts)
            os.fdatasync(fd)
        except OSError:
            self._close_active()
            raise
        self._size += total

    @property
    def next_sequence(self) -> int:
        """The sequence number the next segment gets: every segment on disk below it was
        started before now."""
        return self._next_seq

    def segments_before(self, sequence: int) -> list[Path]:
        """Segments on disk started before `sequence` (next_sequence at some earlier time)."""
        return [path for path in self.segments() if int(path.stem) < sequence]

    def take_retired(self) -> list[Path]:
        """The segments closed since the last call: to checkpoint once their blobs are filed."""
        retired, self._retired = self._retired, []
        return retired

    def close(self) -> list[Path]:
        """Closes the active segment; returns every segment still to checkpoint."""
        if self._fd is not None:
            self._close_active()
        return self.take_retired()

    def retire(self, segment: Path) -> None:
        """Deletes a checkpointed segment, durably."""
        with contextlib.suppress(FileNotFoundError):
            segment.unlink()
        fsync_dir(self.directory)
        with self._lock:
            self._live.subtract(self._digests.pop(segment, ()))
            self._live = +self._live  # drops the zeros

    def _start_segment(self) -> None:
        path = self.directory / f"{self._next_seq:016d}.log"
        self._next_seq += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        if self._layout is None:
            fd = os.open(path, flags, 0o644)
        else:
            fd = self._layout.in_folder(self.directory, lambda: os.open(path, flags, 0o644))
        try:
            fsync_dir(self.directory)  # fdatasync of the file does not cover its name
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path, self._size = fd, path, 0

    def _close_active(self) -> None:
        assert self._fd is not None and self._path is not None
        os.close(self._fd)
        self._retired.append(self._path)
        self._fd, self._path, self._size = None, None, 0
