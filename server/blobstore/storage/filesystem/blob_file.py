"""The on-disk format of one stored blob: a small self-checking header, then the content.

    offset  size  field
    0       4     magic b"CAB1"
    4       1     type: b"J" (Json) or b"B" (Binary)
    5       3     reserved, zero
    8       8     content length, big-endian
    16      4     CRC-32 of bytes 0..15, big-endian
    20      n     content (canonical JSON text, or the raw bytes)

The content is covered by the blob's id (its SHA-256); the header by its CRC,
so a flipped bit anywhere in the file is detected on read. This module is the
one decoder of that header: every reader (get, stat, replay, scrub, the
journal) goes through decode_header, and the file readers through blob_info.
same_content compares a stored copy with the content of a put of its id.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

from blobstore.errors import DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import BlobInfo, BlobType
from blobstore.storage.filesystem.os_calls import NotRegularFile, open_regular

MAGIC = b"CAB1"
HEADER_SIZE = 20
_LAYOUT = struct.Struct(">4sc3xQ")
_CRC = struct.Struct(">I")
_TYPE_CODES = {BlobType.JSON: b"J", BlobType.BINARY: b"B"}
_TYPES_BY_CODE = {code: blob_type for blob_type, code in _TYPE_CODES.items()}
_CHECK_CHUNK = 1024 * 1024


class CorruptHeader(Exception):
    """The header is not a valid blob header."""


def encode_header(blob_type: BlobType, size: int) -> bytes:
    head = _LAYOUT.pack(MAGIC, _TYPE_CODES[blob_type], size)
    return head + _CRC.pack(zlib.crc32(head))


def decode_header(header: bytes) -> tuple[BlobType, int]:
    """Returns (type, content length); raises CorruptHeader."""
    if len(header) < HEADER_SIZE:
        raise CorruptHeader(f"file is {len(header)} bytes, shorter than its header")
    head, (crc,) = header[:16], _CRC.unpack_from(header, 16)
    if zlib.crc32(head) != crc:
        raise CorruptHeader("header checksum mismatch")
    magic, code, size = _LAYOUT.unpack(head)
    if magic != MAGIC or code not in _TYPES_BY_CODE:
        raise CorruptHeader("not a blob file")
    return _TYPES_BY_CODE[code], size


def decode_file_header(header: bytes, file_size: int) -> tuple[BlobType, int]:
    """decode_header, and the length checked against the file's size; raises CorruptHeader."""
    blob_type, size = decode_header(header)
    if file_size - HEADER_SIZE != size:
        raise CorruptHeader(
            f"file holds {file_size - HEADER_SIZE} content bytes, its header says {size}"
        )
    return blob_type, size


def blob_info(blob_id: BlobId, header: bytes, file_size: int) -> BlobInfo:
    """The metadata of a blob file of `file_size` bytes; DataLoss if its header is broken."""
    try:
        blob_type, size = decode_file_header(header, file_size)
    except CorruptHeader as exc:
        raise DataLoss(blob_id, str(exc)) from None
    return BlobInfo(blob_id, blob_type, size)


def check_file(path: Path, blob_id: BlobId) -> str | None:
    """Returns what is wrong with the blob file at `path` (header, length, hash), or None."""
    try:
        fd, stat = open_regular(path)
    except NotRegularFile as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        try:
            decode_file_header(os.pread(fd, HEADER_SIZE, 0), stat.st_size)
        except CorruptHeader as exc:
            return str(exc)
        hasher = hashlib.sha256()
        offset = HEADER_SIZE
        while chunk := os.pread(fd, _CHECK_CHUNK, offset):
            hasher.update(chunk)
            offset += len(chunk)
        if hasher.hexdigest() != hex_digest(blob_id):
            return "content does not match its SHA-256 id"
        return None
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    finally:
        os.close(fd)


def same_content(fd: int, size: int, content: bytes | int) -> bool:
    """True if the blob file open as `fd`, of `size` content bytes (its header says so),
    holds exactly `content`: bytes, or the content of another blob file open as a
    descriptor (a streamed put's temp file, whose header may not be written yet)."""
    if isinstance(content, bytes):
        expected = memoryview(content)

        def wanted(offset: int, length: int) -> bytes | memoryview:
            return expected[offset : offset + length]

        if len(content) != size:
            return False
    else:
        other = content

        def wanted(offset: int, length: int) -> bytes | memoryview:
            return os.pread(other, length, HEADER_SIZE + offset)

        # An empty temp file without its header is 0 bytes long, not HEADER_SIZE.
        if max(os.fstat(other).st_size, HEADER_SIZE) != HEADER_SIZE + size:
            return False
    offset = 0
    while offset < size:
        length = min(_CHECK_CHUNK, size - offset)
        if os.pread(fd, length, HEADER_SIZE + offset) != wanted(offset, length):
            return False
        offset += length
    return True
