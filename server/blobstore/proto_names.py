"""Names and enum mappings of the blobstore.v1 protocol, shared by client, server and bridge.

Looked up once from the generated descriptors, so no module spells the
service's name or maps BlobType to its protobuf enum on its own.
"""

from __future__ import annotations

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.model import BlobType

SERVICE = pb.DESCRIPTOR.services_by_name["BlobService"]
SERVICE_NAME: str = SERVICE.full_name
"""`blobstore.v1.BlobService`: for health checks, reflection and method paths."""

BLOB_TYPE_TO_PB: dict[BlobType, pb.BlobType.ValueType] = {
    BlobType.JSON: pb.BLOB_TYPE_JSON,
    BlobType.BINARY: pb.BLOB_TYPE_BINARY,
}
BLOB_TYPE_FROM_PB: dict[pb.BlobType.ValueType, BlobType] = {
    value: key for key, value in BLOB_TYPE_TO_PB.items()
}
