"""Stepflow's names for the store's blob types, shared by stepflow.v1 and the REST routes.

Stepflow spells types "data", "flow" and "binary" (lowercase; "" means "data"
on input); the store's BlobType is the same three. Both of Stepflow's APIs
that we serve - gRPC stepflow.v1 (grpc/stepflow_servicer.py) and REST
(jsonrpc_bridge/rest_routes.py) - take their names from here, so they cannot
drift apart. See docs/stepflow.md.
"""

from __future__ import annotations

from blobstore import errors
from blobstore.model import BlobType

DATA, FLOW, BINARY = "data", "flow", "binary"
OCTET_STREAM = "application/octet-stream"

# Until issue 11 (the flow type) lands, a flow is kept as JSON data.
_TYPES = {"": BlobType.JSON, DATA: BlobType.JSON, FLOW: BlobType.JSON, BINARY: BlobType.BINARY}
_TYPE_NAMES = {BlobType.JSON: DATA, BlobType.BINARY: BINARY}


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
