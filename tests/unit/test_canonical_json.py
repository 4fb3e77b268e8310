"""RFC 8785 canonical JSON: the vectors of docs/blob-ids.md, the `rfc8785` package as a
reference over its whole domain, the large-integer extension, and every rejection with
what and where."""

from __future__ import annotations

import copy
import enum
import json
import random
import struct
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import orjson
import pytest
import rfc8785
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from blobstore import canonical_json
from blobstore.canonical_json import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_SAFE_INTEGER,
    canonicalize_text,
    canonicalize_value,
    format_number,
)
from blobstore.errors import InvalidJson
from tests import blob_id_vectors as vectors
from tests.rpc_helpers import sha256_id

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


# -- the documented vectors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "vector", vectors.content_vectors(), ids=lambda v: f"{v.number}-{v.blob_type}"
)
def test_documented_content_gets_documented_bytes_and_id(vector: vectors.ContentVector) -> None:
    if vector.blob_type == "Json":
        assert canonicalize_text(vector.content) == vector.stored
        assert canonicalize_text(vector.content.decode("utf-8")) == vector.stored
        assert canonicalize_text(vector.stored) == vector.stored
        # json.loads also keeps integers exact and makes the rest doubles: same value.
        assert canonicalize_value(json.loads(vector.content)) == vector.stored
    else:
        assert vector.blob_type == "Binary"
        assert vector.stored == vector.content
    assert sha256_id(vector.stored) == vector.blob_id


def test_rfc8785_sample_has_the_bytes_printed_in_section_3_2_4() -> None:
    sample = next(v for v in vectors.content_vectors() if v.number == 1)
    assert canonicalize_text(sample.content) == vectors.rfc8785_section_3_2_4_bytes()


def test_rfc8785_sorting_sample_comes_out_in_the_rfc_order() -> None:
    sample = next(v for v in vectors.content_vectors() if v.number == 2)
    assert list(json.loads(canonicalize_text(sample.content)).values()) == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_the_two_spellings_from_issue_2_get_one_id() -> None:
    first = canonicalize_text(b'{"b":1,"a":[1.0,"x"]}')
    second = canonicalize_text(b'{ "a" : [1, "x"], "b" : 1e0 }')
    assert first == second == b'{"a":[1,"x"],"b":1}'


@pytest.mark.parametrize("vector", vectors.number_vectors(), ids=lambda v: v.bits)
def test_rfc8785_appendix_b_numbers(vector: vectors.NumberVector) -> None:
    value = double(vector.bits)
    if vector.text is None:
        with pytest.raises(ValueError):
            format_number(value)
        with pytest.raises(InvalidJson, match="only finite numbers"):
            canonicalize_value([value])
        return
    assert format_number(value) == vector.text
    assert canonicalize_value(value) == vector.text.encode()
    assert rfc8785.dumps(value) == vector.text.encode()
    # The written text reads back as the same double and is already canonical.
    read_back = struct.pack(">d", float(vector.text)).hex()
    assert read_back == ("0" * 16 if value == 0 else vector.bits)  # "0" is +0.0
    assert canonicalize_text(vector.text) == vector.text.encode()


@pytest.mark.parametrize("vector", vectors.rejected_content(), ids=lambda v: repr(v.content))
def test_documented_rejections_say_what_and_where(vector: vectors.RejectedContent) -> None:
    with pytest.raises(InvalidJson) as caught:
        canonicalize_text(vector.content)
    assert vector.words in str(caught.value)
    assert caught.value.position == vector.position
    assert str(caught.value).endswith(f"(at byte {vector.position})")


# -- the rfc8785 package as reference, over its domain --------------------------------------

