"""The pack segment format: the journal's records, tombstones, and reading a segment back.

    packs/<16-digit sequence>.pack   append-only, oldest first

A segment is a run of entries, each one of:

    record      the group-commit journal's record (journal.py): b"CAJ1", digest,
                the blob file header, content, metadata block, CRC-32 of it all
    tombstone   b"CAT1", digest (32 bytes), CRC-32 of the 36 bytes before it

A record stores a blob; a tombstone says the blob stored by any earlier entry
is gone (deleted, evicted, quarantined). The state of the store is the log read
in order: segments by sequence, entries by offset, the last word on a digest wins.

Reading back (scan_segment) never trusts a length it cannot check: the blob file
header has its own CRC, so a record whose header is sound but whose whole-record
CRC fails is damage to content or metadata - it is indexed, and every read of it
ends in DATA_LOSS and quarantine (VerifyingBackend), as a flipped byte in a blob
file does. Bytes that are no entry at all (a broken header, a torn write) are
skipped to the next place an entry parses; if none does, they are the tail
after the last entry, cut back at start-up: the start of an entry cut short
(torn_append: an append that never finished, never acknowledged) is dropped,
anything else kept in quarantine/ first.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from blobstore.storage.filesystem.blob_file import HEADER_SIZE, CorruptHeader, Header, decode_header
from blobstore.storage.filesystem.journal import MAGIC as RECORD_MAGIC

TOMBSTONE_MAGIC = b"CAT1"
SUFFIX = ".pack"
DIGEST_SIZE = 32
RECORD_PREFIX = len(RECORD_MAGIC) + DIGEST_SIZE
"""Bytes of a record before its blob file part (header, content, metadata)."""
RECORD_OVERHEAD = RECORD_PREFIX + 4
"""Bytes of a record besides its blob file part: magic, digest, trailing CRC."""
TOMBSTONE_SIZE = len(TOMBSTONE_MAGIC) + DIGEST_SIZE + 4
_CRC = struct.Struct(">I")


def encode_tombstone(digest: bytes) -> bytes:
    head = TOMBSTONE_MAGIC + digest
    return head + _CRC.pack(zlib.crc32(head))


def segment_name(sequence: int) -> str:
    return f"{sequence:016d}{SUFFIX}"


def list_segments(folder: Path) -> list[tuple[int, Path]]:
    """(sequence, path) of every segment in `folder`, oldest first; other names are ignored."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        stem = path.name[: -len(SUFFIX)]
        if len(stem) == 16 and stem.isdigit():
            found.append((int(stem), path))
    return sorted(found)


class Entry(NamedTuple):
    """One entry found in a segment."""

    digest: bytes
    offset: int
    """Where the entry starts in the segment."""
    length: int
    """Bytes of the whole entry."""
    header: Header | None
    """The blob file header of a record; None for a tombstone."""
    sound: bool
    """The entry's CRC matches (a record that fails it is damaged content or metadata)."""

    @property
    def is_record(self) -> bool:
        return self.header is not None

    @property
    def file_offset(self) -> int:
        """Where the record's blob file part (header, content, metadata) starts."""
        return self.offset + RECORD_PREFIX

    @property
    def file_length(self) -> int:
        return self.length - RECORD_OVERHEAD


@dataclass(frozen=True, slots=True)
class SegmentScan:
    entries: list[Entry]
    valid_end: int
    """End of the last entry: what follows is a torn tail (cut back at start-up)."""
    size: int
    skipped: list[tuple[int, int]]
    """Byte ranges before valid_end that are no entry (damage inside the segment)."""


def _parse(data: memoryview, offset: int) -> Entry | None:
    """The entry at `offset`, or None if none parses there (or it runs past the end)."""
    magic = bytes(data[offset : offset + 4])
    size = len(data)
    if magic == TOMBSTONE_MAGIC:
        end = offset + TOMBSTONE_SIZE
        if end > size:
            return None
        (crc,) = _CRC.unpack_from(data, end - 4)
        if zlib.crc32(data[offset : end - 4]) != crc:
            return None  # a tombstone is too short to tell damage from noise: skipped
        return Entry(bytes(data[offset + 4 : offset + 36]), offset, TOMBSTONE_SIZE, None, True)
    if magic != RECORD_MAGIC or offset + RECORD_PREFIX + HEADER_SIZE > size:
        return None
    try:
        start = offset + RECORD_PREFIX
        header = decode_header(bytes(data[start : start + HEADER_SIZE]))
    except CorruptHeader:
        return None
    end = offset + RECORD_OVERHEAD + header.file_size
    if end > size:
        return None
    (crc,) = _CRC.unpack_from(data, end - 4)
    sound = zlib.crc32(data[offset : end - 4]) == crc
    return Entry(bytes(data[offset + 4 : offset + 36]), offset, end - offset, header, sound)


def _next_start(data: bytes, after: int) -> int:
    """The next offset past `after` where an entry's magic is (-1: none)."""
    starts = [i for i in (data.find(m, after) for m in (RECORD_MAGIC, TOMBSTONE_MAGIC)) if i >= 0]
    return min(starts) if starts else -1


def scan_segment(data: bytes) -> SegmentScan:
    """Every entry of a segment's bytes, in order (see the module docstring)."""
    view = memoryview(data)
    entries: list[Entry] = []
    skipped: list[tuple[int, int]] = []
    offset = valid_end = 0
    while offset < len(data):
        entry = _parse(view, offset)
        if entry is None:
            following = _next_start(data, offset + 1)
            while following >= 0 and _parse(view, following) is None:
                following = _next_start(data, following + 1)
            if following < 0:
                break
            skipped.append((offset, following))
            offset = following
            continue
        entries.append(entry)
        offset = valid_end = entry.offset + entry.length
    return SegmentScan(entries, valid_end, len(data), skipped)


def torn_append(tail: bytes) -> bool:
    """Whether bytes after the last entry are the start of an entry cut short - what an
    append that never finished leaves - rather than damage."""
    magic = tail[:4]
    if not (RECORD_MAGIC.startswith(magic) or TOMBSTONE_MAGIC.startswith(magic)):
        return False
    if len(tail) < RECORD_PREFIX + HEADER_SIZE or magic == TOMBSTONE_MAGIC:
        return True  # too short to tell more (a tombstone is whole at 40 bytes)
    try:
        header = decode_header(tail[RECORD_PREFIX : RECORD_PREFIX + HEADER_SIZE])
    except CorruptHeader:
        return False
    return len(tail) < RECORD_OVERHEAD + header.file_size


def read_segment(path: Path) -> SegmentScan:
    return scan_segment(path.read_bytes())
