"""The names of objects under the backend's prefix.

    <64 hex>                       a blob, named by its id's digest
    tmp/<random>                   a streamed put's upload, until it is published
    quarantine/<64 hex>.<ns>       a copy found corrupt, moved out of service

Blob names are exactly 64 lowercase hex characters, so nothing else under the
prefix is ever mistaken for a blob.
"""

from __future__ import annotations

import re
import time
import uuid

from blobstore.ids import BlobId, hex_digest

TEMP_PREFIX = "tmp/"
QUARANTINE_PREFIX = "quarantine/"
_BLOB_NAME = re.compile(r"[0-9a-f]{64}")


def blob_key(blob_id: BlobId) -> str:
    return hex_digest(blob_id)


def is_blob_key(key: str) -> bool:
    return _BLOB_NAME.fullmatch(key) is not None


def temp_key() -> str:
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}"


def quarantine_key(blob_id: BlobId) -> str:
    return f"{QUARANTINE_PREFIX}{hex_digest(blob_id)}.{time.time_ns()}"
