"""Stepflow's `stepflow.v1.BlobService` (PutBlob, GetBlob) over the same BlobStore.

A thin adapter beside blobstore.v1's servicer: it decodes Stepflow's messages,
calls the same store (so the same durability, verification, limits and, through
the guard, overload behaviour) and encodes Stepflow's replies. Errors go through
the same table (server/blobstore/status.py), so they carry the same
google.rpc.ErrorInfo details.

What differs is only the wire form: ids are the bare 64 lowercase hex digits
(upper case accepted on input, anything else INVALID_ARGUMENT, as Stepflow's own
service does), types are Stepflow's strings, and JSON travels as a
google.protobuf.Value. See docs/stepflow.md.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from blobstore import errors
from blobstore.api.stepflow.v1 import blobs_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2_grpc as pb_grpc
from blobstore.grpc.servicer import _serialize_reply, _translate_errors, _varint
from blobstore.grpc.struct_value import encode_json_text, to_python
from blobstore.ids import PREFIX, BlobId, hex_digest
from blobstore.model import Blob, BlobInfo, BlobMetadata, BlobType
from blobstore.offload import offload
from blobstore.store import BlobStore

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BlobService"].full_name

DATA, FLOW, BINARY = "data", "flow", "binary"
OCTET_STREAM = "application/octet-stream"
_JSON_TYPES = {"": BlobType.JSON, DATA: BlobType.JSON, FLOW: BlobType.FLOW}
_TYPE_NAMES = {BlobType.JSON: DATA, BlobType.FLOW: FLOW, BlobType.BINARY: BINARY}
_ANY_CASE_HEX = re.compile(r"[0-9a-fA-F]{64}")


class StepflowBlobServicer(pb_grpc.BlobServiceServicer):
    """Implements stepflow.v1.BlobService over a BlobStore."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._values = EncodedValues()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the service; GetBlob's replies come encoded (see _get_blob_reply)."""
        handlers = {
            "PutBlob": grpc.unary_unary_rpc_method_handler(
                self.PutBlob,
                request_deserializer=pb.PutBlobRequest.FromString,
                response_serializer=pb.PutBlobResponse.SerializeToString,
            ),
            "GetBlob": grpc.unary_unary_rpc_method_handler(
                self.GetBlob,
                request_deserializer=pb.GetBlobRequest.FromString,
                response_serializer=_serialize_reply,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]

    @_translate_errors
    async def PutBlob(self, request: pb.PutBlobRequest, context: Any) -> pb.PutBlobResponse:
        metadata = BlobMetadata.checked(
            request.filename if request.HasField("filename") else None,
            request.content_type if request.HasField("content_type") else None,
        )
        content = request.WhichOneof("content")
        if content is None:
            raise errors.InvalidArgument(
                "PutBlob needs content: json_data (a JSON value) or raw_data (bytes)"
            )
        if content == "raw_data":
            # Bytes are a binary blob whatever type is named: context.put_blob(b"...")
            # of stepflow-py sends raw_data with its default type "data".
            blob_type_of(request.blob_type)
            result = await self._store.put(BlobType.BINARY, request.raw_data, metadata=metadata)
        else:
            blob_type = blob_type_of(request.blob_type)
            if blob_type is BlobType.BINARY:
                raise errors.InvalidArgument(
                    "blob_type 'binary' takes raw_data; json_data is stored as 'data' or 'flow'"
                )
            size = request.json_data.ByteSize()
            value = await offload(size, to_python, request.json_data)
            result = await self._store.put_json_value(
                value,
                size_hint=size,
                blob_type=blob_type,
                metadata=metadata,
            )
        reply = pb.PutBlobResponse(blob_id=hex_digest(result.info.blob_id))
        if result.info.metadata.filename is not None:
            reply.filename = result.info.metadata.filename
        return reply

    @_translate_errors
    async def GetBlob(  # type: ignore[override]  # the reply comes encoded
        self,
        request: pb.GetBlobRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> bytes:
        """`reserve(size)`, from the guard, is called before the blob's content is read."""
        blob = await self._store.get(parse_bare_id(request.blob_id), reserve)
        if blob.info.blob_type is BlobType.BINARY:
            content = b"\x32" + _varint(len(blob.data)) + blob.data  # raw_data, field 6
        else:
            value = self._values.get(blob.info.blob_id)
            if value is None:
                value = await offload(len(blob.data), _json_value, blob)
                self._values.add(blob.info.blob_id, value)
            content = b"\x0a" + _varint(len(value)) + value  # json_data, field 1
        return _get_blob_reply(blob.info, content)


class EncodedValues:
    """The Value encodings of recently read JSON blobs, by id, up to `max_bytes` in all.

    A blob's content never changes under its id, so its encoding is a pure
    function of the id: GetBlob still reads and verifies the blob every time,
    and only skips turning the same JSON into a Value again (the Python walk
    costs more than the read itself for small documents).
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, max_entry: int = 256 * 1024) -> None:
        self._entries: OrderedDict[BlobId, bytes] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_entry = max_entry

    def get(self, blob_id: BlobId) -> bytes | None:
        value = self._entries.get(blob_id)
        if value is not None:
            self._entries.move_to_end(blob_id)
        return value

    def add(self, blob_id: BlobId, value: bytes) -> None:
        if len(value) > self._max_entry or blob_id in self._entries:
            return
        self._entries[blob_id] = value
        self._bytes += len(value)
        while self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


def blob_type_of(name: str) -> BlobType:
    """The store's type for a Stepflow type name ("" is "data"); INVALID_ARGUMENT otherwise."""
    if name == BINARY:
        return BlobType.BINARY
    try:
        return _JSON_TYPES[name]
    except KeyError:
        raise errors.InvalidArgument(
            f"unknown blob_type {name[:40]!r}: use 'data', 'flow' or 'binary'"
        ) from None


def type_name(blob_type: BlobType) -> str:
    """Stepflow's name of a stored blob's type."""
    return _TYPE_NAMES[blob_type]


def content_type_of(blob_type: BlobType, metadata: BlobMetadata) -> str | None:
    """The content type Stepflow reports: the stored one, else octet-stream for named files."""
    if metadata.content_type is not None:
        return metadata.content_type
    if blob_type is BlobType.BINARY and metadata.filename is not None:
        return OCTET_STREAM
    return None


def parse_bare_id(text: str) -> BlobId:
    """A Stepflow id: exactly 64 hex digits, either case; INVALID_ARGUMENT otherwise."""
    if _ANY_CASE_HEX.fullmatch(text) is None:
        shown = repr(text) if len(text) <= 80 else repr(text[:76]) + "..."
        reason = "it is empty" if not text else f"{shown} is not 64 hex digits"
        if text.startswith(PREFIX):
            reason += f" (this API takes ids without the {PREFIX!r} prefix)"
        raise errors.InvalidBlobId(f"invalid blob_id: {reason}")
    return BlobId(PREFIX + text.lower())


def _get_blob_reply(info: BlobInfo, content: bytes) -> bytes:
    """GetBlobResponse in protobuf wire format: `content` (field 1 or 6), then the rest.

    Built by hand like blobstore.v1's Get reply: one join instead of a message
    that copies the content in and out again.
    """
    fields = [
        content,
        _string(2, _TYPE_NAMES[info.blob_type]),
        _string(3, hex_digest(info.blob_id)),
    ]
    if info.metadata.filename is not None:
        fields.append(_string(4, info.metadata.filename))
    content_type = content_type_of(info.blob_type, info.metadata)
    if content_type is not None:
        fields.append(_string(5, content_type))
    return b"".join(fields)


def _string(field: int, text: str) -> bytes:
    raw = text.encode()
    return bytes((field << 3 | 2,)) + _varint(len(raw)) + raw


def _json_value(blob: Blob) -> bytes:
    """The stored JSON as the wire bytes of a google.protobuf.Value."""
    encoded = encode_json_text(blob.data)
    if encoded is not None:
        return encoded
    value = struct_pb2.Value()  # integers past 64 bits: orjson cannot read them
    try:
        json_format.Parse(blob.data, value)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(
            f"blob {hex_digest(blob.info.blob_id)} cannot be sent as a protobuf Value ({exc})"
        ) from None
    return value.SerializeToString()
