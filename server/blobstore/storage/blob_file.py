"""The on-disk format of one stored blob: a small self-checking header, the content, and
the blob's metadata (file name, content type) in a self-checking trailer.

Version 2 (written when a blob has metadata or is a Flow):

    offset  size  field
    0       4     magic b"CAB2"
    4       1     type: b"J" (Json), b"F" (Flow) or b"B" (Binary)
    5       1     reserved, zero
    6       2     trailer length m, big-endian (0: no trailer)
    8       8     content length n, big-endian
    16      4     CRC-32 of bytes 0..15, big-endian
    20      n     content (canonical JSON text, or the raw bytes)
    20+n    m     trailer: the metadata (encode_trailer), with its own CRC-32

Version 1 (every file written before metadata existed, and still every Json or
Binary blob without metadata, so such files stay readable by older servers):

    0       4     magic b"CAB1"
    4       1     type: b"J" or b"B"
    5       3     reserved, zero
    8       8     content length, big-endian
    16      4     CRC-32 of bytes 0..15, big-endian
    20      n     content

Both versions put the content at offset 20 (HEADER_SIZE), so every reader
finds it at the same place; the trailer comes after it because a streamed
put writes its content before it knows its size (and, with the interface
as it is, its metadata). The content is covered by the blob's id (its
SHA-256); the header and the trailer by their CRCs, so a flipped bit anywhere
in the file is detected on read. This module is the one decoder of both:
every reader (get, stat, replay, scrub, the journal) goes through
decode_header and decode_trailer, and the file readers through blob_info.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from blobstore.errors import DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import NO_METADATA, BlobInfo, BlobMetadata, BlobType

MAGIC_V1 = b"CAB1"
MAGIC_V2 = b"CAB2"
MAGIC = MAGIC_V1
HEADER_SIZE = 20
_LAYOUT_V1 = struct.Struct(">4sc3xQ")
_LAYOUT_V2 = struct.Struct(">4scxHQ")
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct(">H")
_TYPE_CODES = {BlobType.JSON: b"J", BlobType.FLOW: b"F", BlobType.BINARY: b"B"}
_TYPES_BY_CODE = {code: blob_type for blob_type, code in _TYPE_CODES.items()}
_V1_TYPES = {BlobType.JSON, BlobType.BINARY}
_FILENAME, _CONTENT_TYPE = 0x01, 0x02
_CHECK_CHUNK = 1024 * 1024


class CorruptHeader(Exception):
    """The header (or the metadata trailer) is not valid."""


@dataclass(frozen=True, slots=True)
class Header:
    """What a blob file's header says."""

    blob_type: BlobType
    size: int
    """Content bytes, after the header."""
    trailer_size: int
    """Metadata bytes after the content (0 in version 1 files)."""

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.size + self.trailer_size


def encode_trailer(metadata: BlobMetadata) -> bytes:
    """The metadata as a trailer: flags, each field given as u16 length + UTF-8, CRC-32.

    b"" for no metadata.
    """
    if not metadata:
        return b""
    flags = 0
    fields = []
    for flag, text in ((_FILENAME, metadata.filename), (_CONTENT_TYPE, metadata.content_type)):
        if text is not None:
            flags |= flag
            encoded = text.encode()
            fields.append(_LENGTH.pack(len(encoded)) + encoded)
    body = bytes((flags,)) + b"".join(fields)
    return body + _CRC.pack(zlib.crc32(body))


def decode_trailer(trailer: bytes) -> BlobMetadata:
    """The metadata of a trailer; raises CorruptHeader."""
    if not trailer:
        return NO_METADATA
    if len(trailer) < 1 + _CRC.size:
        raise CorruptHeader(f"metadata trailer of {len(trailer)} bytes is too short")
    body, (crc,) = trailer[: -_CRC.size], _CRC.unpack_from(trailer, len(trailer) - _CRC.size)
    if zlib.crc32(body) != crc:
        raise CorruptHeader("metadata checksum mismatch")
    flags, pos = body[0], 1
    if flags & ~(_FILENAME | _CONTENT_TYPE):
        raise CorruptHeader(f"unknown metadata flags {flags:#x}")
    texts: list[str | None] = []
    for flag in (_FILENAME, _CONTENT_TYPE):
        if not flags & flag:
            texts.append(None)
            continue
        if pos + _LENGTH.size > len(body):
            raise CorruptHeader("metadata trailer cut short")
        (length,) = _LENGTH.unpack_from(body, pos)
        pos += _LENGTH.size
        if pos + length > len(body):
            raise CorruptHeader("metadata trailer cut short")
        try:
            texts.append(body[pos : pos + length].decode())
        except UnicodeDecodeError:
            raise CorruptHeader("metadata is not UTF-8") from None
        pos += length
    if pos != len(body):
        raise CorruptHeader("metadata trailer has bytes left over")
    return BlobMetadata(texts[0], texts[1])