# Keys drawn often from the characters where code-point and UTF-16 order disagree.
_TRICKY_KEY_CHARS = [
    "a",
    "B",
    "é",
    "\x7f",
    "\u0080",
    "\ue000",
    "\ufb33",
    "\uffff",
    "😀",
    "\U00010000",
]
keys = st.text(st.sampled_from(_TRICKY_KEY_CHARS), max_size=3) | st.text(
    st.characters(codec="utf-8"), max_size=4
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


@PROPERTY
@given(json_values)
def test_value_is_canonicalised_as_rfc8785_does(value: Any) -> None:
    assert canonicalize_value(value) == rfc8785.dumps(value)


@PROPERTY
@given(json_values, st.randoms(use_true_random=False))
def test_any_spelling_of_a_value_is_canonicalised_as_rfc8785_does(
    value: Any, rnd: random.Random
) -> None:
    expected = rfc8785.dumps(value)
    spellings = [
        spell(value, rnd),
        json.dumps(value),
        json.dumps(
            shuffled(value, rnd),
            ensure_ascii=rnd.random() < 0.5,
            indent=rnd.choice([None, 0, 2, "\t"]),
            separators=rnd.choice([None, (",", ":"), (" , ", " : ")]),
        ),
    ]
    for text in spellings:
        assert canonicalize_text(text.encode("utf-8")) == expected, text
    assert canonicalize_text(spellings[0]) == expected  # str input too


@PROPERTY
@given(json_values)
def test_canonical_text_is_its_own_canonical_form(value: Any) -> None:
    canonical = rfc8785.dumps(value)
    assert canonicalize_text(canonical) == canonical


@settings(max_examples=500, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_double_is_written_as_rfc8785_writes_it(value: float) -> None:
    assert format_number(value).encode() == rfc8785.dumps(value)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack(">d", bits.to_bytes(8, "big"))[0]))
def test_doubles_from_uniform_bit_patterns_are_written_as_rfc8785_writes_them(
    value: float,
) -> None:
    assume(value == value and abs(value) != float("inf"))
    assert format_number(value).encode() == rfc8785.dumps(value)


def test_rfc8785_and_the_extension_agree_on_large_doubles_and_negative_zero() -> None:
    """What the rfc8785 package does with 2.0**60 and -0.0 is what we do; big ints differ."""
    assert canonicalize_value(2.0**60) == rfc8785.dumps(2.0**60) == b"1152921504606847000"
    assert canonicalize_value(-0.0) == rfc8785.dumps(-0.0) == b"0"
    assert canonicalize_text(b"-0.0") == canonicalize_text(b"-0") == b"0"
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps(2**60)
    assert canonicalize_value(2**60) == b"1152921504606846976"


# -- the large-integer extension ------------------------------------------------------------

big_ints = st.integers(MAX_SAFE_INTEGER + 1, 10**80) | st.integers(-(10**80), -MAX_SAFE_INTEGER - 1)


@PROPERTY
@given(big_ints)
def test_integers_beyond_doubles_are_kept_exact(number: int) -> None:
    digits = str(number).encode()
    assert canonicalize_text(digits) == digits
    assert canonicalize_text(b"[ " + digits + b" ]") == b"[" + digits + b"]"
    assert canonicalize_value({"n": number}) == b'{"n":' + digits + b"}"
    # With a fraction or an exponent it is a double and follows JCS.
    as_double = format_number(float(number)).encode()
    assert canonicalize_text(digits + b".0") == as_double
    assert canonicalize_text(digits + b"e0") == as_double


