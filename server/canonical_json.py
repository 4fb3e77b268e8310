"""RFC 8785 (JCS) canonical JSON: the bytes a Json blob is hashed and stored as.

Two entry points: `canonicalize_text` for JSON text (the fast path; parsing
keeps integers exact) and `canonicalize_value` for values already in Python
objects (from a protobuf Value). Both give the same bytes for the same value.

Parsing uses the C-accelerated stdlib decoder with hooks that enforce the
rules JCS needs (no duplicate keys, no NaN/Infinity, finite doubles); the
tree it builds is already in canonical key order with numbers pre-formatted
as orjson Fragments, so one orjson.dumps call writes the result.

Extension to RFC 8785 (documented in docs/blob-ids.md): integers outside
±(2^53-1) written without fraction or exponent are kept exact as plain
decimal digits instead of being rounded to a double.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from server.errors import InvalidJson

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 250
"""Nesting limit; deeper documents are rejected rather than risk the stack."""

_Pairs = list[tuple[str, Any]]


def canonicalize_text(raw: bytes | str) -> bytes:
    """Returns the canonical UTF-8 encoding of the JSON text `raw`.

    Raises InvalidJson, with the byte position where there is one, for text
    that is not exactly one valid JSON value in UTF-8, that has duplicate
    object keys, NaN/Infinity, numbers beyond the double range, lone
    surrogates, or nesting deeper than MAX_DEPTH.
    """
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"invalid UTF-8: {exc.reason}", exc.start) from None
    try:
        tree = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"invalid JSON: {exc.msg}", _byte_offset(text, exc.pos)) from None
    except RecursionError:
        raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    return _dump(tree)


def canonicalize_value(value: object) -> bytes:
    """Returns the canonical encoding of a value made of dict/list/str/int/float/bool/None."""
    return _dump(_canonical_tree(value, "$", 0))


def _dump(tree: object) -> bytes:
    try:
        return orjson.dumps(tree)
    except orjson.JSONEncodeError as exc:
        message = str(exc)
        if "surrogates" in message:
            raise InvalidJson("a string contains a lone UTF-16 surrogate") from None
        if "ecursion" in message:
            raise InvalidJson(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
        raise InvalidJson(f"cannot encode JSON: {message}") from None


def format_number(value: float) -> str:
    """Formats a finite double as ECMAScript's Number.prototype.toString does (RFC 8785 3.2.2.3)."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + format_number(-value)
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    digits = (whole + fraction).lstrip("0")
    # value == 0.<digits> * 10**point; repr never has leading zeros in `whole` except "0"
    point = len(whole) + (int(exponent) if exponent else 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    exp = point - 1
    sign = "+" if exp > 0 else "-"
    head = digits[0] if count == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(exp)}"


def _number_fragment(value: float) -> orjson.Fragment:
    return orjson.Fragment(format_number(value).encode())


def _parse_float(text: str) -> orjson.Fragment:
    value = float(text)
    if math.isinf(value):
        raise InvalidJson(f"number {_clip(text)} is outside the range of a double")
    return _number_fragment(value)


def _parse_int(text: str) -> int | orjson.Fragment:
    value = int(text)  # may raise ValueError past Python's digit limit; reported as InvalidJson
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    return orjson.Fragment(str(value).encode())


def _parse_constant(name: str) -> None:
    raise InvalidJson(f"{name} is not valid JSON (RFC 8785 allows only finite numbers)")


def _object(pairs: _Pairs) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"duplicate object key {_clip(repr(key))}")
            seen.add(key)
    return _sorted(result)


def _sorted(obj: dict[str, Any]) -> dict[str, Any]:
    keys = list(obj)
    if len(keys) < 2:
        return obj
    # UTF-16 code-unit order equals code-point order unless a key holds a
    # character outside the Basic Multilingual Plane.
    if max(max(k, default="") for k in keys) < "\U00010000":
        keys.sort()
    else:
        keys.sort(key=_utf16_units)
    return {k: obj[k] for k in keys}


def _utf16_units(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


class _Decoder(json.JSONDecoder):
    """The stdlib decoder with JCS's rules; depth is checked by a pre-pass."""

    def __init__(self) -> None:
        super().__init__(
            object_pairs_hook=_object,
            parse_float=_parse_float,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )

    def decode(self, s: str, _w: Any = None) -> Any:
        _check_depth(s)
        try:
            return super().decode(s)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError):
                raise
            raise InvalidJson(f"invalid number: {exc}") from None


_DECODER = _Decoder()


def _check_depth(text: str) -> None:
    # Cheap upper bound first: a document with few brackets cannot be deep.
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidJson(
                    f"JSON is nested deeper than {MAX_DEPTH} levels", _byte_offset(text, index)
                )
        elif char in "]}":
            depth -= 1


def _canonical_tree(value: object, path: str, depth: int) -> object:
    if depth > MAX_DEPTH:
        raise InvalidJson(f"{path}: JSON is nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return _parse_int(str(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJson(f"{path}: {value} is not valid JSON (only finite numbers)")
        return _number_fragment(value)
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise InvalidJson(f"{path}: object key {key!r} is not a string")
        return _sorted({k: _canonical_tree(v, f"{path}.{k}", depth + 1) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return [_canonical_tree(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    raise InvalidJson(f"{path}: {type(value).__name__} is not a JSON value")


def _byte_offset(text: str, char_index: int) -> int:
    return len(text[:char_index].encode("utf-8", "surrogatepass"))


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
