"""JSON-RPC 2.0, independent of any transport: request bytes in, response bytes (or None) out.

It owns framing and the rules of the specification (https://www.jsonrpc.org/specification):
request validation, notifications (never answered, even on error), batches
(elements run concurrently, at most max_batch_concurrency at a time; an empty
batch is one Invalid Request; a batch of notifications gets nothing back), ids
(string, number or null, echoed exactly), and the error objects. Methods are
plain coroutines taking the params (object, array or None) and returning a
JSON-encodable result; they signal failure by raising RpcError or a store error
(blobstore.errors). Any other exception is a bug: it is logged with its
traceback and the client gets -32603 Internal error, never the traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from blobstore.errors import BlobStoreError
from blobstore.json_values import DEFAULT_MAX_VALUES, count_values, estimate_values
from blobstore.offload import offload, offload_to_process
from jsonrpc_bridge import errors
from jsonrpc_bridge.errors import RpcError
from jsonrpc_bridge.json_codec import Invalid, ParseError, decode, decode_forwarding, describe

log = logging.getLogger("jsonrpc_bridge")

Params = dict[str, Any] | list[Any] | None
Method = Callable[[Params], Awaitable[object]]

_NO_ID = object()
"""The id of a notification (no "id" member), as opposed to an explicit null id."""
# Bodies shorter than this are parsed at once (they cannot hold many values).
INLINE_BODY_BYTES = 64 * 1024
# Bodies with more values than this are parsed in the worker process (about 20 ms of parsing).
INLINE_VALUES = 50_000
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


class TooManyValues(Exception):
    """A body holds more JSON values than the bridge parses."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} values, over {limit}")
        self.count = count
        self.limit = limit


class JsonRpcCore:
    """Answers JSON-RPC messages by calling `methods` (name -> coroutine function)."""

    def __init__(
        self,
        methods: Mapping[str, Method],
        *,
        max_batch_concurrency: int = 32,
        max_json_values: int = DEFAULT_MAX_VALUES,
    ) -> None:
        self._methods = dict(methods)
        self._max_batch_concurrency = max_batch_concurrency
        self._max_json_values = max_json_values
        self.on_batch: Callable[[int], object] | None = None
        """Told the size of each batch (observe.py's histogram); None: nobody asks."""

    async def handle(self, body: bytes) -> bytes | None:
        """Answers one message (a request, a notification or a batch); None = nothing to send."""
        try:
            message = await self._decode(body)
        except ParseError as exc:
            return encode_error(None, errors.parse_error(str(exc)))
        except TooManyValues as exc:
            return encode_error(None, errors.request_too_large_values(exc.count, exc.limit))
        try:
            if isinstance(message, list):
                return await self._batch(message)
            return await self._call(message)
        except Exception:  # a bug in this module: still answer, never crash the transport
            log.exception("unexpected failure handling a message")
            return encode_error(None, errors.internal_error())

    async def _decode(self, body: bytes) -> object:
        return await decode_body(body, self._max_json_values)

    async def _batch(self, messages: list[object]) -> bytes | None:
        if self.on_batch is not None:
            self.on_batch(len(messages))
        if not messages:
            return encode_error(None, errors.invalid_request("the batch is an empty array"))
        if len(messages) == 1:
            answers = [await self._call(messages[0])]
        else:
            # At most max_batch_concurrency elements at once: a batch of 10,000 puts run
            # all together would only meet the service's overload limit.
            turns = asyncio.Semaphore(self._max_batch_concurrency)

            async def in_turn(message: object) -> bytes | None:
                async with turns:
                    return await self._call(message)

            answers = await asyncio.gather(*(in_turn(m) for m in messages))
        parts = [answer for answer in answers if answer is not None]
        if not parts:
            return None
        return b"[" + b",".join(parts) + b"]"

    async def _call(self, message: object) -> bytes | None:
        """Answers one request object; None for a notification."""
        if not isinstance(message, dict):
            return encode_error(None, errors.invalid_request(_not_an_object(message)))
        request_id = message.get("id", _NO_ID)
        if request_id is not _NO_ID:
            checked = _checked_id(request_id)
            if checked is None:
                reason = "id must be a string, a number or null, not " + describe(request_id)
                return encode_error(None, errors.invalid_request(reason))
            request_id = checked[0]
        problem = _request_problem(message)
        if problem is not None:
            # Answered even without an id: the specification's own example does so.
            return encode_error(
                None if request_id is _NO_ID else request_id, errors.invalid_request(problem)
            )
        method_name: str = message["method"]
        params = message.get("params")
        notification = request_id is _NO_ID
        try:
            result = await self._invoke(method_name, params)
        except RpcError as exc:
            if notification:
                log.warning("notification %s failed: %s", errors.clip(method_name), exc.message)
                return None
            return encode_error(request_id, exc)
        if notification:
            return None
        try:
            return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})
        except orjson.JSONEncodeError:
            log.exception("cannot encode the result of %s", errors.clip(method_name))
            return encode_error(request_id, errors.internal_error())

    async def _invoke(self, method_name: str, params: Params) -> object:
        method = self._methods.get(method_name)
        if method is None:
            raise errors.method_not_found(method_name)
        if isinstance(params, Invalid):
            raise errors.invalid_params("params", params.reason)
        try:
            return await method(params)
        except RpcError:
            raise
        except BlobStoreError as exc:
            # Methods translate the errors they know a field for; this is the rest.
            raise errors.from_store_error(exc, "params") from None
        except Exception:
            log.exception("method %s failed", method_name)
            raise errors.internal_error() from None


