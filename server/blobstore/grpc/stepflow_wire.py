"""stepflow.v1's protobuf written and read by hand: JSON as google.protobuf.Value, GetBlob replies.

stepflow.v1 carries JSON as a google.protobuf.Value both ways. protobuf's
json_format walks a Value in pure Python with generic reflection, which cost
stepflow.v1 a third of its small-call rate (docs/performance.md, "stepflow.v1
beside blobstore.v1"); these functions do the same conversions directly:

* `to_python(value)`: a parsed Value to dicts, lists, str, float, bool, None
  (NaN and infinities, which no JSON may hold, and an unset kind are refused
  as InvalidJson);
* `encode_json_text(text)`: stored canonical JSON text to the wire bytes of a
  Value message, via orjson; None when orjson cannot parse it (integers past
  64 bits), for the caller to fall back on json_format;
* `get_blob_reply(...)`: a GetBlobResponse around content already encoded
  (one join, where a message would copy the content in and out again).

Numbers are doubles in a Value, as everywhere protobuf maps JSON (integers past
2^53 become the nearest double, as json_format makes them).
tests/unit/test_stepflow_wire.py checks each against protobuf's own result.
Field numbers come from proto/stepflow/v1/blobs.proto; a change there must be
mirrored here.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
from google.protobuf import struct_pb2

from blobstore.errors import InvalidJson
from blobstore.grpc.wire import varint

_DOUBLE = struct.Struct("<d")
_NULL = b"\x08\x00"  # null_value (field 1, varint) = NULL_VALUE
_TRUE = b"\x20\x01"  # bool_value (field 4, varint)
_FALSE = b"\x20\x00"


def to_python(value: struct_pb2.Value) -> Any:
    """The JSON value a Value holds; raises InvalidJson for an unset kind, NaN or infinity."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise InvalidJson(f"json_data: {number} is not a JSON number")
        return number
    if kind == "struct_value":
        return {key: to_python(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [to_python(item) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    if kind == "null_value":
        return None
    raise InvalidJson("json_data: a Value has no kind set (JSON null is null_value)")


def encode_json_text(text: bytes) -> bytes | None:
    """Wire bytes of the Value that the JSON `text` is; None if orjson cannot read it."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return _encode(parsed)


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return b"\x1a" + varint(len(raw)) + raw
    if value is True:
        return _TRUE
    if value is False:
        return _FALSE
    if isinstance(value, int | float):
        return b"\x11" + _DOUBLE.pack(float(value))
    if value is None:
        return _NULL
    if isinstance(value, dict):
        entries = []
        for key, item in value.items():
            raw_key = key.encode()
            inner = _encode(item)
            entry = b"".join(
                (b"\x0a", varint(len(raw_key)), raw_key, b"\x12", varint(len(inner)), inner)
            )
            entries.append(b"\x0a" + varint(len(entry)) + entry)
        body = b"".join(entries)
        return b"\x2a" + varint(len(body)) + body
    items = [_encode(item) for item in value]
    body = b"".join(b"\x0a" + varint(len(item)) + item for item in items)
    return b"\x32" + varint(len(body)) + body


# -- GetBlobResponse ----------------------------------------------------------------


def json_content(value: bytes) -> bytes:
    """The `json_data` field (1) around a Value's wire bytes."""
    return b"\x0a" + varint(len(value)) + value


def raw_content(data: bytes) -> bytes:
    """The `raw_data` field (6) around a binary blob's bytes."""
    return b"\x32" + varint(len(data)) + data


def get_blob_reply(
    content: bytes,
    blob_type: str,
    blob_id: str,
    filename: str | None,
    content_type: str | None,
) -> bytes:
    """GetBlobResponse in protobuf wire format: `content` (json_content or raw_content), then
    blob_type (2), blob_id (3), filename (4) and content_type (5) where set."""
    fields = [content, _string(2, blob_type), _string(3, blob_id)]
    if filename is not None:
        fields.append(_string(4, filename))
    if content_type is not None:
        fields.append(_string(5, content_type))
    return b"".join(fields)


def _string(field: int, text: str) -> bytes:
    raw = text.encode()
    return bytes((field << 3 | 2,)) + varint(len(raw)) + raw
