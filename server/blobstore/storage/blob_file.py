"""The on-disk format of one stored blob: a small self-checking header, then the content.

    offset  size  field
    0       4     magic b"CAB1"
    4       1     type: b"J" (Json) or b"B" (Binary)
    5       3     reserved, zero
    8       8     content length, big-endian
    16      4     CRC-32 of bytes 0..15, big-endian
    20      n     content (canonical JSON text, or the raw bytes)

The content is covered by the blob's id (its SHA-256); the header by its CRC,
so a flipped bit anywhere in the file is detected on read.
"""

from __future__ import annotations

import struct
import zlib

from blobstore.model import BlobType

MAGIC = b"CAB1"
HEADER_SIZE = 20
_LAYOUT = struct.Struct(">4sc3xQ")
_CRC = struct.Struct(">I")
_TYPE_CODES = {BlobType.JSON: b"J", BlobType.BINARY: b"B"}
_TYPES_BY_CODE = {code: blob_type for blob_type, code in _TYPE_CODES.items()}


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
