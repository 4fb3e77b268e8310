"""A large Put's `json` Value is cut out unparsed (grpc/wire.py), and what is left reads
exactly as protobuf reads the whole message; anything unusual goes to protobuf."""

from __future__ import annotations

import os
import random

import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.grpc.wire import LARGE_JSON_PUT_BYTES, JsonPutRequest, parse_put_request


def _large_value() -> struct_pb2.Value:
    numbers = struct_pb2.ListValue()
    for n in range(LARGE_JSON_PUT_BYTES // 4):
        numbers.values.add().number_value = n
    return struct_pb2.Value(list_value=numbers)


LARGE = _large_value()


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"expected_id": "sha256:" + "ab" * 32},
        {"blob_type": pb.BLOB_TYPE_FLOW, "filename": "f.json", "content_type": "application/json"},
    ],
)
def test_a_large_json_put_keeps_its_value_serialized_and_the_rest_as_protobuf_reads_it(
    fields: dict[str, object],
) -> None:
    request = pb.PutRequest(json=LARGE, **fields)  # type: ignore[arg-type]
    data = request.SerializeToString()
    parsed = parse_put_request(data)
    assert isinstance(parsed, JsonPutRequest)
    assert struct_pb2.Value.FromString(parsed.json_bytes) == LARGE
    assert parsed.WhichOneof("content") == "json"
    assert parsed.ByteSize() == len(data)
    for name in ("expected_id", "blob_type", "filename", "content_type"):
        assert getattr(parsed, name) == getattr(request, name)
    assert parsed.HasField("filename") == request.HasField("filename")
    assert parsed.HasField("content_type") == request.HasField("content_type")


def test_small_data_repeated_or_broken_messages_go_to_protobuf() -> None:
    small = pb.PutRequest(json=struct_pb2.Value(number_value=1)).SerializeToString()
    assert isinstance(parse_put_request(small), pb.PutRequest)
    data = pb.PutRequest(data=os.urandom(LARGE_JSON_PUT_BYTES + 1)).SerializeToString()
    assert isinstance(parse_put_request(data), pb.PutRequest)
    # Two json fields: protobuf merges them, so protobuf reads it.
    one = pb.PutRequest(json=LARGE).SerializeToString()
    twice = parse_put_request(one + one)
    assert isinstance(twice, pb.PutRequest)
    assert twice == pb.PutRequest.FromString(one + one)
    # data after json: the last of the oneof wins, as protobuf says.
    mixed = one + pb.PutRequest(data=b"x").SerializeToString()
    assert parse_put_request(mixed) == pb.PutRequest.FromString(mixed)
    with pytest.raises(DecodeError):
        parse_put_request(one[:-1])  # cut inside the Value: protobuf's own error


def test_random_bytes_parse_as_protobuf_parses_them_or_fail_as_it_fails() -> None:
    rng = random.Random(20261203)
    base = pb.PutRequest(json=LARGE, expected_id="sha256:" + "0" * 64).SerializeToString()
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):  # damage the few bytes around the fields' tags
            data[rng.choice([0, 1, 2, 3, len(data) - 70, len(data) - 66])] = rng.randrange(256)
        try:
            expected = pb.PutRequest.FromString(bytes(data))
        except DecodeError:
            expected = None
        try:
            parsed = parse_put_request(bytes(data))
        except DecodeError:
            assert expected is None
            continue
        if isinstance(parsed, JsonPutRequest):
            if expected is None:  # only the Value is broken: the worker reports it
                with pytest.raises(DecodeError):
                    struct_pb2.Value.FromString(parsed.json_bytes)
                continue
            rebuilt = pb.PutRequest()
            rebuilt.CopyFrom(parsed.head)
            rebuilt.json.CopyFrom(struct_pb2.Value.FromString(parsed.json_bytes))
            assert rebuilt == expected
        else:
            assert parsed == expected
