"""Stepflow's `stepflow.v1.BlobService` (PutBlob, GetBlob) over the same BlobStore.

A thin adapter beside blobstore.v1's servicer (servicer.py): it decodes
Stepflow's messages, calls the same store (so the same durability,
verification, limits and, through the guard, admission and overload
behaviour) and encodes Stepflow's replies. Errors go through the same table
(server/blobstore/status.py) and so carry the same google.rpc.ErrorInfo details.

What differs is only the wire form: ids are the bare 64 lowercase hex digits
(upper case accepted on input, anything else INVALID_ARGUMENT, as Stepflow's own
service does: ids.parse_bare_id), types are Stepflow's strings
(stepflow_names.py), and JSON travels as a google.protobuf.Value, converted by
stepflow_wire.py. See docs/stepflow.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from blobstore import errors
from blobstore.api.stepflow.v1 import blobs_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2_grpc as pb_grpc
from blobstore.grpc.servicer import translate_errors
from blobstore.grpc.stepflow_wire import (
    encode_json_text,
    get_blob_reply,
    json_content,
    raw_content,
    to_python,
)
from blobstore.ids import BlobId, hex_digest, parse_bare_id
from blobstore.model import Blob, BlobMeta, BlobType
from blobstore.offload import offload
from blobstore.stepflow_names import blob_type_of, content_type_of, type_name
from blobstore.store import BlobStore

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["BlobService"].full_name
"""`stepflow.v1.BlobService`: for health checks, reflection and the guard."""


class StepflowBlobServicer(pb_grpc.BlobServiceServicer):
    """Implements stepflow.v1.BlobService over a BlobStore."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._values = EncodedValues()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers the service; GetBlob's replies come encoded (stepflow_wire.get_blob_reply)."""
        handlers = {
            "PutBlob": grpc.unary_unary_rpc_method_handler(
                self.PutBlob,
                request_deserializer=pb.PutBlobRequest.FromString,
                response_serializer=pb.PutBlobResponse.SerializeToString,
            ),
            "GetBlob": grpc.unary_unary_rpc_method_handler(
                self.GetBlob,
                request_deserializer=pb.GetBlobRequest.FromString,
                response_serializer=bytes,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]

    @translate_errors
    async def PutBlob(self, request: pb.PutBlobRequest, context: Any) -> pb.PutBlobResponse:
        content = request.WhichOneof("content")
        if content is None:
            raise errors.InvalidArgument(
                "PutBlob needs content: json_data (a JSON value) or raw_data (bytes)"
            )
        blob_type = blob_type_of(request.blob_type)
        meta = BlobMeta(
            request.filename if request.HasField("filename") else None,
            request.content_type if request.HasField("content_type") else None,
        )
        if content == "raw_data":
            # Bytes are a binary blob whatever type is named: stepflow-py's
            # context.put_blob(b"...") sends raw_data with its default type "data".
            result = await self._store.put(BlobType.BINARY, request.raw_data, meta=meta)
        else:
            if blob_type is BlobType.BINARY:
                raise errors.InvalidArgument(
                    "blob_type 'binary' takes raw_data; json_data is stored as 'data' or 'flow'"
                )
            size = request.json_data.ByteSize()
            value = await offload(size, to_python, request.json_data)
            result = await self._store.put_json_value(
                value, size_hint=size, blob_type=blob_type, meta=meta
            )
        reply = pb.PutBlobResponse(blob_id=hex_digest(result.info.blob_id))
        if result.info.meta.filename is not None:
            reply.filename = result.info.meta.filename
        return reply

    @translate_errors
    async def GetBlob(  # type: ignore[override]  # the reply comes encoded
        self,
        request: pb.GetBlobRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> bytes:
        """`reserve(size)`, from the guard, is called before the blob's content is read."""
        blob = await self._store.get(parse_bare_id(request.blob_id), reserve)
        info = blob.info
        if info.blob_type is BlobType.BINARY:
            content = raw_content(blob.data)
        else:
            value = self._values.get(info.blob_id)
            if value is None:
                value = await offload(len(blob.data), _json_value, blob)
                self._values.add(info.blob_id, value)
            content = json_content(value)
        return get_blob_reply(
            content,
            type_name(info.blob_type),
            hex_digest(info.blob_id),
            info.meta.filename,
            content_type_of(info.blob_type, info.meta),
        )


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