def encode_header(blob_type: BlobType, size: int, trailer_size: int = 0) -> bytes:
    """The header of a file of `size` content bytes and a trailer of `trailer_size`.

    Version 1 whenever it can say everything (no trailer, Json or Binary), so files
    without metadata are byte for byte what they always were; version 2 otherwise.
    """
    if trailer_size == 0 and blob_type in _V1_TYPES:
        head = _LAYOUT_V1.pack(MAGIC_V1, _TYPE_CODES[blob_type], size)
    else:
        head = _LAYOUT_V2.pack(MAGIC_V2, _TYPE_CODES[blob_type], trailer_size, size)
    return head + _CRC.pack(zlib.crc32(head))


def encode_parts(blob_type: BlobType, data: bytes, metadata: BlobMetadata) -> list[bytes]:
    """A whole blob file as parts for one writev: header, content (not copied), trailer."""
    trailer = encode_trailer(metadata)
    parts = [encode_header(blob_type, len(data), len(trailer)), data]
    if trailer:
        parts.append(trailer)
    return parts


def decode_header(header: bytes) -> Header:
    """Decodes the first HEADER_SIZE bytes of a blob file; raises CorruptHeader."""
    if len(header) < HEADER_SIZE:
        raise CorruptHeader(f"file is {len(header)} bytes, shorter than its header")
    head, (crc,) = header[:16], _CRC.unpack_from(header, 16)
    if zlib.crc32(head) != crc:
        raise CorruptHeader("header checksum mismatch")
    if head[:4] == MAGIC_V1:
        _, code, size = _LAYOUT_V1.unpack(head)
        trailer_size = 0
        known = code in (b"J", b"B")
    elif head[:4] == MAGIC_V2:
        _, code, trailer_size, size = _LAYOUT_V2.unpack(head)
        known = code in _TYPES_BY_CODE
    else:
        raise CorruptHeader("not a blob file")
    if not known:
        raise CorruptHeader("not a blob file")
    return Header(_TYPES_BY_CODE[code], size, trailer_size)


def decode_file_header(header: bytes, file_size: int) -> Header:
    """decode_header, and the lengths checked against the file's size; raises CorruptHeader."""
    decoded = decode_header(header)
    if file_size != decoded.file_size:
        raise CorruptHeader(
            f"file holds {file_size - HEADER_SIZE - decoded.trailer_size} content bytes, "
            f"its header says {decoded.size}"
        )
    return decoded


def blob_info(
    blob_id: BlobId, header: bytes, file_size: int, trailer: bytes | None = b""
) -> BlobInfo:
    """The metadata of a blob file of `file_size` bytes; DataLoss if it is broken.

    `trailer` is the file's last `trailer_size` bytes (see trailer_size); not needed
    when the header says there is none. None: only the type and size are wanted (the
    metadata is then left out, unchecked).
    """
    try:
        decoded = decode_file_header(header, file_size)
        if trailer is None:
            return BlobInfo(blob_id, decoded.blob_type, decoded.size)
        if len(trailer) != decoded.trailer_size:
            raise CorruptHeader(
                f"metadata trailer is {len(trailer)} bytes, its header says {decoded.trailer_size}"
            )
        metadata = decode_trailer(trailer)
    except CorruptHeader as exc:
        raise DataLoss(blob_id, str(exc)) from None
    return BlobInfo(blob_id, decoded.blob_type, decoded.size, metadata)


def trailer_size(header: bytes) -> int:
    """How many bytes of metadata end the file: 0 if none, or if the header is broken
    (blob_info then says what is wrong)."""
    try:
        return decode_header(header).trailer_size
    except CorruptHeader:
        return 0


def read_info(fd: int, blob_id: BlobId) -> BlobInfo:
    """The metadata of an open blob file (blocking reads); DataLoss if it is broken."""
    header = os.pread(fd, HEADER_SIZE, 0)
    file_size = os.fstat(fd).st_size
    size = trailer_size(header)
    trailer = os.pread(fd, size, file_size - size) if size else b""
    return blob_info(blob_id, header, file_size, trailer)


def check_file(path: Path, blob_id: BlobId) -> str | None:
    """Returns what is wrong with the blob file at `path` (header, trailer, length, hash),
    or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        try:
            decoded = decode_file_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size)
            end = HEADER_SIZE + decoded.size
            decode_trailer(os.pread(fd, decoded.trailer_size, end) if decoded.trailer_size else b"")
        except CorruptHeader as exc:
            return str(exc)
        hasher = hashlib.sha256()
        offset = HEADER_SIZE
        while offset < end and (chunk := os.pread(fd, min(_CHECK_CHUNK, end - offset), offset)):
            hasher.update(chunk)
            offset += len(chunk)
        if hasher.hexdigest() != hex_digest(blob_id):
            return "content does not match its SHA-256 id"
        return None
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    finally:
        os.close(fd)
