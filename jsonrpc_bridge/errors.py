"""The one table of JSON-RPC error codes the bridge answers with, and the error it raises.

JSON-RPC reserves -32768..-32000. The protocol's own codes (-32700, -32600,
-32601, -32602, -32603) keep the specification's messages; service errors
use the -32000..-32099 "server error" range, with -32008 for a missing blob
as the Stepflow protocol documents. Every error carries a `data` object
whose `reason` names the cause in the same words as the gRPC ErrorInfo
reasons (server/blobstore/status.py), so programs can branch on it; `detail` is the
text for people. docs/bridge.md shows this table to users: keep them equal.
Stepflow's REST routes (rest_routes.py) answer the same errors with the HTTP
status of the HTTP column.

    code    message                    reason              HTTP  cause
    -32700  Parse error                PARSE_ERROR               body is not JSON (or not UTF-8)
    -32600  Invalid Request            INVALID_REQUEST           not a JSON-RPC 2.0 request object
    -32601  Method not found           METHOD_NOT_FOUND          not blobs/put or blobs/get
    -32602  Invalid params: <field>..  INVALID_PARAMS,     400   a param is missing or wrong; the
                                       INVALID_BLOB_ID,          message names the field and why
                                       INVALID_JSON, ...
    -32603  Internal error             INTERNAL                  a bridge bug (logged, never sent)
    -32000  Blob service error         SERVICE_ERROR       502   the service failed unexpectedly
    -32001  Blob service unavailable   UNAVAILABLE         503   unreachable, stopping, or deadline
    -32002  Blob too large             BLOB_TOO_LARGE      413   over the service's size limit
    -32003  Storage full               STORAGE_FULL        507   the service's disk is full
    -32004  Blob data lost             DATA_LOSS           500   stored copy corrupt (quarantined)
    -32005  Overloaded                 OVERLOADED          503   at a concurrency limit; retry later
    -32006  Request too large          REQUEST_TOO_LARGE   413   over the bridge's request size or
                                                                 JSON value limit
    -32008  Blob not found             BLOB_NOT_FOUND      404   no blob with that id (data.blob_id)
    -32010  Unauthenticated            UNAUTHENTICATED     401   no credentials, or unknown, revoked
                                                                 or expired ones; a client
                                                                 certificate the bridge's
                                                                 identities file does not list
    -32011  Permission denied          PERMISSION_DENIED   403   the credentials (a token, or a
                                                                 client certificate's line) lack
                                                                 the scope

For refusals `data.reason` is the reason of the service's ErrorInfo (a newer server
may give a finer one than the row's); the REST routes add `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from blobstore import errors
from blobstore.status import RemoteError
from jsonrpc_bridge import auth_failures

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVICE_ERROR = -32000
UNAVAILABLE = -32001
BLOB_TOO_LARGE = -32002
STORAGE_FULL = -32003
DATA_LOSS = -32004
OVERLOADED = -32005
REQUEST_TOO_LARGE = -32006
BLOB_NOT_FOUND = -32008
UNAUTHENTICATED = -32010
PERMISSION_DENIED = -32011


@dataclass(frozen=True, slots=True)
class ServiceErrorRow:
    """How one class of store error appears to a JSON-RPC client."""

    error: type[errors.BlobStoreError]
    code: int
    message: str
    reason: str
    retryable: bool
    http_status: int


# Most specific first: the first row whose class matches wins.
SERVICE_ERRORS: tuple[ServiceErrorRow, ...] = (
    ServiceErrorRow(
        errors.BlobNotFound, BLOB_NOT_FOUND, "Blob not found", "BLOB_NOT_FOUND", False, 404
    ),
    ServiceErrorRow(
        errors.Unavailable, UNAVAILABLE, "Blob service unavailable", "UNAVAILABLE", True, 503
    ),
    ServiceErrorRow(
        errors.BlobTooLarge, BLOB_TOO_LARGE, "Blob too large", "BLOB_TOO_LARGE", False, 413
    ),
    ServiceErrorRow(errors.StorageFull, STORAGE_FULL, "Storage full", "STORAGE_FULL", True, 507),
    ServiceErrorRow(errors.DataLoss, DATA_LOSS, "Blob data lost", "DATA_LOSS", False, 500),
    ServiceErrorRow(errors.Overloaded, OVERLOADED, "Overloaded", "OVERLOADED", True, 503),
    ServiceErrorRow(
        errors.Unauthenticated, UNAUTHENTICATED, "Unauthenticated", "UNAUTHENTICATED", False, 401
    ),
    ServiceErrorRow(
        errors.PermissionDenied,
        PERMISSION_DENIED,
        "Permission denied",
        "PERMISSION_DENIED",
        False,
        403,
    ),
)

_INVALID_REASONS: tuple[tuple[type[errors.InvalidArgument], str], ...] = (
    (errors.InvalidBlobId, "INVALID_BLOB_ID"),
    (errors.InvalidJson, "INVALID_JSON"),
    (errors.DigestMismatch, "DIGEST_MISMATCH"),
)


class RpcError(Exception):
    """A JSON-RPC error object to send: code, message and a `data` object."""

    def __init__(self, code: int, message: str, data: dict[str, object]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "data": self.data}


def parse_error(detail: str) -> RpcError:
    return RpcError(PARSE_ERROR, "Parse error", {"reason": "PARSE_ERROR", "detail": detail})


def invalid_request(detail: str) -> RpcError:
    return RpcError(
        INVALID_REQUEST, "Invalid Request", {"reason": "INVALID_REQUEST", "detail": detail}
    )


def method_not_found(method: str) -> RpcError:
    return RpcError(
        METHOD_NOT_FOUND,
        "Method not found",
        {
            "reason": "METHOD_NOT_FOUND",
            "method": clip(method),
            "detail": "the methods are blobs/put and blobs/get",
        },
    )


def invalid_params(field: str, why: str, reason: str = "INVALID_PARAMS") -> RpcError:
    field = clip(field, 200)
    return RpcError(
        INVALID_PARAMS,
        f"Invalid params: {field}: {clip(why, 500)}",
        {"reason": reason, "field": field},
    )


def internal_error() -> RpcError:
    return RpcError(
        INTERNAL_ERROR,
        "Internal error",
        {"reason": "INTERNAL", "detail": "the bridge failed; the cause is in its log"},
    )


def request_too_large(limit: int) -> RpcError:
    return RpcError(
        REQUEST_TOO_LARGE,
        "Request too large",
        {
            "reason": "REQUEST_TOO_LARGE",
            "limit_bytes": limit,
            "detail": f"requests larger than {limit} bytes are refused",
        },
    )


def request_too_large_values(count: int, limit: int) -> RpcError:
    return RpcError(
        REQUEST_TOO_LARGE,
        "Request too large",
        {
            "reason": "REQUEST_TOO_LARGE",
            "limit_values": limit,
            "detail": f"the body holds about {count} JSON values; bodies of more than {limit} "
            "values are refused before they are parsed (--max-json-values)",
        },
    )


def bad_authorization() -> RpcError:
    """The caller's Authorization header cannot be a credential (not printable ASCII)."""
    return unauthenticated(BAD_AUTHORIZATION)


