"""The on-disk format of one stored blob: a small self-checking header, the content, and
(in version 2) the blob's metadata after the content.

    offset  size  field
    0       4     magic b"CAB1" (no metadata) or b"CAB2" (metadata after the content)
    4       1     type: b"J" (Json), b"F" (Flow) or b"B" (Binary)
    5       1     reserved, zero
    6       2     CAB2: length m of the metadata block, big-endian; CAB1: zero
    8       8     content length n, big-endian
    16      4     CRC-32 of bytes 0..15, big-endian
    20      n     content (canonical JSON text, or the raw bytes)
    20+n    m     CAB2 only: the metadata block

The metadata block (BlobMeta), each string UTF-8 with a big-endian length:

    2 + f   filename (f = 0: none)
    2 + c   content type (c = 0: none)
    4       CRC-32 of the block's bytes before it, big-endian

A blob without metadata is written as CAB1, byte for byte the format of
releases before metadata existed, so those files and these stay readable by
either. The content is covered by the blob's id (its SHA-256); the header and
the metadata by their CRCs, so a flipped bit anywhere in the file is detected
on read. The content always starts at HEADER_SIZE, whatever the version.

This module is the one decoder of that format: every reader (get, stat,
replay, scrub, the journal, whose records hold a blob file's bytes) goes
through decode_header and decode_meta, and the file readers through
blob_info / read_info.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from blobstore.errors import DataLoss
from blobstore.ids import BlobId, hex_digest
from blobstore.model import NO_META, BlobInfo, BlobMeta, BlobType
from blobstore.storage.filesystem.os_calls import NotRegularFile, open_regular

MAGIC = b"CAB1"
MAGIC_WITH_META = b"CAB2"
HEADER_SIZE = 20
MAX_META_SIZE = 0xFFFF
"""The metadata block's length is a 16-bit field of the header."""
_LAYOUT = struct.Struct(">4scxHQ")
_CRC = struct.Struct(">I")
_LENGTH = struct.Struct(">H")
_TYPE_CODES = {BlobType.JSON: b"J", BlobType.BINARY: b"B", BlobType.FLOW: b"F"}
_TYPES_BY_CODE = {code: blob_type for blob_type, code in _TYPE_CODES.items()}
_CHECK_CHUNK = 1024 * 1024


class CorruptHeader(Exception):
    """The header (or the metadata block) is not valid."""


class Header(NamedTuple):
    """What a blob file's header says."""

    blob_type: BlobType
    size: int
    """Content bytes, from HEADER_SIZE."""
    meta_size: int
    """Bytes of the metadata block after the content (0: none, a CAB1 file)."""

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.size + self.meta_size


def encode_meta(meta: BlobMeta) -> bytes:
    """The metadata block of `meta`; empty for no metadata."""
    if not meta:
        return b""
    parts = []
    for text in (meta.filename, meta.content_type):
        raw = (text or "").encode()
        parts += [_LENGTH.pack(len(raw)), raw]
    block = b"".join(parts)
    return block + _CRC.pack(zlib.crc32(block))


def encode_header(blob_type: BlobType, size: int, meta_block: bytes = b"") -> bytes:
    """The header of a file of `size` content bytes followed by `meta_block` (encode_meta)."""
    magic = MAGIC_WITH_META if meta_block else MAGIC
    head = _LAYOUT.pack(magic, _TYPE_CODES[blob_type], len(meta_block), size)
    return head + _CRC.pack(zlib.crc32(head))


def decode_header(header: bytes) -> Header:
    """What the header says; raises CorruptHeader."""
    if len(header) < HEADER_SIZE:
        raise CorruptHeader(f"file is {len(header)} bytes, shorter than its header")
    head, (crc,) = header[:16], _CRC.unpack_from(header, 16)
    if zlib.crc32(head) != crc:
        raise CorruptHeader("header checksum mismatch")
    magic, code, meta_size, size = _LAYOUT.unpack(head)
    if code not in _TYPES_BY_CODE or magic not in (MAGIC, MAGIC_WITH_META):
        raise CorruptHeader("not a blob file")
    if (magic == MAGIC) != (meta_size == 0):
        raise CorruptHeader(f"a {magic.decode()} header with {meta_size} bytes of metadata")
    return Header(_TYPES_BY_CODE[code], size, meta_size)


