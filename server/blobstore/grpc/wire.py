"""Protobuf wire format written and read by hand, where protobuf's copies cost.

Everything here is a shortcut around the generated message classes that
scripts/bench.py shows to pay (figures in docs/performance.md, "The wire
module"); the rest of the server speaks messages. Each shortcut produces or
accepts what protobuf would (tests/process/test_fast_paths.py compares them
with protobuf), and anything unusual goes to protobuf, so errors read the
same. Hand-encoded Put and Get replies were dropped in issue 9: their gain
was within the benchmark's noise.

Field numbers come from proto/blobstore/v1/blobstore.proto; a change there
must be mirrored here.
"""

from __future__ import annotations

from google.protobuf.message import Message

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb

# -- GetStream replies ------------------------------------------------------------------
# Building a chunk message and serialising it copies each 1 MiB chunk twice;
# this copies it once (get_large, measured with and without).


def chunk_message(offset: int, chunk: bytes) -> bytes:
    """GetStreamResponse(offset=offset, chunk=chunk) in protobuf wire format."""
    return b"".join((b"\x10", varint(offset), b"\x1a", varint(len(chunk)), chunk))


def serialize_reply(reply: Message | bytes) -> bytes:
    """GetStream's response serializer: chunk messages pass as they are, the first is a message."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def varint(value: int) -> bytes:
    """A non-negative int as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- PutStream requests ----------------------------------------------------------------
# Protobuf copies a chunk into the message and again at each `.chunk` access;
# the common message (only [offset] and a chunk) is answered with a view of the
# received bytes instead: no copy (put_large, measured with perf and the
# benchmark when it came in: change 8 in docs/performance.md).


class ChunkMessage:
    """A PutStreamRequest that holds only a chunk (and maybe its offset): the common case.

    Has the attributes and methods of the message that the guard and the
    servicer use, with the message's defaults for the fields it lacks.
    """

    __slots__ = ("_has_offset", "_size", "chunk", "offset")
    blob_type = pb.BLOB_TYPE_UNSPECIFIED
    total_size = 0
    expected_id = ""
    filename = ""
    content_type = ""

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
