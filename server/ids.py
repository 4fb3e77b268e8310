"""Blob ids: parsing, validation and formatting of "sha256:<64 lowercase hex>".

Ids are validated before anything else touches them, so an id never reaches a
file-system path unless it is exactly 64 lowercase hex digits.
"""

from __future__ import annotations

import re
from typing import NewType

from server.errors import InvalidBlobId

PREFIX = "sha256:"
HEX_LENGTH = 64

BlobId = NewType("BlobId", str)
"""A validated id in canonical form: "sha256:" + 64 lowercase hex digits."""

_HEX = re.compile(r"[0-9a-f]{64}")


def parse_blob_id(text: str) -> BlobId:
    """Returns the canonical form of `text`, which may also be bare 64 hex.

    Raises InvalidBlobId for anything else (upper-case hex, other algorithms,
    paths, wrong length), naming what was wrong.
    """
    digest = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    if _HEX.fullmatch(digest) is None:
        raise InvalidBlobId(_explain(text, digest))
    return BlobId(PREFIX + digest)


def blob_id_from_digest(hexdigest: str) -> BlobId:
    """Wraps a hashlib hexdigest (always lowercase, 64 chars) as a BlobId."""
    return BlobId(PREFIX + hexdigest)


def hex_digest(blob_id: BlobId) -> str:
    """The 64-hex part of a validated id."""
    return blob_id[len(PREFIX) :]


def _explain(text: str, digest: str) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    if not text:
        reason = "it is empty"
    elif ":" in digest:
        reason = "only the sha256 algorithm is supported"
    elif len(digest) != HEX_LENGTH:
        reason = f"the digest has {len(digest)} characters, not {HEX_LENGTH}"
    elif re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        reason = "hex digits must be lowercase"
    else:
        reason = "the digest must be hex digits 0-9 a-f"
    return f"invalid blob id {shown!r}: {reason}; expected 'sha256:' + 64 lowercase hex digits"
