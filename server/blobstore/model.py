"""Plain values shared by the store, its backends and its transports."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from blobstore.ids import BlobId


class BlobType(enum.Enum):
    """What a blob holds; the value is the spelling the Stepflow protocol uses."""

    JSON = "Json"
    BINARY = "Binary"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob's metadata."""

    blob_id: BlobId
    blob_type: BlobType
    size: int


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a put did: the blob as stored, and whether this call created it."""

    info: BlobInfo
    created: bool


@dataclass(frozen=True, slots=True)
class Blob:
    """A blob read whole into memory."""

    info: BlobInfo
    data: bytes
