"""The Stepflow blob methods, blobs/put and blobs/get, as calls to the gRPC BlobService.

Only translation lives here: parameters are checked and converted (blob
types, base64, ids), then blobstore.client.AsyncBlobClient does the call.
Json data goes to the service as JSON text, which the service canonicalises
and hashes exactly as for a gRPC caller, so both give equal data one id.
Stored Json comes back as its canonical bytes and is embedded in the
response unparsed (an orjson Fragment).

Params may be named ({"data": ..., "blob_type": ..., "filename": ...}) or
positional ([data, blob_type] and [blob_id]); unknown named params are ignored,
so newer clients sending extra fields keep working.

Blob type names: blobs/get answers in the names of the protocol's schema
(`protocol.json`, `$defs/GetBlobResult`), "data", "flow" and "binary", because
every Stepflow SDK decodes exactly those and drops a reply with any other name
(the component then waits forever). The protocol page's examples write "Json"
and "Binary"; `--blob-type-names page` answers so for clients written from
them. blobs/put takes every spelling, in any case.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from blobstore.batching import NewBlob
from blobstore.client import AsyncBlobClient
from blobstore.errors import BlobStoreError, InvalidArgument, InvalidBlobId
from blobstore.ids import BlobId, parse_blob_id
from blobstore.metadata import check_meta
from blobstore.model import Blob, BlobMeta, BlobType, PutResult
from blobstore.stepflow_names import type_name
from jsonrpc_bridge import errors
from jsonrpc_bridge.json_codec import Encoded, Invalid, InvalidValue, describe, encode_value
from jsonrpc_bridge.protocol import BatchMethod, Method, Params

PUT = "blobs/put"
GET = "blobs/get"
SCOPES = {PUT: "write", GET: "read"}
"""The scope each method needs of a caller the bridge decides for (client_identity.py)."""

# Keys are case-folded: the schema's names (Stepflow's, shared with stepflow.v1 and REST)
# and the page's example spellings.
BLOB_TYPES: dict[str, BlobType] = {
    **{type_name(blob_type): blob_type for blob_type in BlobType},
    "json": BlobType.JSON,
}
_TYPE_NAMES = "data, flow or binary (any case; also Json)"
_MISSING = object()
_Item = TypeVar("_Item")
_Outcome = TypeVar("_Outcome")

TYPE_NAMES: dict[str, dict[BlobType, str]] = {
    # The schema's enum: what every Stepflow SDK decodes.
    "schema": {blob_type: type_name(blob_type) for blob_type in BlobType},
    # The page's examples. They have no name for a flow, which is JSON: "Json".
    "page": {BlobType.JSON: "Json", BlobType.FLOW: "Json", BlobType.BINARY: "Binary"},
}
"""How blobs/get names a blob's type, by the setting --blob-type-names."""


class BlobMethods:
    """blobs/put and blobs/get over one AsyncBlobClient."""

    def __init__(
        self,
        client: AsyncBlobClient,
        *,
        max_get_bytes: int | None = None,
        type_names: str = "schema",
    ) -> None:
        self._client = client
        # blobs/get answers hold the whole blob in memory: cap it.
        self._max_get_bytes = max_get_bytes
        self._type_names = TYPE_NAMES[type_names]

    def table(self) -> dict[str, Method]:
        return {PUT: self.put, GET: self.get}

    def batch_table(self) -> dict[str, BatchMethod]:
        """The batch forms: a JSON-RPC batch's blobs/put (blobs/get) elements in one
        BatchPut (BatchGet) call."""
        return {PUT: self.put_batch, GET: self.get_batch}

    async def put(self, params: Params) -> dict[str, object]:
        blob = _new_blob(params)
        try:
            result = await self._client.put_bytes(blob.data, blob.blob_type, meta=blob.meta)
        except BlobStoreError as exc:
            raise errors.from_store_error(exc, "params.data") from None
        return _put_answer(result)

    async def put_batch(self, batch: list[Params]) -> list[object]:
        """put() of each params, the valid ones stored by one client.put_many."""
        return await _batched(batch, _new_blob, self._client.put_many, _put_answer, "params.data")

    async def get(self, params: Params) -> dict[str, object]:
        blob_id = _blob_id(params)
        try:
            blob = await self._client.get(blob_id, max_size=self._max_get_bytes)
        except BlobStoreError as exc:
            raise errors.from_store_error(exc, "params.blob_id") from None
        return self._get_answer(blob)

    async def get_batch(self, batch: list[Params]) -> list[object]:
        """get() of each params, the valid ones read by one client.get_many."""

        async def get_many(ids: list[BlobId]) -> Sequence[Blob | BlobStoreError]:
            return await self._client.get_many(ids, max_size=self._max_get_bytes)

        return await _batched(batch, _blob_id, get_many, self._get_answer, "params.blob_id")

    def _get_answer(self, blob: Blob) -> dict[str, object]:
        if blob.info.blob_type.is_json:
            data = orjson.Fragment(blob.data)
        else:
            data = orjson.Fragment(b'"' + base64.b64encode(blob.data) + b'"')
        result: dict[str, object] = {
            "data": data,
            "blob_type": self._type_names[blob.info.blob_type],
        }
        return _with_filename(result, blob.info.meta)


