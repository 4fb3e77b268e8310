"""Names and mappings of the blobstore.v1 protocol, shared by client, server and bridge.

Looked up once from the generated descriptors, so no module spells the
service's name, maps BlobType to its protobuf enum or reads the optional
metadata fields on its own.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypedDict

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.model import NO_META, BlobMeta, BlobType

SERVICE = pb.DESCRIPTOR.services_by_name["BlobService"]
SERVICE_NAME: str = SERVICE.full_name
"""`blobstore.v1.BlobService`: for health checks, reflection and method paths."""

BLOB_TYPE_TO_PB: dict[BlobType, pb.BlobType.ValueType] = {
    BlobType.JSON: pb.BLOB_TYPE_JSON,
    BlobType.BINARY: pb.BLOB_TYPE_BINARY,
    BlobType.FLOW: pb.BLOB_TYPE_FLOW,
}
BLOB_TYPE_FROM_PB: dict[pb.BlobType.ValueType, BlobType] = {
    value: key for key, value in BLOB_TYPE_TO_PB.items()
}


class _HasMeta(Protocol):
    """A blobstore.v1 message with the optional `filename` and `content_type` fields (or
    what reads as one: grpc/wire.JsonPutRequest)."""

    @property
    def filename(self) -> str: ...

    @property
    def content_type(self) -> str: ...

    def HasField(self, name: Literal["filename", "content_type"], /) -> bool: ...


def meta_from_pb(message: _HasMeta) -> BlobMeta:
    """The metadata a message carries; an unset or empty field is None."""
    filename = message.filename if message.HasField("filename") else ""
    content_type = message.content_type if message.HasField("content_type") else ""
    if not filename and not content_type:
        return NO_META
    return BlobMeta(filename or None, content_type or None)


class MetaFields(TypedDict, total=False):
    """The metadata fields of a message, as keyword arguments of its constructor."""

    filename: str
    content_type: str


def meta_to_pb(meta: BlobMeta) -> MetaFields:
    """The metadata as keyword arguments of a message's constructor (only the fields set)."""
    fields = MetaFields()
    if meta.filename is not None:
        fields["filename"] = meta.filename
    if meta.content_type is not None:
        fields["content_type"] = meta.content_type
    return fields
