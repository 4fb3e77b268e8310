"""RFC 8785 (JCS) canonical JSON: the bytes a Json blob is hashed and stored as.

Two entry points give the same bytes for the same value:
`canonicalize_text` for JSON text (what Put receives) and `canonicalize_value`
for values already in Python objects (a protobuf Value, a client's dict).
docs/blob-ids.md is the specification, with the test vectors.

Text takes a fast path when it can: orjson parses, one pass over the tree
turns floats into pre-formatted orjson Fragments, orjson writes the result
with sorted keys. Whatever the fast path cannot vouch for (a duplicate key,
an integer that orjson would round, any error) goes through the exact path:
the stdlib decoder with hooks that keep integers exact and reject what JCS
forbids. Errors come only from the exact path, so they read the same whatever
path was tried first. Syntax and UTF-8 errors carry their byte position; for a
broken JCS rule (duplicate key, NaN...) a second, slow reading finds it, in
texts up to LOCATE_LIMIT.

Extension to RFC 8785: integers outside ±(2^53-1) written without fraction or
exponent are kept exact as plain decimal digits instead of being rounded to a
double.

Why one module of ~500 lines: the fast and the exact path must give the same bytes
for every text, and the tests compare them against each other; kept side by side,
a change to one is read next to the other.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from blobstore.errors import InvalidJson

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 250
"""Most containers nested in one another; deeper documents are rejected."""
MAX_INT_DIGITS = 4300
"""Longest integer literal (Python's default conversion limit, made independent of it)."""
LOCATE_LIMIT = 2 * 1024 * 1024
"""Longest text (in characters) whose errors get a position even when finding it takes a
second, slow reading (duplicate keys, NaN, lone surrogates...); syntax errors always do."""

_Fragment = orjson.Fragment
# orjson writes Python ints in this range itself; outside it they become Fragments.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# orjson.loads turns an integer literal beyond 64 bits into a float at least this large.
_ROUNDED_INT = float(2**63)
_TOO_MANY_DIGITS = 10**MAX_INT_DIGITS
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOO_DEEP = f"JSON is nested deeper than {MAX_DEPTH} levels"


class _Unsure(Exception):
    """The fast path cannot vouch for its result; the exact path decides (and says why)."""


class _PathError(Exception):
    """A problem in a Python value; containers on the way out add their step of the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps: list[str | int] = []  # innermost first


# -- entry points ---------------------------------------------------------------------------


def canonicalize_text(raw: bytes | str) -> bytes:
    """Returns the canonical UTF-8 encoding of the JSON text `raw`.

    Raises InvalidJson, with the byte position where there is one, for text
    that is not exactly one valid JSON value in UTF-8, that has duplicate
    object keys, NaN/Infinity, numbers beyond the double range, integers
    longer than MAX_INT_DIGITS, lone surrogates, or nesting deeper than
    MAX_DEPTH.
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            return _canonicalize_exact(raw)
    else:
        data = bytes(raw)
    try:
        return _canonicalize_fast(data)
    except (orjson.JSONDecodeError, _Unsure):
        return _canonicalize_exact(data)


def canonicalize_value(value: object) -> bytes:
    """Returns the canonical encoding of a value made of dict/list/tuple/str/int/float/bool/None.

    Raises InvalidJson naming the JSON path ($.a[0]...) of the first value
    that has no JSON form.
    """
    astral: list[bool] = []
    try:
        tree = _copy(value, 0, astral)
    except _PathError as exc:
        raise InvalidJson(f"{_path(exc.steps[::-1])}: {exc.reason}") from None
    try:
        return _dump(tree, utf16=bool(astral))
    except orjson.JSONEncodeError:
        # The copy holds only orjson-native values, so a string that is not
        # valid Unicode (a lone surrogate) is the one thing left to fail.
        where = _surrogate_path(value) or "$"
        raise InvalidJson(f"{where}: string has a lone UTF-16 surrogate") from None


def format_number(value: float) -> str:
    """Formats a finite double as ECMAScript's Number.prototype.toString does (RFC 8785 3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON form")
    text = repr(value)
    if "e" not in text:
        # repr writes fixed notation only for 1e-4 <= |value| < 1e16, where
        # ECMAScript does too, with the same shortest round-trip digits;
        # they differ only in the ".0" of integral values.
        if text.endswith(".0"):
            return text[:-2] if value else "0"
        return text
    if value < 0:
        return "-" + format_number(-value)
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).rstrip("0")
    # value == 0.<digits> * 10**point, because repr's mantissa has one digit before the point
    point = 1 + int(exponent)
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    exp = point - 1
    head = digits if count == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{'+' if exp > 0 else '-'}{abs(exp)}"


# -- the fast path: orjson parses ---------------------------------------------------------


def _canonicalize_fast(data: bytes) -> bytes:
    astral: list[bool] = []
    tree = _prepare(orjson.loads(data), 0, astral)
    result = _dump(tree, utf16=bool(astral))
    # orjson keeps the last of duplicate keys silently. Each object member
    # has exactly one structural ':' and no JSON writer escapes ':' except
    # as \u003a, so without that escape the result has as many colons as
    # the input exactly when no member was dropped.
    if result.count(b":") != data.count(b":") or b"\\u003a" in data or b"\\u003A" in data:
        raise _Unsure("perhaps a duplicate key")
    return result


def _prepare(node: Any, depth: int, astral: list[bool]) -> Any:
    """Makes a freshly parsed tree ready for orjson.dumps, in place: numbers in their JCS form.

    Appends to `astral` if a key holds a character beyond U+FFFF.
    """
    kind = type(node)
    if kind is dict:
        items = node.items()
        if not all(map(str.isascii, node)) and _has_astral_key(node):
            astral.append(True)
    elif kind is list:
        items = enumerate(node)
    elif kind is float:
        return _float_fragment(node)
    elif kind is int:
        return _int_value(node)
    else:
        return node
    if depth == MAX_DEPTH:
        raise _Unsure(_TOO_DEEP)
    for key, item in items:
        item_kind = type(item)
        if item_kind is float:
            node[key] = _float_fragment(item)
        elif item_kind is dict or item_kind is list:
            _prepare(item, depth + 1, astral)
        elif item_kind is int and not _INT_MIN <= item <= _INT_MAX:
            node[key] = _int_value(item)
    return node


def _float_fragment(value: float) -> orjson.Fragment:
    if -_ROUNDED_INT < value < _ROUNDED_INT:
        return _Fragment(format_number(value).encode())
    raise _Unsure("perhaps an integer literal orjson rounded")


def _int_value(value: int) -> int | orjson.Fragment:
    if _INT_MIN <= value <= _INT_MAX:
        return value
    if -_TOO_MANY_DIGITS < value < _TOO_MANY_DIGITS:
        return _Fragment(str(value).encode())
    raise _Unsure(f"integer has more digits than the limit of {_digit_limit()}")


def _dump(tree: object, *, utf16: bool) -> bytes:
    # OPT_SORT_KEYS orders by code point; JCS orders by UTF-16 code unit, which
    # differs only between characters beyond U+FFFF and U+E000..U+FFFF.
    if utf16:
        return orjson.dumps(_sorted_utf16(tree))
    return orjson.dumps(tree, option=orjson.OPT_SORT_KEYS)


def _has_astral_key(obj: dict[str, Any]) -> bool:
    return any(not key.isascii() and max(key) > "\uffff" for key in obj)


def _sorted_utf16(node: Any) -> Any:
    kind = type(node)
    if kind is dict:
        return {key: _sorted_utf16(node[key]) for key in sorted(node, key=_utf16_units)}
    if kind is list:
        return [_sorted_utf16(item) for item in node]
    return node


def _utf16_units(key: str) -> bytes:
    return key.encode("utf-16-be")


# -- the exact path: the stdlib decoder, and the error reports ------------------------------


def _canonicalize_exact(raw: bytes | str) -> bytes:
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"invalid UTF-8: {exc.reason}", exc.start) from None
    if text.startswith("\ufeff"):
        raise InvalidJson("JSON text must not start with a byte order mark (U+FEFF)", 0)
    if not text.strip(" \t\n\r"):
        raise InvalidJson("JSON text is empty", len(text.encode("utf-8", "surrogatepass")))
    astral: list[bool] = []
    try:
        tree = _prepare(_DECODER.decode(text), 0, astral)
        return _dump(tree, utf16=bool(astral))
    except json.JSONDecodeError as exc:
        message = exc.msg.removesuffix(" at")  # "Invalid control character at"
        if message == "Extra data":
            message = "Extra data after the JSON value"
        raise InvalidJson(f"invalid JSON: {message}", _byte_offset(text, exc.pos)) from None
    # A rule of JCS is broken. The error says what; a second reading finds where.
    except (InvalidJson, _Unsure) as exc:
        problem = str(exc)
    except RecursionError:  # nesting too deep for the decoder itself
        problem = _TOO_DEEP
    except ValueError:  # Python's own limit on the digits of an int
        problem = f"integer has more digits than the limit of {_digit_limit()}"
    except orjson.JSONEncodeError:
        problem = "string has a lone UTF-16 surrogate"
    located = _find_problem(text) if len(text) <= LOCATE_LIMIT else None
    if located is None:
        raise InvalidJson(problem)
    message, index = located
    raise InvalidJson(message, _byte_offset(text, index))


def _exact_float(text: str) -> orjson.Fragment:
    value = float(text)
    if math.isinf(value):
        raise InvalidJson(f"number {_clip(text)} is outside the range of a double")
    return _Fragment(format_number(value).encode())


def _reject_constant(name: str) -> None:
    raise InvalidJson(f"{name} is not JSON (JCS allows only finite numbers)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJson(f"duplicate object key {_clip(repr(key))}")
            seen.add(key)
    return result


# Integers stay Python ints (exact, any size); _prepare turns large ones into Fragments.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_float=_exact_float,
    parse_constant=_reject_constant,
)

_TOKEN = re.compile(
    r"""[ \t\n\r]*(?:
      (?P<string>"[^"\\]*(?:\\.[^"\\]*)*")
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
    | (?P<open>[\[{])
    | (?P<close>[\]}])
    | (?P<punct>[:,])
    | (?P<constant>NaN|-?Infinity)
    | (?P<literal>true|false|null)
    )""",
    re.VERBOSE | re.DOTALL,
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _find_problem(text: str) -> tuple[str, int] | None:
    """The first broken JCS rule in `text` and its character index, read token by token.

    Slow, so it runs only once a document is known to be bad; the error
    position is worth a second reading then.
    """
    objects: list[set[str] | None] = []  # one per open container: its keys, or None for arrays
    previous = ""
    index = 0
    while (match := _TOKEN.match(text, index)) is not None:
        kind = match.lastgroup
        token = match.group(kind or 0)
        start = match.start(kind or 0)
        index = match.end()
        if kind == "open":
            if len(objects) == MAX_DEPTH:
                return _TOO_DEEP, start
            objects.append(set() if token == "{" else None)
        elif kind == "close" and objects:
            objects.pop()
        elif kind == "constant":
            return f"{token} is not JSON (JCS allows only finite numbers)", start
        elif kind == "number":
            problem = _number_problem(token)
            if problem:
                return problem, start
        elif kind == "string":
            try:
                value, _ = json.decoder.scanstring(token, 1)  # type: ignore[attr-defined]
            except json.JSONDecodeError:
                return None
            lone = _SURROGATE.search(value)
            if lone:
                return f"string has a lone UTF-16 surrogate U+{ord(lone.group()):04X}", start
            keys = objects[-1] if objects else None
            if keys is not None and previous in ("{", ","):
                if value in keys:
                    return f"duplicate object key {_clip(repr(value))}", start
                keys.add(value)
        previous = token
    return None


def _number_problem(token: str) -> str | None:
    if "." in token or "e" in token or "E" in token:
        if math.isinf(float(token)):
            return f"number {_clip(token)} is outside the range of a double"
        return None
    digits = len(token.lstrip("-"))
    if digits > _digit_limit():
        return f"integer has {digits} digits, more than the limit of {_digit_limit()}"
    return None


def _digit_limit() -> int:
    """MAX_INT_DIGITS, or the interpreter's own limit on int/str conversion if lower."""
    return min(sys.get_int_max_str_digits() or MAX_INT_DIGITS, MAX_INT_DIGITS)


# -- Python values --------------------------------------------------------------------------


def _copy(value: object, depth: int, astral: list[bool]) -> object:
    """A copy of `value` that orjson writes as JCS; raises _PathError for what has no JSON form.

    Appends to `astral` if a key holds a character beyond U+FFFF.
    """
    if type(value) is str or type(value) is bool or value is None:
        return value
    if type(value) is float:
        return _value_float(value)
    if type(value) is int:
        return _value_int(value)
    if isinstance(value, (dict, list, tuple)):
        if depth == MAX_DEPTH:
            raise _PathError(_TOO_DEEP)
        copy: dict[str, object] | list[object]
        if isinstance(value, dict):
            copy = dict(value)
            if not all(type(key) is str for key in copy):
                copy = {_key(key): item for key, item in value.items()}
            if not all(map(str.isascii, copy)) and _has_astral_key(copy):
                astral.append(True)
            items: Iterable[tuple[Any, object]] = copy.items()
        else:
            copy = list(value)
            items = enumerate(copy)
        # Scalars that orjson writes as JCS stay as they are; the rest is replaced in place.
        for step, item in items:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int and _INT_MIN <= item <= _INT_MAX:  # type: ignore[operator]
                continue
            try:
                copy[step] = _copy(item, depth + 1, astral)
            except _PathError as exc:
                exc.steps.append(step)
                raise
        return copy
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # bool is handled above and cannot be subclassed
        return _value_int(int(value))
    if isinstance(value, float):
        return _value_float(float(value))
    raise _PathError(f"{type(value).__name__} is not a JSON value")


def _key(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    raise _PathError(f"object key {_clip(repr(key))} is not a string")


def _value_float(value: float) -> orjson.Fragment:
    if not math.isfinite(value):
        raise _PathError(f"{value} is not JSON (JCS allows only finite numbers)")
    return _Fragment(format_number(value).encode())


def _value_int(value: int) -> int | orjson.Fragment:
    if _INT_MIN <= value <= _INT_MAX:
        return value
    if -_TOO_MANY_DIGITS < value < _TOO_MANY_DIGITS:
        try:
            return _Fragment(str(value).encode())
        except ValueError:
            pass  # the interpreter was told to allow fewer digits (PYTHONINTMAXSTRDIGITS)
    raise _PathError(f"integer has more digits than the limit of {_digit_limit()}")


def _surrogate_path(value: object, steps: tuple[str | int, ...] = ()) -> str | None:
    """The path of the first string (or key) in `value` holding a lone surrogate."""
    if isinstance(value, str):
        return _path(steps) if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _SURROGATE.search(key):
                return _path((*steps, key)) + " (its key)"
            found = _surrogate_path(item, (*steps, key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            found = _surrogate_path(item, (*steps, position))
            if found:
                return found
    return None


def _path(steps: tuple[str | int, ...] | list[str | int]) -> str:
    """JSONPath of a value from its steps, outermost first."""
    parts = ["$"]
    for step in steps:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}")
        else:
            quoted = json.dumps(step, ensure_ascii=False)
            if _SURROGATE.search(quoted):  # a message must be valid Unicode itself
                quoted = json.dumps(step)
            parts.append(f"[{_clip(quoted)}]")
    return "".join(parts)


# -- helpers --------------------------------------------------------------------------------


def _byte_offset(text: str, char_index: int) -> int:
    return len(text[:char_index].encode("utf-8", "surrogatepass"))


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."
