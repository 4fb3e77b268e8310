"""What a blob's object carries besides its content: the type and size, as user metadata.

One place encodes and decodes them (`x-amz-meta-blob-type`, `x-amz-meta-blob-size`
on S3), for both ways an object is written: attributes of a put, and the
headers of the copy that publishes a streamed put. An object whose metadata is
missing or disagrees with its length is visibly broken: DataLoss, and the
VerifyingBackend quarantines it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blobstore.errors import DataLoss
from blobstore.ids import BlobId
from blobstore.model import BlobInfo, BlobType

if TYPE_CHECKING:
    from obstore import Attributes

TYPE_KEY = "blob-type"
SIZE_KEY = "blob-size"
S3_META_PREFIX = "x-amz-meta-"


def encode(blob_type: BlobType, size: int) -> dict[str, str]:
    """The metadata of a blob, as obstore attribute names (user metadata keys)."""
    return {TYPE_KEY: blob_type.value, SIZE_KEY: str(size)}


def as_copy_headers(attributes: dict[str, str]) -> dict[str, str]:
    """The same metadata as the headers of an S3 copy that replaces the source's metadata."""
    headers = {"x-amz-metadata-directive": "REPLACE"}
    headers.update((S3_META_PREFIX + key, value) for key, value in attributes.items())
    return headers


def decode(blob_id: BlobId, attributes: Attributes, length: int) -> BlobInfo:
    """The blob's BlobInfo from its object's attributes and length; DataLoss if broken."""
    type_value = attributes.get(TYPE_KEY)
    try:
        blob_type = BlobType(type_value)
    except ValueError:
        detail = f"object has no valid {TYPE_KEY} metadata ({type_value!r})"
        raise DataLoss(blob_id, detail) from None
    size_value = attributes.get(SIZE_KEY)
    if size_value is not None and size_value != str(length):
        raise DataLoss(blob_id, f"object is {length} bytes, its metadata says {size_value}")
    return BlobInfo(blob_id, blob_type, length)