def decode_meta(block: bytes | memoryview) -> BlobMeta:
    """The metadata of a block written by encode_meta; raises CorruptHeader."""
    if not block:
        return NO_META
    block = bytes(block)
    if len(block) < 8 or zlib.crc32(block[:-4]) != _CRC.unpack_from(block, len(block) - 4)[0]:
        raise CorruptHeader("metadata checksum mismatch")
    fields: list[str | None] = []
    pos = 0
    for _ in range(2):
        if pos + 2 > len(block) - 4:
            raise CorruptHeader("metadata block cut short")
        (length,) = _LENGTH.unpack_from(block, pos)
        end = pos + 2 + length
        if end > len(block) - 4:
            raise CorruptHeader("metadata block cut short")
        try:
            fields.append(block[pos + 2 : end].decode() or None)
        except UnicodeDecodeError:
            raise CorruptHeader("metadata is not UTF-8") from None
        pos = end
    if pos != len(block) - 4:
        raise CorruptHeader("metadata block has bytes after its fields")
    return BlobMeta(fields[0], fields[1])


def decode_file_header(header: bytes, file_size: int) -> Header:
    """decode_header, and the lengths checked against the file's size; raises CorruptHeader."""
    decoded = decode_header(header)
    if file_size != decoded.file_size:
        raise CorruptHeader(
            f"file holds {file_size - HEADER_SIZE - decoded.meta_size} content bytes, "
            f"its header says {decoded.size}"
        )
    return decoded


def file_header(blob_id: BlobId, header: bytes, file_size: int) -> Header:
    """decode_file_header for a reader: DataLoss if the header is broken."""
    try:
        return decode_file_header(header, file_size)
    except CorruptHeader as exc:
        raise DataLoss(blob_id, str(exc)) from None


def blob_info(blob_id: BlobId, header: Header, meta_block: bytes | memoryview) -> BlobInfo:
    """The metadata of a blob file whose header says `header` and whose last
    header.meta_size bytes are `meta_block`; DataLoss if the block is broken."""
    try:
        if len(meta_block) != header.meta_size:
            raise CorruptHeader(
                f"metadata block is {len(meta_block)} bytes, its header says {header.meta_size}"
            )
        meta = decode_meta(meta_block)
    except CorruptHeader as exc:
        raise DataLoss(blob_id, str(exc)) from None
    return BlobInfo(blob_id, header.blob_type, header.size, meta)


def _read_file(fd: int) -> tuple[Header, BlobMeta]:
    """The checked header and metadata of an open blob file (blocking reads); raises
    CorruptHeader or OSError."""
    decoded = decode_file_header(os.pread(fd, HEADER_SIZE, 0), os.fstat(fd).st_size)
    if not decoded.meta_size:
        return decoded, NO_META
    block = os.pread(fd, decoded.meta_size, HEADER_SIZE + decoded.size)
    if len(block) != decoded.meta_size:
        raise CorruptHeader("metadata block cut short")
    return decoded, decode_meta(block)


def read_info(fd: int, blob_id: BlobId) -> BlobInfo:
    """The metadata of an open blob file (blocking reads); DataLoss if it is broken."""
    try:
        decoded, meta = _read_file(fd)
    except CorruptHeader as exc:
        raise DataLoss(blob_id, str(exc)) from None
    return BlobInfo(blob_id, decoded.blob_type, decoded.size, meta)


def check_file(path: Path, blob_id: BlobId) -> str | None:
    """Returns what is wrong with the blob file at `path` (header, length, metadata, hash),
    or None."""
    try:
        fd, _ = open_regular(path)
    except NotRegularFile as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        try:
            decoded, _ = _read_file(fd)
        except CorruptHeader as exc:
            return str(exc)
        hasher = hashlib.sha256()
        offset, end = HEADER_SIZE, HEADER_SIZE + decoded.size
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


class FileContent(NamedTuple):
    """The content of a blob file being written, open as `fd`: `size` bytes from
    HEADER_SIZE (its header, and any metadata block after the content, may or may not
    be written yet)."""

    fd: int
    size: int


def same_content(fd: int, size: int, content: bytes | FileContent) -> bool:
    """True if the blob file open as `fd`, of `size` content bytes (its header says so),
    holds exactly `content`: bytes, or the content of another blob file (a streamed
    put's temp file)."""
    given = len(content) if isinstance(content, bytes) else content.size
    if given != size:
        return False
    if isinstance(content, bytes):
        expected = memoryview(content)

        def wanted(offset: int, length: int) -> bytes | memoryview:
            return expected[offset : offset + length]

    else:
        other = content.fd

        def wanted(offset: int, length: int) -> bytes | memoryview:
            return os.pread(other, length, HEADER_SIZE + offset)

    offset = 0
    while offset < size:
        length = min(_CHECK_CHUNK, size - offset)
        if os.pread(fd, length, HEADER_SIZE + offset) != wanted(offset, length):
            return False
        offset += length
    return True
