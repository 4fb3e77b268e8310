"""google.protobuf.Value <-> JSON for the `json` fields of Put and Get.

Turning a Value of many elements into Python objects and canonical JSON is pure
Python work under the GIL: a Value of a million elements held the event loop for
seconds, so every other call waited. Large Values (over PROCESS_MIN_BYTES encoded)
therefore travel as their serialized bytes to the JSON worker process (offload.py),
which parses them, counts their values against --max-json-values before building
any Python object, and returns the canonical JSON text; small ones are converted
right here, where a process hop would cost more than the work.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError

from blobstore import errors
from blobstore.canonical_json import canonicalize_value
from blobstore.model import Blob
from blobstore.offload import offload, offload_to_process

PROCESS_MIN_BYTES = 64 * 1024
"""Encoded size past which a Value is converted in the worker process: at about 3 bytes
per element, some 20 000 elements, a few milliseconds of Python work."""


async def canonical_json_of(value: struct_pb2.Value, max_values: int) -> bytes:
    """The canonical JSON text of `value`; BlobTooLarge past `max_values` (0: no cap)."""
    size = value.ByteSize()
    if size <= PROCESS_MIN_BYTES:
        return canonicalize_value(_to_python(value))
    return await canonical_json_of_serialized(value.SerializeToString(), max_values)


async def canonical_json_of_serialized(serialized: bytes, max_values: int) -> bytes:
    """The same for a Value still in its wire form (a large Put's, grpc/wire.py): parsed,
    counted and converted in the worker process; InvalidArgument if it is not a Value."""
    convert = functools.partial(_canonical_from_bytes, max_values=max_values)
    return await offload_to_process(convert, serialized)


async def value_of(blob: Blob) -> struct_pb2.Value:
    """A stored Json blob as a Value (for Get with as_json_value)."""
    return await offload(len(blob.data), _from_json, blob)


def _canonical_from_bytes(serialized: bytes, max_values: int) -> bytes:
    """Runs in the worker process: parse, count, convert, canonicalise."""
    try:
        value = struct_pb2.Value.FromString(serialized)
    except DecodeError:
        raise errors.InvalidArgument(
            "the request's json field is not a valid google.protobuf.Value"
        ) from None
    # Each value takes at least 2 bytes of the encoding: only a long one can be too many.
    if max_values and len(serialized) > 2 * max_values:
        count = _count_values(value, max_values)
        if count > max_values:
            raise errors.BlobTooLarge(
                f"the json Value has more than {max_values} values (--max-json-values): "
                "each costs memory when converted"
            )
    return canonicalize_value(_to_python(value))


def _count_values(value: struct_pb2.Value, limit: int) -> int:
    """Values in `value`, counted without recursion; stops once past `limit`.

    Depth first with iterators: holding the elements of a large list all at once
    (a list of a million wrappers) made each later access slow, 40 s for a million.
    """
    count = 0
    stack: list[Iterator[struct_pb2.Value]] = [iter((value,))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        count += 1
        if count > limit:
            break
        kind = item.WhichOneof("kind")
        if kind == "list_value":
            stack.append(iter(item.list_value.values))
        elif kind == "struct_value":
            stack.append(iter(item.struct_value.fields.values()))
    return count


def _to_python(value: struct_pb2.Value) -> object:
    if value.WhichOneof("kind") is None:
        raise errors.InvalidJson("json: the Value has no kind set (JSON null is null_value)")
    try:
        return json_format.MessageToDict(value)
    except ValueError as exc:  # NaN or Infinity in a number_value
        raise errors.InvalidJson(f"json: {exc}") from None


def _from_json(blob: Blob) -> struct_pb2.Value:
    value = struct_pb2.Value()
    try:
        json_format.Parse(blob.data, value)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(
            f"blob {blob.info.blob_id} cannot be returned as a protobuf Value ({exc}); "
            "read it without as_json_value"
        ) from None
    return value
