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

from typing import Literal

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


# -- Put requests carrying a large `json` Value ---------------------------------------
# Parsing such a request, sizing its Value and serialising it again for the JSON
# worker is C work that holds the GIL: about 0.2 s for a Value of a million numbers
# (11 MB), during which no other call moves, and seconds on a loaded machine. The
# Value's bytes are cut out of the message unparsed instead and go to the worker
# as they came (blobstore.grpc.json_value); only the few other fields are parsed here.

_PUT_DATA_FIELD = 2
_PUT_JSON_FIELD = 3
LARGE_JSON_PUT_BYTES = 64 * 1024
"""A Put message over this size that carries `json` keeps the Value serialized."""
PutField = Literal["content", "json", "data", "filename", "content_type"]
"""The fields (and the oneof) of a PutRequest whose presence HasField can tell."""


class JsonPutRequest:
    """A PutRequest whose `json` Value is still serialized (`json_bytes`); every other
    field reads as on the parsed message `head`, which lacks the Value. What the guard and
    the servicer read of a PutRequest is here, typed as on the message."""

    __slots__ = ("_size", "head", "json_bytes")

    def __init__(self, head: pb.PutRequest, json_bytes: bytes, size: int) -> None:
        self.head = head
        self.json_bytes = json_bytes
        self._size = size

    @property
    def blob_type(self) -> pb.BlobType.ValueType:
        return self.head.blob_type

    @property
    def expected_id(self) -> str:
        return self.head.expected_id

    @property
    def filename(self) -> str:
        return self.head.filename

    @property
    def content_type(self) -> str:
        return self.head.content_type

    def WhichOneof(self, group: Literal["content"]) -> Literal["json"]:
        """The content is the `json` Value (the message's only other oneofs are the optional
        fields' own, which nothing asks of a Put)."""
        return "json"

    def HasField(self, name: PutField) -> bool:
        if name in ("json", "content"):
            return True
        return name != "data" and self.head.HasField(name)

    def ByteSize(self) -> int:
        return self._size


def parse_put_request(data: bytes) -> pb.PutRequest | JsonPutRequest:
    """Parses a Put message; a large one carrying `json` keeps its Value serialized.

    Only a plain encoding is split: each top-level field once at most for the
    content (one `json`, no `data`), known wire types, lengths inside the message.
    Anything else goes to protobuf, which decides and reports exactly as before.
    """
    if len(data) > LARGE_JSON_PUT_BYTES:
        split = _split_json_value(data)
        if split is not None:
            rest, value = split
            return JsonPutRequest(pb.PutRequest.FromString(rest), value, len(data))
    return pb.PutRequest.FromString(data)


def _split_json_value(data: bytes) -> tuple[bytes, bytes] | None:
    """(the message without its `json` field, that field's bytes), or None."""
    view = memoryview(data)
    rest: list[memoryview] = []
    value: bytes | None = None
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = read_varint(data, pos)
        field, kind = tag >> 3, tag & 7
        if tag < 0 or field == _PUT_DATA_FIELD:
            return None
        if kind == 0:  # varint
            number, pos = read_varint(data, pos)
            if number < 0:
                return None
        elif kind == 2:  # length-delimited
            length, pos = read_varint(data, pos)
            if length < 0 or pos + length > len(data):
                return None
            if field == _PUT_JSON_FIELD:
                if value is not None:  # repeated: protobuf merges them
                    return None
                value = data[pos : pos + length]
                pos += length
                continue
            pos += length
        else:
            return None
        rest.append(view[start:pos])
    if value is None:
        return None
    return b"".join(rest), value


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