def unauthenticated(detail: str) -> RpcError:
    """The bridge itself refuses the caller (a client certificate without a line)."""
    return RpcError(
        UNAUTHENTICATED,
        "Unauthenticated",
        {"reason": "UNAUTHENTICATED", "detail": clip(detail, 500), "retryable": False},
    )


BAD_AUTHORIZATION = (
    "the Authorization header is not a usable credential (printable ASCII, at most 8 KiB)"
)


def from_store_error(exc: errors.BlobStoreError, field: str) -> RpcError:
    """Translates an error of the store (raised by the client) for a JSON-RPC client.

    `field` names the parameter an InvalidArgument is about.
    """
    auth_failures.note(exc)  # an UNAUTHENTICATED answer counts against the HTTP caller
    if isinstance(exc, errors.InvalidArgument):
        reason = next((r for cls, r in _INVALID_REASONS if isinstance(exc, cls)), "INVALID_PARAMS")
        return invalid_params(field, str(exc), reason)
    for row in SERVICE_ERRORS:
        if isinstance(exc, row.error):
            data: dict[str, object] = {"reason": exc.reason or row.reason}
            if exc.blob_id:
                data["blob_id"] = exc.blob_id
            data["detail"] = clip(str(exc), 500)
            data["retryable"] = row.retryable
            return RpcError(row.code, row.message, data)
    data = {"reason": "SERVICE_ERROR", "detail": clip(str(exc), 500)}
    if isinstance(exc, RemoteError):
        data["grpc_code"] = exc.code.name
    return RpcError(SERVICE_ERROR, "Blob service error", data)


def http_error(exc: errors.BlobStoreError) -> tuple[int, str, bool]:
    """(HTTP status, reason, retryable) of a store error, from the same rows, for REST.

    An InvalidArgument (a malformed id or value) is 400 with the reason the
    JSON-RPC side gives it; errors no row knows are 502 SERVICE_ERROR.
    """
    auth_failures.note(exc)
    if isinstance(exc, errors.InvalidArgument):
        reason = next(
            (r for cls, r in _INVALID_REASONS if isinstance(exc, cls)), "INVALID_ARGUMENT"
        )
        return 400, reason, False
    for row in SERVICE_ERRORS:
        if isinstance(exc, row.error):
            return row.http_status, exc.reason or row.reason, row.retryable
    return 502, "SERVICE_ERROR", False


def clip(text: str, limit: int = 100) -> str:
    """Shortens text echoed from a request, and makes it encodable (no lone surrogates)."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
