"""The errors the blob store raises, independent of any transport.

Each error says what went wrong in words a caller can act on. Transports map
them to their own codes in one table each (server/blobstore/status.py for gRPC,
jsonrpc_bridge/errors.py for JSON-RPC); nothing else inspects them.
"""

from __future__ import annotations


class BlobStoreError(Exception):
    """Base class of every error the store reports to a caller."""

    blob_id: str | None = None
    # The google.rpc.ErrorInfo reason the server gave, when the error came from one
    # (status.from_rpc_error): finer than the class, e.g. for refused credentials.
    reason: str | None = None


class InvalidArgument(BlobStoreError):
    """The request itself is wrong: a bad id, type, size or chunk sequence."""


class InvalidBlobId(InvalidArgument):
    """A blob id is not "sha256:<64 lowercase hex>" or bare 64 hex."""


class InvalidJson(InvalidArgument):
    """JSON content cannot be canonicalised (syntax, NaN, duplicate key, bad UTF-8...)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"{message} (at byte {position})")
        self.position = position

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled in the JSON worker process (offload.py): keep the message as it is.
        return (_invalid_json, (str(self), self.position))


def _invalid_json(text: str, position: int | None) -> InvalidJson:
    error = InvalidJson(text)
    error.position = position
    return error


class DigestMismatch(InvalidArgument):
    """The content does not hash to the id the caller said it would."""


class BlobNotFound(BlobStoreError):
    """No blob with the given id is stored."""

    def __init__(self, blob_id: str, message: str | None = None) -> None:
        super().__init__(message or f"blob {blob_id} not found")
        self.blob_id = blob_id


class BlobTooLarge(BlobStoreError):
    """The blob is larger than a configured limit."""


class StorageFull(BlobStoreError):
    """The storage medium has no space left (ENOSPC, EDQUOT, EFBIG)."""


class DataLoss(BlobStoreError):
    """Stored data no longer matches its id; the copy has been quarantined."""

    def __init__(self, blob_id: str, detail: str = "", message: str | None = None) -> None:
        super().__init__(
            message or f"blob {blob_id} is corrupt on the server ({detail}); it was quarantined"
        )
        self.blob_id = blob_id


class Unavailable(BlobStoreError):
    """The store cannot serve now (I/O error, shutting down); retrying may succeed."""


class Overloaded(BlobStoreError):
    """The server is at its configured limit of concurrent work; retry later."""


class UseStreaming(BlobStoreError):
    """The blob is too large for a single-message reply; the streaming call is needed."""


class Unauthenticated(BlobStoreError):
    """The call has no valid credentials (no token, an unknown or revoked one)."""


class InvalidCredentials(Unauthenticated):
    """Credentials were presented and are wrong (a malformed header, an unknown or revoked
    token, a JWT that does not verify): a failed attempt, counted per peer (brute force)."""


class PermissionDenied(BlobStoreError):
    """The caller is known but its scopes do not include what the call needs."""
