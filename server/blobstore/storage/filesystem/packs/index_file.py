"""A sealed segment's index file, `packs/<seq>.idx`: its entries, so start-up need not read
the segment.

Written once, by the compaction thread, after the segment is sealed (scanned
from the page cache, so an append never waits for it); never fsynced: an index
file that is missing, torn or stale is simply not used, and the segment is read
instead. It is checked against the segment - the segment's size, and its own
CRC-32 - before it is believed. What it cannot vouch for (a record's bytes
damaged since) every read checks anyway: the blob file header's CRC, the
metadata block, and the content's hash (VerifyingBackend).

    offset  size  field
    0       4     magic b"CAX1"
    4       8     the segment's size when it was indexed
    12      4     entries
    16      53n   entries: digest (32), offset (8), length (4), content size (8),
                  type code (1; 0 for a tombstone)
    16+53n  4     CRC-32 of everything before it
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path

from blobstore.model import BlobType
from blobstore.storage.filesystem.blob_file import HEADER_SIZE, Header
from blobstore.storage.filesystem.packs.segment import RECORD_OVERHEAD, Entry, SegmentScan

MAGIC = b"CAX1"
SUFFIX = ".idx"
_HEAD = struct.Struct(">4sQI")
_ENTRY = struct.Struct(">32sQIQB")
_CRC = struct.Struct(">I")
_CODES = {BlobType.JSON: 1, BlobType.BINARY: 2, BlobType.FLOW: 3}
_TYPES = {code: blob_type for blob_type, code in _CODES.items()}


def index_path(segment: Path) -> Path:
    return segment.with_suffix(SUFFIX)


def write_index(segment: Path, scan: SegmentScan) -> None:
    """Writes the index file of a sealed segment whose whole content `scan` read."""
    parts = [_HEAD.pack(MAGIC, scan.size, len(scan.entries))]
    for entry in scan.entries:
        header = entry.header
        if header is None:
            parts.append(_ENTRY.pack(entry.digest, entry.offset, entry.length, 0, 0))
        else:
            code = _CODES[header.blob_type]
            parts.append(_ENTRY.pack(entry.digest, entry.offset, entry.length, header.size, code))
    body = b"".join(parts)
    temp = segment.with_suffix(SUFFIX + ".tmp")
    temp.write_bytes(body + _CRC.pack(zlib.crc32(body)))
    os.replace(temp, index_path(segment))


def load_index(segment: Path, segment_size: int) -> list[Entry] | None:
    """The entries of a segment of `segment_size` bytes from its index file; None if there
    is none, or it is torn, or it was written for another content of the segment."""
    try:
        raw = index_path(segment).read_bytes()
    except OSError:
        return None
    if len(raw) < _HEAD.size + _CRC.size:
        return None
    body = memoryview(raw)[: -_CRC.size]
    (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
    magic, size, count = _HEAD.unpack_from(raw)
    if magic != MAGIC or size != segment_size or zlib.crc32(body) != crc:
        return None
    if len(body) != _HEAD.size + count * _ENTRY.size:
        return None
    entries = []
    for digest, offset, length, content, code in _ENTRY.iter_unpack(body[_HEAD.size :]):
        if code == 0:
            entries.append(Entry(digest, offset, length, None, True))
            continue
        blob_type = _TYPES.get(code)
        meta_size = length - RECORD_OVERHEAD - HEADER_SIZE - content
        if blob_type is None or meta_size < 0 or offset + length > segment_size:
            return None
        entries.append(Entry(digest, offset, length, Header(blob_type, content, meta_size), True))
    return entries


def remove_index(segment: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        index_path(segment).unlink()
