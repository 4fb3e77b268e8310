"""Blob ids: parsing, validation and formatting of "sha256:<64 lowercase hex>".

Ids are validated before anything else touches them, so an id never reaches a
file-system path unless it is exactly 64 lowercase hex digits. The rules are
specified in docs/blob-ids.md.
"""

from __future__ import annotations

import re
from typing import NewType

from blobstore.errors import InvalidBlobId

PREFIX = "sha256:"
HEX_LENGTH = 64

BlobId = NewType("BlobId", str)
"""A validated id in canonical form: "sha256:" + 64 lowercase hex digits."""

# An explicit ASCII class: \d and str.isdigit() would let other scripts' digits in.
_HEX = re.compile(r"[0-9a-f]{64}")
_ANY_CASE_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9_-]*:")


def parse_blob_id(text: str) -> BlobId:
    """Returns the canonical form of `text`, which may also be bare 64 hex.

    Raises InvalidBlobId for anything else (upper-case hex, other algorithms,
    paths, wrong length, white space), naming what was wrong.
    """
    if not isinstance(text, str):
        raise InvalidBlobId(
            f"invalid blob id: expected a string, got {type(text).__name__}; {_EXPECTED}"
        )
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


_EXPECTED = "expected 'sha256:' + 64 lowercase hex digits (or the 64 digits alone)"


def _explain(text: str, digest: str) -> str:
    shown = repr(text)  # quoted, with control characters escaped
    if len(shown) > 90:
        shown = shown[:86] + "...'"
    return f"invalid blob id {shown}: {_reason(text, digest)}; {_EXPECTED}"


def _reason(text: str, digest: str) -> str:
    if not text:
        return "it is empty"
    if any(char.isspace() for char in text):
        return "it contains white space"
    if not text.isprintable():
        return "it contains a control or otherwise unprintable character"
    if not text.startswith(PREFIX) and text.lower().startswith(PREFIX):
        return f"the prefix must be lowercase {PREFIX!r}"
    if digest.startswith(PREFIX):
        return f"the prefix {PREFIX!r} is repeated"
    if "/" in text or "\\" in text or text.startswith("."):
        return "it looks like a path; an id is a digest, never a file name"
    algorithm = _ALGORITHM.match(digest)
    if algorithm:
        return f"the algorithm {algorithm.group()[:-1]!r} is not supported, only sha256"
    if len(digest) != HEX_LENGTH:
        return f"the digest has {len(digest)} characters, not {HEX_LENGTH}"
    if _ANY_CASE_HEX.fullmatch(digest):
        return "hex digits must be lowercase"
    return "the digest must be hex digits 0-9 a-f"


def parse_bare_id(text: str) -> BlobId:
    """A Stepflow id (stepflow.v1, its REST routes): exactly 64 hex digits, either case.

    Returns the canonical form; raises InvalidBlobId for anything else, the
    "sha256:" prefix included (Stepflow's ids are bare, and its SDK only
    recognises bare ones). See docs/stepflow.md.
    """
    if _ANY_CASE_HEX.fullmatch(text) is None:
        shown = repr(text) if len(text) <= 80 else repr(text[:76]) + "..."
        reason = "it is empty" if not text else f"{shown} is not 64 hex digits"
        if text.startswith(PREFIX):
            reason += f" (Stepflow ids have no {PREFIX!r} prefix)"
        raise InvalidBlobId(f"invalid blob_id: {reason}")
    return BlobId(PREFIX + text.lower())
