"""The rules of per-blob metadata (a filename and a content type), shared by the store and
the bridge: the store enforces them on every put; the bridge checks a filename before it
calls the service, so its error names the JSON-RPC param."""

from __future__ import annotations

from blobstore.errors import InvalidArgument
from blobstore.model import BlobMeta

MAX_FILENAME_BYTES = 1024
"""Longest filename kept with a blob, in UTF-8 bytes (a path, not a document)."""
MAX_CONTENT_TYPE_CHARS = 255
"""Longest content type: RFC 6838 caps type and subtype at 127 characters each."""


def check_meta(meta: BlobMeta) -> BlobMeta:
    """The metadata as stored: empty fields become None; InvalidArgument if a field is unfit.

    A filename is any text without control characters, up to MAX_FILENAME_BYTES;
    a content type is printable ASCII (a media type, perhaps with parameters).
    Both travel in HTTP headers and terminals elsewhere, hence no control characters.
    """
    filename = meta.filename or None
    content_type = meta.content_type or None
    if filename is not None:
        try:
            size = len(filename.encode())
        except UnicodeEncodeError:
            raise InvalidArgument("filename is not valid Unicode (a lone surrogate)") from None
        if size > MAX_FILENAME_BYTES:
            raise InvalidArgument(
                f"filename is {size} UTF-8 bytes, over the limit of {MAX_FILENAME_BYTES}"
            )
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in filename):
            raise InvalidArgument("filename must not contain control characters")
    if content_type is not None:
        if len(content_type) > MAX_CONTENT_TYPE_CHARS:
            raise InvalidArgument(
                f"content_type is {len(content_type)} characters, over the limit of "
                f"{MAX_CONTENT_TYPE_CHARS}"
            )
        if not all(0x20 <= ord(c) < 0x7F for c in content_type):
            raise InvalidArgument(
                "content_type must be printable ASCII, a media type such as application/pdf"
            )
    if filename is meta.filename and content_type is meta.content_type:
        return meta
    return BlobMeta(filename, content_type)