extended_values = st.recursive(
    scalars | big_ints,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


@PROPERTY
@given(extended_values, st.randoms(use_true_random=False))
def test_with_large_integers_text_and_value_agree_and_are_idempotent(
    value: Any, rnd: random.Random
) -> None:
    canonical = canonicalize_value(value)
    assert canonicalize_text(spell(value, rnd)) == canonical
    assert canonicalize_text(canonical) == canonical


def test_integer_digit_limit_is_exact() -> None:
    longest = "9" * MAX_INT_DIGITS
    assert canonicalize_text(f"[-{longest}]") == f"[-{longest}]".encode()
    assert canonicalize_value(-int(longest)) == f"-{longest}".encode()
    with pytest.raises(InvalidJson) as caught:
        canonicalize_text(f'{{"n": [-{longest}9]}}')
    assert f"integer has {MAX_INT_DIGITS + 1} digits, more than the limit of {MAX_INT_DIGITS}" in (
        str(caught.value)
    )
    assert caught.value.position == 7
    with pytest.raises(InvalidJson, match=r"^\$\.n\[0\]: integer has more digits than the limit"):
        canonicalize_value({"n": [10**MAX_INT_DIGITS]})


# -- the fast path never disagrees with the exact one ---------------------------------------


@PROPERTY
@given(extended_values, st.randoms(use_true_random=False), st.data())
def test_fast_path_result_is_always_the_exact_paths(
    value: Any, rnd: random.Random, data: st.DataObject
) -> None:
    text = spell(value, rnd, duplicates=rnd.random() < 0.3).encode("utf-8")
    if data.draw(st.booleans()):
        text = mutate(text, rnd)
    try:
        fast = canonical_json._canonicalize_fast(text)
    except (orjson.JSONDecodeError, canonical_json._Unsure):
        return  # the fast path defers to the exact one: nothing to compare
    assert canonical_json._canonicalize_exact(text) == fast


@PROPERTY
@given(
    st.dictionaries(keys, json_values, min_size=1, max_size=4), st.randoms(use_true_random=False)
)
def test_a_duplicate_key_anywhere_is_rejected_at_its_position(
    value: dict[str, Any], rnd: random.Random
) -> None:
    text = spell([value], rnd, duplicates=True, force_duplicate=True).encode("utf-8")
    with pytest.raises(InvalidJson, match="duplicate object key") as caught:
        canonicalize_text(text)
    assert caught.value.position is not None
    assert text[caught.value.position : caught.value.position + 1] == b'"'


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": "x:y", "a": 1}',
        b'{"a": 1, "\\u0061": 2}',
        b'{"a\\u003a": 1, "a:": 2}',
        b'{"k\\u003A": 1, "k:": 2}',
        b'[{"a": 1}, {"b": {"c": 1, "c": 1}}]',
    ],
)
def test_duplicates_that_colons_and_escapes_could_hide_are_rejected(text: bytes) -> None:
    with pytest.raises(InvalidJson, match="duplicate object key"):
        canonicalize_text(text)


def test_colons_in_strings_do_not_confuse_the_duplicate_check() -> None:
    assert canonicalize_text(b'{"a:": ":", "b\\u003a": "\\u003a"}') == b'{"a:":":","b:":":"}'


# -- rejections beyond the documented table -------------------------------------------------


def test_nesting_limit_is_exact_for_arrays_and_objects() -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert canonicalize_text(deepest) == deepest.encode()
    with pytest.raises(InvalidJson, match=f"nested deeper than {MAX_DEPTH} levels") as caught:
        canonicalize_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert caught.value.position == MAX_DEPTH
    objects = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidJson, match="nested deeper") as caught:
        canonicalize_text(objects)
    assert caught.value.position == 5 * MAX_DEPTH
    assert canonicalize_text(objects[5:-1]) == objects[5:-1].encode()


def test_absurd_nesting_is_rejected_not_a_crash() -> None:
    with pytest.raises(InvalidJson, match="nested deeper") as caught:
        canonicalize_text(b"[" * 100_000)
    assert caught.value.position == MAX_DEPTH
    with pytest.raises(InvalidJson, match="nested deeper"):
        canonicalize_text(b'{"a":' * 100_000)


def test_nesting_limit_of_python_values() -> None:
    value: list[Any] = []
    for _ in range(MAX_DEPTH - 1):
        value = [value]
    assert canonicalize_value(value) == b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    with pytest.raises(InvalidJson, match=f"nested deeper than {MAX_DEPTH} levels"):
        canonicalize_value([value])
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidJson, match="nested deeper"):
        canonicalize_value(loop)