async def _batched(
    batch: list[Params],
    parse: Callable[[Params], _Item],
    call: Callable[[list[_Item]], Awaitable[Sequence[_Outcome | BlobStoreError]]],
    answer: Callable[[_Outcome], dict[str, object]],
    field: str,
) -> list[object]:
    """The answer (or RpcError) of each params of a batch: each parsed alone (its own
    Invalid params), the valid ones sent in one `call`, whose per-item errors (or whole
    failure, then each element's) are mapped naming `field`."""
    answers: list[object] = [None] * len(batch)
    items: list[tuple[int, _Item]] = []
    for index, params in enumerate(batch):
        try:
            items.append((index, parse(params)))
        except errors.RpcError as exc:
            answers[index] = exc
    if not items:
        return answers
    try:
        outcomes: list[_Outcome | BlobStoreError] = list(await call([item for _, item in items]))
    except BlobStoreError as exc:  # the whole call failed: each element's error
        outcomes = [exc] * len(items)
    for (index, _), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, BlobStoreError):
            answers[index] = errors.from_store_error(outcome, field)
        else:
            answers[index] = answer(outcome)
    return answers


def _new_blob(params: Params) -> NewBlob:
    """The blob a blobs/put asks to store; Invalid params (RpcError) if it cannot be."""
    data, blob_type, meta = _put_params(params)
    if blob_type is BlobType.BINARY:
        return NewBlob(_base64_content(data), blob_type, meta)
    try:
        if isinstance(data, Encoded):  # encoded with the body, in the worker
            return NewBlob(data.encoded(), blob_type, meta)
        return NewBlob(encode_value(data, "params.data"), blob_type, meta)
    except InvalidValue as exc:
        raise errors.invalid_params(exc.path, exc.reason, "INVALID_JSON") from None


def _put_answer(result: PutResult) -> dict[str, object]:
    return _with_filename({"blob_id": result.info.blob_id}, result.info.meta)


def _blob_id(params: Params) -> BlobId:
    """The id a blobs/get asks for; Invalid params (RpcError) if it is not one."""
    text = _get_params(params)
    try:
        return parse_blob_id(text)
    except InvalidBlobId as exc:
        raise errors.invalid_params("params.blob_id", str(exc), "INVALID_BLOB_ID") from None


def _with_filename(result: dict[str, object], meta: BlobMeta) -> dict[str, object]:
    """The result, with the blob's stored filename if it has one (as Stepflow answers)."""
    if meta.filename is not None:
        result["filename"] = meta.filename
    return result


def _put_params(params: Params) -> tuple[Any, BlobType, BlobMeta]:
    if isinstance(params, list):
        if not 1 <= len(params) <= 2:
            raise errors.invalid_params(
                "params", f"expected [data] or [data, blob_type], got {len(params)} items"
            )
        data, blob_type = params[0], params[1] if len(params) == 2 else None
        type_field = "params[1]"
        filename = None
    else:
        named = _named(params, '{"data": ..., "blob_type": "data"}')
        data = named.get("data", _MISSING)
        if data is _MISSING:
            raise errors.invalid_params("params.data", "missing; it holds the value to store")
        blob_type = named.get("blob_type")
        type_field = "params.blob_type"
        filename = named.get("filename")
        if filename is not None and not isinstance(filename, str):
            raise errors.invalid_params(
                "params.filename", f"must be a string or null, not {describe(filename)}"
            )
    try:  # the service checks it too; checked here, the error names the param
        meta = check_meta(BlobMeta(filename))
    except InvalidArgument as exc:
        raise errors.invalid_params("params.filename", str(exc)) from None
    return data, _blob_type(blob_type, type_field), meta


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
