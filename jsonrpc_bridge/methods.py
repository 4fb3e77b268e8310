"""The Stepflow blob methods, blobs/put and blobs/get, as calls to the gRPC BlobService.

Only translation lives here: parameters are checked and converted (blob
types, base64, ids), then blobstore.client.AsyncBlobClient does the call.
Json data goes to the service as JSON text, which the service canonicalises
and hashes exactly as for a gRPC caller, so both give equal data one id.
Stored Json comes back as its canonical bytes and is embedded in the
response unparsed (an orjson Fragment).

Params may be named ({"data": ..., "blob_type": ..., "filename": ...}) or
positional ([data, blob_type] and [blob_id]); unknown named params are
ignored, so newer clients sending extra fields keep working.

Blob type names: Stepflow's schema (protocol.json) and every Stepflow SDK
know "data", "flow" (and, in today's gRPC API, "binary"); the protocol
page's examples write "Json" and "Binary". blobs/put takes all of them, in
any case. blobs/get answers with one set of names, chosen by the bridge's
`blob_type_names` setting: the schema's by default, because an SDK drops a
reply whose type it cannot decode and then waits for it forever.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from blobstore.client import AsyncBlobClient
from blobstore.errors import BlobStoreError, InvalidArgument, InvalidBlobId
from blobstore.ids import parse_blob_id
from blobstore.model import BlobInfo, BlobMetadata, BlobType
from jsonrpc_bridge import errors
from jsonrpc_bridge.json_codec import Invalid, InvalidValue, describe, encode_value
from jsonrpc_bridge.protocol import Method, Params

PUT = "blobs/put"
GET = "blobs/get"

# What blobs/put takes; keys are case-folded. "data", "flow" and "binary" are Stepflow's
# names (its schema and SDKs); "json" is the protocol page's example spelling of data.
BLOB_TYPES: dict[str, BlobType] = {
    "data": BlobType.JSON,
    "json": BlobType.JSON,
    "flow": BlobType.FLOW,
    "binary": BlobType.BINARY,
}
_TYPE_NAMES = "data, flow or binary (any case; also Json)"

# What blobs/get answers, by the bridge's blob_type_names setting. The page's examples
# have no spelling for a flow: to clients written from them a flow is JSON.
TYPE_NAMES: dict[str, dict[BlobType, str]] = {
    "stepflow": {BlobType.JSON: "data", BlobType.FLOW: "flow", BlobType.BINARY: "binary"},
    "seed-examples": {BlobType.JSON: "Json", BlobType.FLOW: "Json", BlobType.BINARY: "Binary"},
}
_MISSING = object()


class BlobMethods:
    """blobs/put and blobs/get over one AsyncBlobClient."""

    def __init__(
        self,
        client: AsyncBlobClient,
        *,
        max_get_bytes: int | None = None,
        type_names: str = "stepflow",
    ) -> None:
        self._client = client
        # blobs/get answers hold the whole blob in memory: cap it.
        self._max_get_bytes = max_get_bytes
        self._type_names = TYPE_NAMES[type_names]

    def table(self) -> dict[str, Method]:
        return {PUT: self.put, GET: self.get}

    async def put(self, params: Params) -> dict[str, object]:
        data, blob_type, metadata = _put_params(params)
        if blob_type is BlobType.BINARY:
            content = _base64_content(data)
        else:
            try:
                content = encode_value(data, "params.data")
            except InvalidValue as exc:
                raise errors.invalid_params(exc.path, exc.reason, "INVALID_JSON") from None
        try:
            result = await self._client.put_bytes(content, blob_type, metadata)
        except BlobStoreError as exc:
            raise errors.from_store_error(exc, "params.data") from None
        reply: dict[str, object] = {"blob_id": result.info.blob_id}
        if result.info.metadata.filename is not None:
            reply["filename"] = result.info.metadata.filename
        return reply

    async def get(self, params: Params) -> dict[str, object]:
        text = _get_params(params)
        try:
            blob_id = parse_blob_id(text)
        except InvalidBlobId as exc:
            raise errors.invalid_params("params.blob_id", str(exc), "INVALID_BLOB_ID") from None
        try:
            blob = await self._client.get(blob_id, max_size=self._max_get_bytes)
        except BlobStoreError as exc:
            raise errors.from_store_error(exc, "params.blob_id") from None
        if blob.info.blob_type.holds_json:
            data = orjson.Fragment(blob.data)
        else:
            data = orjson.Fragment(b'"' + base64.b64encode(blob.data) + b'"')
        return {"data": data, **self._described(blob.info)}

    def _described(self, info: BlobInfo) -> dict[str, object]:
        """blob_type in the configured names, and the file name and content type if stored."""
        described: dict[str, object] = {"blob_type": self._type_names[info.blob_type]}
        if info.metadata.filename is not None:
            described["filename"] = info.metadata.filename
        if info.metadata.content_type is not None:
            described["content_type"] = info.metadata.content_type
        return described


def _put_params(params: Params) -> tuple[Any, BlobType, BlobMetadata]:
    if isinstance(params, list):
        if not 1 <= len(params) <= 2:
            raise errors.invalid_params(
                "params", f"expected [data] or [data, blob_type], got {len(params)} items"
            )
        data, blob_type = params[0], params[1] if len(params) == 2 else None
        return data, _blob_type(blob_type, "params[1]"), BlobMetadata()
    named = _named(params, '{"data": ..., "blob_type": "data"}')
    data = named.get("data", _MISSING)
    if data is _MISSING:
        raise errors.invalid_params("params.data", "missing; it holds the value to store")
    blob_type = _blob_type(named.get("blob_type"), "params.blob_type")
    return data, blob_type, _metadata(named)


def _metadata(named: dict[str, Any]) -> BlobMetadata:
    """filename and content_type, each optional: a string, or null for none."""
    checked: dict[str, str | None] = {}
    for name in ("filename", "content_type"):
        value = named.get(name)
        if value is not None and not isinstance(value, str):
            raise errors.invalid_params(
                f"params.{name}", f"must be a string, not {describe(value)}"
            )
        try:
            checked[name] = getattr(BlobMetadata.checked(**{name: value}), name)
        except InvalidArgument as exc:
            raise errors.invalid_params(f"params.{name}", str(exc)) from None
    return BlobMetadata(**checked)


def _get_params(params: Params) -> str:
    if isinstance(params, list):
        if len(params) != 1:
            raise errors.invalid_params("params", f"expected [blob_id], got {len(params)} items")
        value, field = params[0], "params[0]"
    else:
        value = _named(params, '{"blob_id": "sha256:..."}').get("blob_id", _MISSING)
        field = "params.blob_id"
        if value is _MISSING:
            raise errors.invalid_params(field, "missing; give the id blobs/put returned")
    if not isinstance(value, str):
        raise errors.invalid_params(
            field, f"must be a string, not {describe(value)}", "INVALID_BLOB_ID"
        )
    return value


def _named(params: Params, shape: str) -> dict[str, Any]:
    if params is None:
        raise errors.invalid_params("params", f"missing; expected an object like {shape}")
    if not isinstance(params, dict):
        raise errors.invalid_params("params", f"expected an object like {shape}")
    return params


def _blob_type(value: object, field: str) -> BlobType:
    if value is None:
        return BlobType.JSON
    if not isinstance(value, str):
        raise errors.invalid_params(
            field, f"must be a string, {_TYPE_NAMES}, not {describe(value)}", "INVALID_BLOB_TYPE"
        )
    blob_type = BLOB_TYPES.get(value.casefold())
    if blob_type is None:
        raise errors.invalid_params(
            field,
            f"unknown blob type {errors.clip(repr(value), 40)}; expected {_TYPE_NAMES}",
            "INVALID_BLOB_TYPE",
        )
    return blob_type


def _base64_content(data: object) -> bytes:
    field = "params.data"
    if isinstance(data, Invalid) or not isinstance(data, str):
        raise errors.invalid_params(
            field, f"Binary data must be a base64 string, not {describe(data)}", "INVALID_BASE64"
        )
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.invalid_params(
            field,
            f"not valid base64 ({exc}); use the standard alphabet with = padding, no white space",
            "INVALID_BASE64",
        ) from None
    # b64decode ignores set bits after the last full byte; only one spelling is accepted.
    if base64.b64encode(content) != data.encode("ascii"):
        raise errors.invalid_params(
            field,
            "not canonical base64: unused bits in the last group must be zero",
            "INVALID_BASE64",
        )
    return content