def test_lone_surrogate_in_a_python_str_is_rejected_with_its_position() -> None:
    with pytest.raises(InvalidJson, match="lone UTF-16 surrogate U\\+D800") as caught:
        canonicalize_text('["é", "a\ud800"]')
    assert caught.value.position == 7  # where the string starts; "é" takes two bytes


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, float("nan")]}, "$.a[1]: nan is not JSON"),
        ([float("inf")], "$[0]: inf is not JSON"),
        ({"x": float("-inf")}, "$.x: -inf is not JSON"),
        ({"k": {1, 2}}, "$.k: set is not a JSON value"),
        ({"b": b"x"}, "$.b: bytes is not a JSON value"),
        ({1: "x"}, "$: object key 1 is not a string"),
        ({"s": ["ok", "\ud800"]}, "$.s[1]: string has a lone UTF-16 surrogate"),
        ({"\udead": 1}, '$["\\udead"] (its key): string has a lone UTF-16 surrogate'),
        ({"a b": {"c": float("nan")}}, '$["a b"].c: nan is not JSON'),
        ({"é": [None, object()]}, '$["é"][1]: object is not a JSON value'),
    ],
)
def test_python_values_without_json_form_are_rejected_with_their_path(
    value: object, message: str
) -> None:
    with pytest.raises(InvalidJson) as caught:
        canonicalize_value(value)
    assert str(caught.value).startswith(message)
    str(caught.value).encode("utf-8")  # the message itself is valid Unicode


def test_format_number_refuses_what_has_no_json_form() -> None:
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            format_number(value)


@pytest.mark.parametrize(
    "text",
    [b"", b" ", b"nul", b"[1, 2", b'{"a" 1}', b"[01]", b"+1", b".5", b"1.", b"1e", b'"\\x"'],
)
def test_every_syntax_error_has_a_position(text: bytes) -> None:
    with pytest.raises(InvalidJson) as caught:
        canonicalize_text(text)
    assert caught.value.position is not None
    assert 0 <= caught.value.position <= len(text)


# -- Python values: what is accepted, and nothing is changed --------------------------------


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Ratio(float):
    pass


def test_python_value_kinds_beyond_plain_json_types() -> None:
    plain: dict[str, Any] = {"a": [1, 2], "b": "x", "c": 0.5, "d": 1}
    exotic = OrderedDict(
        [("d", Colour.RED), ("c", Ratio(0.5)), ("b", Name("x")), (Name("a"), (1, 2))]
    )
    assert canonicalize_value(exotic) == canonicalize_value(plain) == rfc8785.dumps(plain)


def test_canonicalising_a_value_does_not_change_it() -> None:
    value = {"b": [1.5, {"z": 2**70, "y": "😀"}], "a": 1, "\ue000": None}
    before = copy.deepcopy(value)
    canonicalize_value(value)
    assert value == before
    assert list(value) == list(before)


# -- helpers: many spellings of one value ---------------------------------------------------


def spell(
    value: Any, rnd: random.Random, *, duplicates: bool = False, force_duplicate: bool = False
) -> str:
    """JSON text of `value`, written differently each time, possibly with duplicate keys."""
    state = {"forced": not force_duplicate}

    def ws() -> str:
        return rnd.choice(["", "", "", " ", "\n", "\t", "\r\n  "])

    def write(item: Any) -> str:
        if item is None:
            return "null"
        if item is True:
            return "true"
        if item is False:
            return "false"
        if isinstance(item, int):
            return spell_int(item, rnd)
        if isinstance(item, float):
            return spell_float(item, rnd)
        if isinstance(item, str):
            return spell_str(item, rnd)
        if isinstance(item, list):
            return "[" + ws() + ",".join(ws() + write(x) + ws() for x in item) + "]"
        members = [(spell_str(k, rnd), write(v)) for k, v in item.items()]
        if members and duplicates and (not state["forced"] or rnd.random() < 0.3):
            key = rnd.choice(list(item))
            members.append((spell_str(key, rnd), write(rnd.choice([1, "other", None]))))
            state["forced"] = True
        rnd.shuffle(members)
        return "{" + ",".join(f"{ws()}{k}{ws()}:{ws()}{v}{ws()}" for k, v in members) + ws() + "}"

    return ws() + write(value) + ws()


