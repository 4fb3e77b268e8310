"""The one table between store errors and gRPC status, used by server and client.

The server sends the gRPC code, a message for people, and a google.rpc.ErrorInfo
(domain "blobstore.v1", a reason such as BLOB_TOO_LARGE; metadata "blob_id"
and, for INVALID_JSON, "position", the byte offset) in the standard
grpc-status-details-bin trailer, so programs - our client and the bridge -
tell apart errors that share a code (too large vs disk full vs overloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from blobstore import errors
from blobstore.logs import REQUEST_ID_KEY, request_id

DOMAIN = "blobstore.v1"
DETAILS_KEY = "grpc-status-details-bin"

# Most specific first: the first row whose class matches wins.
TABLE: list[tuple[type[errors.BlobStoreError], grpc.StatusCode, str]] = [
    (errors.InvalidBlobId, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BLOB_ID"),
    (errors.InvalidJson, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON"),
    (errors.DigestMismatch, grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH"),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (errors.BlobNotFound, grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND"),
    (errors.BlobTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, "BLOB_TOO_LARGE"),
    (errors.StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL"),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED"),
    (errors.UseStreaming, grpc.StatusCode.FAILED_PRECONDITION, "USE_STREAMING"),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS, "DATA_LOSS"),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
]

_BY_REASON = {reason: cls for cls, _, reason in TABLE}
# When a reply has no ErrorInfo (another server, a proxy, grpc itself), the code decides.
_BY_CODE: dict[grpc.StatusCode, type[errors.BlobStoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.BlobNotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.FAILED_PRECONDITION: errors.UseStreaming,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
}


class RemoteError(errors.BlobStoreError):
    """An error from the server that the table does not know (INTERNAL, UNKNOWN...)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def to_status(
    error: errors.BlobStoreError,
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]:
    """Returns (code, message, trailing metadata) to send for `error`: the error details
    and, within a call, its request id (blobstore/logs.py)."""
    code, reason = next(
        ((c, r) for cls, c, r in TABLE if isinstance(error, cls)),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    )
    metadata = {}
    if error.blob_id:
        metadata["blob_id"] = error.blob_id
    if isinstance(error, errors.InvalidJson) and error.position is not None:
        metadata["position"] = str(error.position)
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    message = str(error)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    trailers: tuple[tuple[str, str | bytes], ...] = ((DETAILS_KEY, status.SerializeToString()),)
    # abort() sends these at once, replacing the call's trailing metadata: keep its id.
    if (rid := request_id.get()) is not None:
        trailers += ((REQUEST_ID_KEY, rid),)
    return code, message, trailers


def from_rpc_error(exc: grpc.RpcError) -> errors.BlobStoreError:
    """Turns a failed call (sync or asyncio) into the store's error, for clients."""
    code: grpc.StatusCode = exc.code()
    message: str = exc.details() or code.name
    info = _error_info(exc)
    # A reason this client does not know (a newer server's) falls back to the status code.
    cls = (_BY_REASON.get(info.reason) if info is not None else None) or _BY_CODE.get(code)
    if cls is None:
        return RemoteError(code, message)
    error = _error_of(cls, code, message, info)
    if info is not None:
        error.reason = info.reason
    return error


def _error_of(
    cls: type[errors.BlobStoreError],
    code: grpc.StatusCode,
    message: str,
    info: error_details_pb2.ErrorInfo | None,
) -> errors.BlobStoreError:
    blob_id = info.metadata.get("blob_id", "") if info is not None else ""
    if cls is errors.BlobNotFound:
        return errors.BlobNotFound(blob_id, message)
    if cls is errors.DataLoss:
        return errors.DataLoss(blob_id, message=message)
    error = cls(message)
    if isinstance(error, errors.InvalidJson) and info is not None and "position" in info.metadata:
        error.position = int(info.metadata["position"])
    return error


def reason_of(exc: grpc.RpcError) -> str | None:
    """The ErrorInfo reason our server put in a failed call's status (None if there is none)."""
    info = _error_info(exc)
    return info.reason if info is not None else None


def _error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    trailers = cast(Sequence[tuple[str, bytes]], exc.trailing_metadata() or ())
    for key, value in trailers:
        if key != DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN:
                return info
    return None