async def decode_body(body: bytes, max_json_values: int) -> object:
    """decode(body); bodies of many values are refused or decoded in the worker process.

    Parsing holds the GIL (and so this event loop) for the whole body, and costs
    memory per value: a cap refuses bodies of too many values before they are
    parsed (TooManyValues), and those with many values are parsed away from the
    event loop. Also used by the REST routes (rest_routes.py) for their JSON bodies.
    """
    if len(body) < INLINE_BODY_BYTES:
        return decode(body)
    values = await offload(len(body), estimate_values, body)
    if max_json_values and values > max_json_values:
        values = await offload_to_process(count_values, body)
        if values > max_json_values:
            raise TooManyValues(values, max_json_values)
    if values <= INLINE_VALUES:
        return decode(body)
    return await offload_to_process(decode_forwarding, body)


def encode_error(request_id: object, error: RpcError) -> bytes:
    """The response object for an error, as bytes."""
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})


def _checked_id(value: object) -> tuple[object] | None:
    """The id as it will be echoed (wrapped in a 1-tuple), or None if it is not a valid id."""
    if value is None or isinstance(value, orjson.Fragment):
        return (value,)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return (value,)
        return (orjson.Fragment(str(value)),)  # orjson cannot write it; echo the digits
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None  # a lone surrogate cannot be echoed in UTF-8
        return (value,)
    return None


def _request_problem(message: dict[str, Any]) -> str | None:
    if message.get("jsonrpc") != "2.0":
        if "jsonrpc" not in message:
            return 'the "jsonrpc" member is missing; it must be "2.0"'
        return f'"jsonrpc" must be "2.0", not {describe(message["jsonrpc"])}'
    method = message.get("method")
    if not isinstance(method, str):
        if "method" not in message:
            return 'the "method" member is missing'
        return f'"method" must be a string, not {describe(method)}'
    params = message.get("params")
    # Invalid params (a duplicate key in them) are the method's Invalid params, not this.
    if "params" in message and not isinstance(params, dict | list | Invalid):
        return f'"params" must be an object or an array, not {describe(params)}'
    return None


def _not_an_object(message: object) -> str:
    if isinstance(message, Invalid):
        return f"the request is not a valid object: {message.reason}"
    return f"a request must be an object, not {describe(message)}"
