"""What the object store's failures mean to our callers: one translation, used by every call.

obstore raises its own exceptions (NotFoundError, AlreadyExistsError, GenericError
with the HTTP status in its text...). Everything the backend does goes through
`translated()`, so the rest of the server only ever sees the store errors of
blobstore.errors, which status.py maps to gRPC in its one table:

- throttling (HTTP 429, 503 SlowDown), after obstore's own retries with backoff → Overloaded
- a full store (quota, no free volume, HTTP 507) → StorageFull
- anything else (unreachable, timed out, refused credentials, 5xx) → Unavailable
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from obstore.exceptions import NotFoundError

from blobstore.errors import BlobNotFound, BlobStoreError, Overloaded, StorageFull, Unavailable

log = logging.getLogger(__name__)

# obstore raises Python's FileNotFoundError for a missing object (its NotFoundError in places).
NOT_FOUND = (NotFoundError, FileNotFoundError)

_THROTTLED = ("SlowDown", "429 Too Many Requests", "TooManyRequests", "RequestLimitExceeded")
_FULL = (
    "QuotaExceeded",
    "507 Insufficient Storage",
    "InsufficientStorage",
    "no free volumes",
    "NoFreeVolume",
    "not enough space",
    "no space left",
)


def summary(exc: BaseException) -> str:
    """The first line of obstore's message (the rest is a Rust debug dump)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def translate(exc: Exception, blob_id: str | None = None) -> BlobStoreError:
    """The store error a failed object-store call stands for."""
    if isinstance(exc, BlobStoreError):
        return exc
    if isinstance(exc, NOT_FOUND) and blob_id is not None:
        return BlobNotFound(blob_id)
    text = str(exc)
    if any(marker in text for marker in _THROTTLED):
        return Overloaded(f"the object store is throttling requests: {summary(exc)}")
    if any(marker.lower() in text.lower() for marker in _FULL):
        return StorageFull(f"the object store is full: {summary(exc)}")
    return Unavailable(f"the object store failed: {summary(exc)}")


@contextmanager
def translated(blob_id: str | None = None) -> Iterator[None]:
    """Runs a block of object-store calls; what they raise comes out as a store error."""
    try:
        yield
    except BlobStoreError:
        raise
    except Exception as exc:
        error = translate(exc, blob_id)
        if not isinstance(error, BlobNotFound):
            log.warning("object store call failed: %s", summary(exc))
        raise error from None
