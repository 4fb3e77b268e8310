"""stepflow_wire's hand encodings agree with protobuf's own: Value walkers, GetBlob replies."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from blobstore.api.stepflow.v1 import blobs_pb2 as pb
from blobstore.errors import InvalidJson
from blobstore.grpc.stepflow_wire import (
    encode_json_text,
    get_blob_reply,
    json_content,
    raw_content,
    to_python,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _reference(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.Parse(orjson.dumps(value), message)
    return message


@given(json_values)
def test_encoded_text_is_the_value_json_format_builds(value: Any) -> None:
    encoded = encode_json_text(orjson.dumps(value))
    assert encoded is not None
    assert struct_pb2.Value.FromString(encoded) == _reference(value)


@given(json_values)
def test_to_python_is_message_to_dict(value: Any) -> None:
    message = _reference(value)
    assert to_python(message) == json_format.MessageToDict(message)


def test_integers_past_64_bits_become_the_nearest_double_as_in_json_format() -> None:
    text = b"[18446744073709551617, -1000000000000000000000000000001]"
    encoded = encode_json_text(text)
    assert encoded is not None
    reference = struct_pb2.Value()
    json_format.Parse(text, reference)
    assert struct_pb2.Value.FromString(encoded) == reference


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_non_json_numbers_are_refused(number: float) -> None:
    with pytest.raises(InvalidJson):
        to_python(struct_pb2.Value(number_value=number))
    with pytest.raises(InvalidJson):
        to_python(struct_pb2.Value())


@given(
    st.one_of(json_values.map(lambda v: ("json", v)), st.binary().map(lambda b: ("raw", b))),
    st.sampled_from(["data", "flow", "binary"]),
    st.none() | st.text(),
    st.none() | st.text(),
)
def test_get_blob_reply_is_the_message_protobuf_builds(
    content: tuple[str, Any], blob_type: str, filename: str | None, content_type: str | None
) -> None:
    kind, value = content
    expected = pb.GetBlobResponse(blob_type=blob_type, blob_id="ab" * 32)
    if kind == "json":
        expected.json_data.CopyFrom(_reference(value))
        encoded = json_content(_reference(value).SerializeToString())
    else:
        expected.raw_data = value
        encoded = raw_content(value)
    if filename is not None:
        expected.filename = filename
    if content_type is not None:
        expected.content_type = content_type
    reply = get_blob_reply(encoded, blob_type, "ab" * 32, filename, content_type)
    assert pb.GetBlobResponse.FromString(reply) == expected
