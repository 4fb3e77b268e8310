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
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from blobstore import errors
from blobstore.api.stepflow.v1 import blobs_pb2 as pb
from blobstore.api.stepflow.v1 import blobs_pb2_grpc as pb_grpc
from blobstore.grpc.servicer import _translate_errors, _value_to_python
from blobstore.ids import PREFIX, BlobId, hex_digest
from blobstore.model import Blob, BlobMetadata, BlobType
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

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_BlobServiceServicer_to_server(self, server)

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
            value = await offload(size, _value_to_python, request.json_data)
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
    async def GetBlob(
        self,
        request: pb.GetBlobRequest,
        context: Any,
        reserve: Callable[[int], object] | None = None,
    ) -> pb.GetBlobResponse:
        """`reserve(size)`, from the guard, is called before the blob's content is read."""
        blob = await self._store.get(parse_bare_id(request.blob_id), reserve)
        info = blob.info
        reply = pb.GetBlobResponse(
            blob_type=_TYPE_NAMES[info.blob_type], blob_id=hex_digest(info.blob_id)
        )
        if info.blob_type is BlobType.BINARY:
            reply.raw_data = blob.data
        else:
            reply.json_data.CopyFrom(await offload(len(blob.data), _json_value, blob))
        if info.metadata.filename is not None:
            reply.filename = info.metadata.filename
        content_type = content_type_of(info.blob_type, info.metadata)
        if content_type is not None:
            reply.content_type = content_type
        return reply


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


def _json_value(blob: Blob) -> struct_pb2.Value:
    value = struct_pb2.Value()
    try:
        json_format.Parse(blob.data, value)
    except json_format.ParseError as exc:
        raise errors.InvalidArgument(
            f"blob {hex_digest(blob.info.blob_id)} cannot be sent as a protobuf Value ({exc})"
        ) from None
    return value
