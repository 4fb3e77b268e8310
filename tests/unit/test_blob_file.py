"""The blob file format: version 1 files (before metadata) read as ever, version 2 carries
the Flow type and the metadata trailer, and damage anywhere is caught."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest

from blobstore.errors import DataLoss
from blobstore.ids import BlobId
from blobstore.model import NO_METADATA, BlobInfo, BlobMetadata, BlobType
from blobstore.storage.blob_file import (
    HEADER_SIZE,
    CorruptHeader,
    blob_info,
    check_file,
    decode_header,
    decode_trailer,
    encode_parts,
    encode_trailer,
)


def old_format_file(code: bytes, content: bytes) -> bytes:
    """A blob file exactly as servers wrote them before metadata existed (written out
    here by hand, not with the module under test)."""
    head = b"CAB1" + code + b"\x00\x00\x00" + struct.pack(">Q", len(content))
    return head + struct.pack(">I", zlib.crc32(head)) + content


def id_of(content: bytes) -> BlobId:
    return BlobId("sha256:" + hashlib.sha256(content).hexdigest())


def file_info(raw: bytes, blob_id: BlobId) -> BlobInfo:
    trailer_size = decode_header(raw[:HEADER_SIZE]).trailer_size
    trailer = raw[len(raw) - trailer_size :] if trailer_size else b""
    return blob_info(blob_id, raw[:HEADER_SIZE], len(raw), trailer)


@pytest.mark.parametrize(("code", "blob_type"), [(b"J", BlobType.JSON), (b"B", BlobType.BINARY)])
def test_old_format_files_read_as_before(tmp_path: Path, code: bytes, blob_type: BlobType) -> None:
    content = b'{"a":1}' if code == b"J" else b"\x00\x01 raw"
    raw = old_format_file(code, content)
    header = decode_header(raw[:HEADER_SIZE])
    assert (header.blob_type, header.size, header.trailer_size) == (blob_type, len(content), 0)
    info = file_info(raw, id_of(content))
    assert info == blob_info(id_of(content), raw[:HEADER_SIZE], len(raw))
    assert info.metadata == NO_METADATA
    path = tmp_path / "old"
    path.write_bytes(raw)
    assert check_file(path, id_of(content)) is None
    # Written today without metadata, the file is the same bytes: older servers read it too.
    assert b"".join(encode_parts(blob_type, content, NO_METADATA)) == raw


@pytest.mark.parametrize(
    ("blob_type", "metadata"),
    [
        (BlobType.FLOW, NO_METADATA),
        (BlobType.BINARY, BlobMetadata(filename="r\u00e9sum\u00e9 \U0001f600.pdf")),
        (BlobType.BINARY, BlobMetadata(content_type="application/pdf")),
        (BlobType.JSON, BlobMetadata("data.json", "application/json")),
        (BlobType.FLOW, BlobMetadata("f" * 1024, "t" * 255)),
        (BlobType.BINARY, BlobMetadata(filename="")),
    ],
)
def test_version_2_round_trips_type_and_metadata(
    tmp_path: Path, blob_type: BlobType, metadata: BlobMetadata
) -> None:
    content = b'{"steps":[]}'
    raw = b"".join(encode_parts(blob_type, content, metadata))
    assert raw[:4] == b"CAB2"
    assert raw[HEADER_SIZE : HEADER_SIZE + len(content)] == content  # content where it always was
    info = file_info(raw, id_of(content))
    assert (info.blob_type, info.size) == (blob_type, len(content))
    assert info.metadata == metadata
    path = tmp_path / "new"
    path.write_bytes(raw)
    assert check_file(path, id_of(content)) is None


def test_every_flipped_bit_of_a_version_2_file_is_caught(tmp_path: Path) -> None:
    content = b"payload"
    raw = b"".join(encode_parts(BlobType.BINARY, content, BlobMetadata("a.bin", "x/y")))
    path = tmp_path / "blob"
    for index in range(len(raw)):
        damaged = bytearray(raw)
        damaged[index] ^= 0x10
        path.write_bytes(bytes(damaged))
        assert check_file(path, id_of(content)) is not None, f"byte {index} not checked"


def test_a_cut_or_lengthened_trailer_is_data_loss() -> None:
    content = b"payload"
    raw = b"".join(encode_parts(BlobType.BINARY, content, BlobMetadata("name")))
    header = raw[:HEADER_SIZE]
    for wrong in (raw[:-1], raw + b"\x00"):
        with pytest.raises(DataLoss):
            blob_info(
                id_of(content), header, len(wrong), wrong[-decode_header(header).trailer_size :]
            )
    trailer = raw[HEADER_SIZE + len(content) :]
    with pytest.raises(DataLoss):
        blob_info(id_of(content), header, len(raw), trailer[:-1])


@pytest.mark.parametrize(
    "trailer",
    [
        b"\x01",  # too short for its CRC
        b"\x04" + struct.pack(">I", zlib.crc32(b"\x04")),  # unknown flag
        b"\x01\x00\x09ab" + struct.pack(">I", zlib.crc32(b"\x01\x00\x09ab")),  # cut short
        b"\x01\x00\x01\xff" + struct.pack(">I", zlib.crc32(b"\x01\x00\x01\xff")),  # not UTF-8
        b"\x00extra" + struct.pack(">I", zlib.crc32(b"\x00extra")),  # bytes left over
    ],
)
def test_malformed_trailers_are_refused(trailer: bytes) -> None:
    with pytest.raises(CorruptHeader):
        decode_trailer(trailer)


def test_no_metadata_is_no_trailer() -> None:
    assert encode_trailer(NO_METADATA) == b""
    assert decode_trailer(b"") == NO_METADATA
