"""Plain values shared by the store, its backends and its transports."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from blobstore.errors import InvalidArgument
from blobstore.ids import BlobId


class BlobType(enum.Enum):
    """What a blob holds; first stored type wins, like the metadata.

    Json and Flow blobs both hold a JSON value, stored as its canonical (RFC 8785)
    text and hashed as such; Flow marks a workflow definition (Stepflow's "flow"
    blob type) and is kept apart so it reads back as a flow.
    """

    JSON = "Json"
    FLOW = "Flow"
    BINARY = "Binary"

    @property
    def holds_json(self) -> bool:
        """True for types whose content is canonical JSON text."""
        return self is not BlobType.BINARY


MAX_FILENAME_BYTES = 1024
MAX_CONTENT_TYPE_BYTES = 255


@dataclass(frozen=True, slots=True)
class BlobMetadata:
    """Optional facts about a blob given by its first writer: a file name and a media type.

    Not part of the id (equal content has one id whatever it is called); stored with
    the blob and returned with it. Later puts of the same content keep the first
    writer's metadata, as they keep its type.
    """

    filename: str | None = None
    content_type: str | None = None

    def __bool__(self) -> bool:
        return self.filename is not None or self.content_type is not None

    @classmethod
    def checked(cls, filename: str | None = None, content_type: str | None = None) -> BlobMetadata:
        """Metadata from a request: empty strings mean not given; raises InvalidArgument."""
        return cls(
            _checked_text("filename", filename or None, MAX_FILENAME_BYTES),
            _checked_text("content_type", content_type or None, MAX_CONTENT_TYPE_BYTES),
        )


NO_METADATA = BlobMetadata()


def _checked_text(field: str, value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"{field} is not valid UTF-8 (it has a lone surrogate)") from None
    if size > limit:
        raise InvalidArgument(f"{field} is {size} bytes in UTF-8; at most {limit} are allowed")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InvalidArgument(f"{field} must not contain control characters: {value[:80]!r}")
    return value


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob's metadata."""

    blob_id: BlobId
    blob_type: BlobType
    size: int
    metadata: BlobMetadata = NO_METADATA


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
