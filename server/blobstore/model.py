"""Plain values shared by the store, its backends and its transports."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from blobstore.ids import BlobId


class BlobType(enum.Enum):
    """What a blob holds; the value is how messages and the CLI's JSON spell it.

    Transports name types in their own words (blobstore.v1's enum, the bridge's
    "data"/"flow"/"binary"), each from a table of its own.
    """

    JSON = "Json"
    BINARY = "Binary"
    FLOW = "Flow"
    """A workflow definition: JSON, stored and hashed exactly like JSON, but a type of its own."""

    @property
    def is_json(self) -> bool:
        """True for the types whose content is canonical JSON text (Json and Flow)."""
        return self is not BlobType.BINARY


@dataclass(frozen=True, slots=True)
class BlobMeta:
    """Optional metadata stored with a blob; not part of its content or id.

    Kept from the put that stored the blob (first writer wins, like the type).
    The store checks both fields (store.py, check_meta); None means not given.
    """

    filename: str | None = None
    content_type: str | None = None

    def __bool__(self) -> bool:
        return self.filename is not None or self.content_type is not None


NO_META = BlobMeta()


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob's metadata."""

    blob_id: BlobId
    blob_type: BlobType
    size: int
    meta: BlobMeta = NO_META


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
