"""Stepflow's names for the store's blob types, shared by stepflow.v1 and the REST routes.

Stepflow spells types "data", "flow" and "binary" (lowercase; "" means "data"
on input); the store's BlobType is the same three. Both of Stepflow's APIs
that we serve - gRPC stepflow.v1 (grpc/stepflow_servicer.py) and REST
(jsonrpc_bridge/rest_routes.py) - take their names from here, so they cannot
drift apart. See docs/stepflow.md.
"""

from __future__ import annotations

from blobstore import errors
from blobstore.model import BlobMeta, BlobType

DATA, FLOW, BINARY = "data", "flow", "binary"
OCTET_STREAM = "application/octet-stream"

_TYPE_NAMES = {BlobType.JSON: DATA, BlobType.FLOW: FLOW, BlobType.BINARY: BINARY}
_TYPES = {"": BlobType.JSON, **{name: blob_type for blob_type, name in _TYPE_NAMES.items()}}


def blob_type_of(name: object) -> BlobType:
    """The store's type for a Stepflow type name ("" is "data"); InvalidArgument otherwise."""
    try:
        return _TYPES[name]  # type: ignore[index]  # anything unhashable or absent: below
    except (KeyError, TypeError):
        shown = repr(name)[:40]
        raise errors.InvalidArgument(
            f"unknown blob_type {shown}: use 'data', 'flow' or 'binary'"
        ) from None


def type_name(blob_type: BlobType) -> str:
    """Stepflow's name of a stored blob's type."""
    return _TYPE_NAMES[blob_type]


def content_type_of(blob_type: BlobType, meta: BlobMeta) -> str | None:
    """The content type Stepflow reports: the stored one, else octet-stream for a named file.

    Stepflow's own service answers application/octet-stream for a binary blob
    stored with a filename and no type; we store what was given and add that
    default only on the way out.
    """
    if meta.content_type is not None:
        return meta.content_type
    if blob_type is BlobType.BINARY and meta.filename is not None:
        return OCTET_STREAM
    return None
