"""Protobuf wire format written and read by hand, where protobuf's copies cost.

Everything here is a measured shortcut around the generated message classes
(figures in docs/performance.md, "Phases 2 and 3"); the rest of the server
speaks messages. Each shortcut produces or accepts exactly what protobuf
would (tests/process/test_fast_paths.py checks them byte for byte), and
anything unusual goes to protobuf, so errors read the same.

Field numbers come from proto/blobstore/v1/blobstore.proto; a change there
must be mirrored here.
"""

from __future__ import annotations

from google.protobuf.message import Message

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.model import BlobInfo, PutResult
from blobstore.proto_names import BLOB_TYPE_TO_PB

# Field 2 (blob_type, varint) of GetResponse and PutResponse.
_TYPE_FIELD = {key: bytes((0x10, value)) for key, value in BLOB_TYPE_TO_PB.items()}
_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


# -- replies ---------------------------------------------------------------------------
# Put and Get replies: one join instead of building a message and serialising
# it, which saves the message and (for Get) two copies of the data per call.


def put_reply(result: PutResult) -> bytes:
    """PutResponse(id=..., blob_type=..., size=..., created=...) in protobuf wire format."""
    created = b"\x20\x01" if result.created else b""
    return b"".join((*_info_fields(result.info), created))


def get_reply(info: BlobInfo, data: bytes) -> bytes:
    """GetResponse(id=..., blob_type=..., size=..., data=data) in protobuf wire format.

    Fields in number order, defaults left out as protobuf does, except
    `data`: a oneof member is always written.
    """
    return b"".join((*_info_fields(info), b"\x22", varint(len(data)), data))


def _info_fields(info: BlobInfo) -> tuple[bytes, ...]:
    """Fields 1-3 (id, blob_type, size), which PutResponse and GetResponse share."""
    blob_id = info.blob_id.encode()
    size = b"\x18" + varint(info.size) if info.size else b""
    return (b"\x0a", varint(len(blob_id)), blob_id, _TYPE_FIELD[info.blob_type], size)


# GetStream chunk messages: building the message and serialising it copies each
# 1 MiB chunk twice; this copies it once (the largest single gain on get_large).


def chunk_message(offset: int, chunk: bytes) -> bytes:
    """GetStreamResponse(offset=offset, chunk=chunk) in protobuf wire format."""
    return b"".join((b"\x10", varint(offset), b"\x1a", varint(len(chunk)), chunk))


def serialize_reply(reply: Message | bytes) -> bytes:
    """The response serializer of the methods above: encoded replies pass as they are."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def varint(value: int) -> bytes:
    """A non-negative int as a protobuf varint (small values from a table: most sizes)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- PutStream requests ----------------------------------------------------------------
# Protobuf copies a chunk into the message and again at each `.chunk` access;
# the common message (only [offset] and a chunk) is answered with a view of the
# received bytes instead: no copy (the second-largest gain on put_large after
# the malloc tuning).


class ChunkMessage:
    """A PutStreamRequest that holds only a chunk (and maybe its offset): the common case.

    Has the attributes and methods of the message that the guard and the
    servicer use, with the message's defaults for the fields it lacks.
    """

    __slots__ = ("_has_offset", "_size", "chunk", "offset")
    blob_type = pb.BLOB_TYPE_UNSPECIFIED
    total_size = 0
    expected_id = ""

    def __init__(self, chunk: memoryview, offset: int | None, size: int) -> None:
        self.chunk = chunk
        self.offset = offset or 0
        self._has_offset = offset is not None
        self._size = size

    def HasField(self, name: str) -> bool:
        return name == "offset" and self._has_offset

    def ByteSize(self) -> int:
        return self._size


def parse_put_stream_request(data: bytes) -> pb.PutStreamRequest | ChunkMessage:
    """Parses a PutStream message, without copying the chunk where it can.

    A message that is exactly [offset] chunk, as every client sends after
    the first message, becomes a ChunkMessage over a view of the received
    bytes; anything else (other fields, repeats, odd encodings, garbage)
    goes to protobuf, which decides and reports exactly as before.
    """
    pos = 0
    offset = None
    if data[:1] == b"\x20":  # field 4 (offset), varint
        offset, pos = read_varint(data, 1)
    if (offset is not None and offset < 0) or data[pos : pos + 1] != b"\x2a":  # field 5, bytes
        return pb.PutStreamRequest.FromString(data)
    length, start = read_varint(data, pos + 1)
    if length < 0 or start + length != len(data):
        return pb.PutStreamRequest.FromString(data)
    return ChunkMessage(memoryview(data)[start:], offset, len(data))


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); value -1 if the varint is broken or over 64 bits."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            return -1, pos
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value, pos) if value < 1 << 64 else (-1, pos)
    return -1, pos
