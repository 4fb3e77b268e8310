"""Reads request bodies without losing anything a blob's id depends on, and writes values back.

The stdlib decoder (C-accelerated) parses bodies, with hooks so that:
- integers stay exact at any size (orjson would silently turn 2**64 into a float);
- numbers with a fraction or exponent keep their spelling, as orjson Fragments,
  so "1e400" reaches the service, which says why it is refused;
- duplicate object keys and NaN/Infinity are not silently resolved: the decoder
  leaves an `Invalid` marker in their place, and whoever uses that part of the
  message reports it (the envelope as Invalid Request, params.data as Invalid
  params), so one bad value never turns a whole batch into a Parse error.

`encode_value` turns a decoded value back into JSON text for the service,
fast with orjson, and only walks the tree when orjson refuses it.

`decode_forwarding` is decode() for bodies of many values, run in a worker process
(the protocol core decides): it also encodes each put's `data` that is an object or
an array to JSON text there, so that only the small envelope travels back.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from jsonrpc_bridge.errors import clip

MAX_DEPTH = 250
"""Deepest nesting forwarded as a blob; the service has the same limit."""

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


class Invalid:
    """Stands where the body holds JSON that no blob may hold (a duplicate key, NaN)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Invalid({self.reason!r})"


class ParseError(Exception):
    """The body is not one JSON value in UTF-8."""


class InvalidValue(Exception):
    """A value cannot be forwarded as JSON; `path` says where in it, `reason` why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | Invalid:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return Invalid(f"duplicate object key {clip(repr(key), 60)}")
        seen.add(key)
    raise AssertionError("unreachable: dict shrank without a duplicate key")


def _constant(name: str) -> Invalid:
    return Invalid(f"{name} is not valid JSON (only finite numbers are allowed)")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_constant, parse_float=orjson.Fragment
)


def decode(body: bytes) -> object:
    """Parses a request body: one JSON value, UTF-8, white space around it allowed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"the body is not valid UTF-8 (at byte {exc.start})") from None
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ParseError("the JSON is nested too deeply to parse") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ParseError(f"invalid number: {clip(str(exc))}") from None


class Encoded:
    """A put's object or array `data`, encoded by decode_forwarding (or why it cannot be)."""

    __slots__ = ("kind", "path", "problem", "text")

    def __init__(self, kind: str, text: bytes, path: str = "", problem: str = "") -> None:
        self.kind = kind
        self.text = text
        self.path = path
        self.problem = problem

    def encoded(self) -> bytes:
        """The JSON text; raises InvalidValue if the value had none."""
        if self.problem:
            raise InvalidValue(self.path, self.problem)
        return self.text


def decode_forwarding(body: bytes) -> object:
    """decode(body), with each request's object or array `data` param turned into Encoded."""
    message = decode(body)
    for request in message if isinstance(message, list) else [message]:
        if not isinstance(request, dict):
            continue
        params = request.get("params")
        if isinstance(params, dict) and isinstance(params.get("data"), dict | list):
            params["data"] = _encoded(params["data"], "params.data")
        elif isinstance(params, list) and params and isinstance(params[0], dict | list):
            params[0] = _encoded(params[0], "params[0]")
    return message


def _encoded(value: object, path: str) -> Encoded:
    kind = describe(value)
    try:
        return Encoded(kind, encode_value(value, path))
    except InvalidValue as exc:
        return Encoded(kind, b"", exc.path, exc.reason)


def encode_value(value: object, path: str) -> bytes:
    """JSON text of a decoded value; raises InvalidValue naming where it is wrong."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    # Rare: a marker, an integer past 64 bits, a lone surrogate or deep nesting.
    try:
        return orjson.dumps(_repaired(value, path, 0))
    except _TooDeep:
        raise InvalidValue(path, f"JSON is nested deeper than {MAX_DEPTH} levels") from None


class _TooDeep(Exception):
    pass


def _repaired(value: object, path: str, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise _TooDeep
    if isinstance(value, Invalid):
        raise InvalidValue(path, value.reason)
    if isinstance(value, str):
        _check_text(value, path)
        return value
    if isinstance(value, bool) or value is None or isinstance(value, orjson.Fragment):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            _check_text(key, path)
            out[key] = _repaired(item, f"{path}.{clip(key, 40)}", depth + 1)
        return out
    if isinstance(value, list):
        return [_repaired(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidValue(path, f"{type(value).__name__} is not a JSON value")


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(path, "a string contains a lone UTF-16 surrogate") from None


def describe(value: object) -> str:
    """Names a decoded value's JSON type for messages ("an object", "the number 1.5")."""
    if isinstance(value, Invalid):
        return f"an invalid value ({value.reason})"
    if isinstance(value, Encoded):
        return value.kind
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {clip(json.dumps(value), 60)}"
    if isinstance(value, int | orjson.Fragment):
        text = str(value) if isinstance(value, int) else orjson.dumps(value).decode()
        return f"the number {clip(text, 40)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
