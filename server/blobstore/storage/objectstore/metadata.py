"""What a blob's object carries besides its content: type, size, filename, content type.

One place encodes and decodes them as user metadata (`x-amz-meta-blob-type`,
`-blob-size`, `-blob-filename`, `-blob-content-type` on S3), for both ways an
object is written: attributes of a put, and the headers of the copy that
publishes a streamed put. Filenames and content types are percent-encoded
(S3 metadata is ASCII, and HTTP trims spaces at the ends of header values); a
content type is also the object's own Content-Type, for direct downloads.

An object whose metadata is missing or disagrees with its length is visibly
broken: DataLoss, and the VerifyingBackend quarantines it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from blobstore.errors import DataLoss
from blobstore.ids import BlobId
from blobstore.model import NO_META, BlobInfo, BlobMeta, BlobType

if TYPE_CHECKING:
    from obstore import Attributes

TYPE_KEY = "blob-type"
SIZE_KEY = "blob-size"
FILENAME_KEY = "blob-filename"
CONTENT_TYPE_KEY = "blob-content-type"
_SAFE = "/;=+-._~"
S3_META_PREFIX = "x-amz-meta-"


def encode(blob_type: BlobType, size: int | None, meta: BlobMeta = NO_META) -> dict[str, str]:
    """The metadata of a blob, as obstore attribute names (user metadata keys); without a
    size when it is not known before the content (an upload in place of an undeclared size)."""
    attributes = {TYPE_KEY: blob_type.value}
    if size is not None:
        attributes[SIZE_KEY] = str(size)
    if meta.filename is not None:
        attributes[FILENAME_KEY] = quote(meta.filename, safe=_SAFE)
    if meta.content_type is not None:
        attributes[CONTENT_TYPE_KEY] = quote(meta.content_type, safe=_SAFE)
        attributes["Content-Type"] = meta.content_type
    return attributes


def as_copy_headers(attributes: dict[str, str]) -> dict[str, str]:
    """The same metadata as the headers of an S3 copy that replaces the source's metadata."""
    headers = {"x-amz-metadata-directive": "REPLACE"}
    for key, value in attributes.items():
        headers[key if key == "Content-Type" else S3_META_PREFIX + key] = value
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
    filename, content_type = attributes.get(FILENAME_KEY), attributes.get(CONTENT_TYPE_KEY)
    meta = BlobMeta(
        filename=None if filename is None else unquote(filename),
        content_type=None if content_type is None else unquote(content_type),
    )
    return BlobInfo(blob_id, blob_type, length, meta or NO_META)