def spell_int(number: int, rnd: random.Random) -> str:
    if abs(number) > MAX_SAFE_INTEGER:
        return str(number)  # any other spelling would make it a double
    if number == 0:
        return rnd.choice(["0", "-0", "0.0", "-0.0", "0e0", "0.000E-5"])
    return spell_decimal(Decimal(number), rnd)


def spell_float(value: float, rnd: random.Random) -> str:
    if value == 0:
        return rnd.choice(["0", "-0", "0.0", "-0.0", "0e0", "0.000E+5"])
    choice = rnd.random()
    if choice < 0.15:
        return format(value, ".17e")  # 17 significant digits always read back the same
    if choice < 0.3:
        return json.dumps(value)
    return spell_decimal(Decimal(repr(value)), rnd)


def spell_decimal(number: Decimal, rnd: random.Random) -> str:
    """The exact decimal `number`, with the point and the exponent moved around."""
    sign, digit_tuple, exponent = number.normalize().as_tuple()  # no trailing zeros
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple))
    # number == digits * 10**exponent; write it as mantissa * 10**written_exponent.
    point = rnd.randint(0, len(digits))
    zeros = "0" * rnd.randint(0, 2)
    if point == 0:
        mantissa = "0." + digits + zeros
    elif point < len(digits) or zeros:
        mantissa = digits[:point] + "." + digits[point:] + zeros
    else:
        mantissa = digits
    written_exponent = exponent + len(digits) - point
    text = ("-" if sign else "") + mantissa
    if written_exponent or rnd.random() < 0.2:
        marker = rnd.choice(["e", "E"])
        plus = rnd.choice(["", "+"]) if written_exponent >= 0 else "-"
        text += f"{marker}{plus}{'0' * rnd.randint(0, 2)}{abs(written_exponent)}"
    return text


_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def spell_str(text: str, rnd: random.Random) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char == '"' or char == "\\" or code < 0x20 or rnd.random() < 0.2:
            if char in _SHORT_ESCAPES and rnd.random() < 0.5:
                out.append(_SHORT_ESCAPES[char])
            elif char in '"\\/' and rnd.random() < 0.5:
                out.append("\\" + char)
            else:
                out.append(u_escape(code, rnd))
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def u_escape(code: int, rnd: random.Random) -> str:
    if code > 0xFFFF:
        code -= 0x10000
        return u_escape(0xD800 + (code >> 10), rnd) + u_escape(0xDC00 + (code & 0x3FF), rnd)
    escape = f"\\u{code:04x}"
    return escape.upper().replace("\\U", "\\u") if rnd.random() < 0.5 else escape


def shuffled(value: Any, rnd: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def mutate(text: bytes, rnd: random.Random) -> bytes:
    """`text` with one byte inserted, removed or replaced: mostly invalid, sometimes not."""
    position = rnd.randint(0, len(text))
    byte = bytes([rnd.choice(b'{}[]:,"\\ 0123456789.eE+-tfnu\xc3\xa9\xff')])
    action = rnd.randint(0, 2)
    if action == 0:
        return text[:position] + byte + text[position:]
    if action == 1:
        return text[:position] + text[position + 1 :]
    return text[:position] + byte + text[position + 1 :]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'{"a": 1, "a": 2}', "duplicate object key 'a'"),
        (b"[1, NaN]", "NaN is not JSON"),
        (b"[1e400]", "number 1e400 is outside the range of a double"),
        (b'["\\ud800"]', "lone UTF-16 surrogate"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper than"),
        (b"[" * 100_000, "nested deeper than"),
        (b"1" * (MAX_INT_DIGITS + 1), "more digits than the limit of"),
    ],
)
def test_past_the_locate_limit_errors_still_say_what(
    monkeypatch: pytest.MonkeyPatch, text: bytes, words: str
) -> None:
    """Finding where takes a second, slow reading, which big documents are spared."""
    monkeypatch.setattr(canonical_json, "LOCATE_LIMIT", 2)
    with pytest.raises(InvalidJson) as caught:
        canonicalize_text(text)
    assert words in str(caught.value)
    assert caught.value.position is None
