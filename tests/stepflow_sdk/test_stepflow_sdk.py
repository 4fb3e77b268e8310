"""Stepflow's own Python SDK, from PyPI, storing and fetching blobs through our bridge.

Each case runs twice: stepflow-py 0.7.0 as a component server over stdio, and
0.9.2 over Streamable HTTP. A stand-in runtime (tests/stepflow_sdk/runtime.py)
starts the SDK's component server, sends it `initialize` and
`components/execute`, and forwards the SDK's `blobs/*` requests to the real
bridge byte for byte; the components call the SDK's `context.put_blob` and
`context.get_blob`. What the SDK decodes is what a Stepflow user gets.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.bridge_seed import SEED_DATA, SEED_ID, json_id
from tests.stepflow_sdk.runtime import StandInRuntime

MISSING_ID = "sha256:" + "0" * 64


def _forwarded_reply(runtime: StandInRuntime, method: str, marker: str) -> dict[str, Any]:
    """The bridge's reply, as the SDK got it, to the last `method` request containing marker."""
    for call in reversed(runtime.forwarded):
        request = json.loads(call.request)
        if request["method"] == method and marker in call.request.decode():
            reply: dict[str, Any] = json.loads(call.reply)
            assert reply["id"] == request["id"]
            return reply
    raise AssertionError(f"no {method} with {marker!r} went through the bridge")


def test_the_seed_example_round_trips(runtime: StandInRuntime, sdk_grpc: BlobClient) -> None:
    output = runtime.execute("round_trip", {"value": SEED_DATA}).output
    assert output == {"blob_id": SEED_ID, "value": SEED_DATA}
    stored = sdk_grpc.get(SEED_ID)
    assert stored.info.blob_type is BlobType.JSON
    assert json.loads(stored.data) == SEED_DATA
    # What the SDK decoded: the schema's own type name, not the page's example "Json".
    reply = _forwarded_reply(runtime, "blobs/get", SEED_ID)
    assert reply["result"]["blob_type"] == "data"


def test_nested_unicode_and_big_numbers_survive(
    runtime: StandInRuntime, sdk_grpc: BlobClient
) -> None:
    value = {
        "zeta": [1, [2, [3, {"deep": [None, True, False]}]]],
        "text": 'grüße, 日本語, emoji 😀, line\u2028separator, quote " and \\',
        "big": 123456789012345678901234567890,
        "negative_big": -18446744073709551617,
        "float": 0.1,
        "tiny": 5e-324,
        "empty": [{}, [], ""],
    }
    output = runtime.execute("round_trip", {"value": value}).output
    assert output["value"] == value
    # The id of the canonical form, written out by hand: integers keep every digit.
    canonical = (
        '{"big":123456789012345678901234567890,"empty":[{},[],""],"float":0.1,'
        '"negative_big":-18446744073709551617,'
        '"text":"grüße, 日本語, emoji 😀, line\u2028separator, quote \\" and \\\\",'
        '"tiny":5e-324,"zeta":[1,[2,[3,{"deep":[null,true,false]}]]]}'
    ).encode()
    assert output["blob_id"] == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert sdk_grpc.get(output["blob_id"]).data == canonical


def test_a_flow_keeps_its_type(runtime: StandInRuntime, sdk_grpc: BlobClient) -> None:
    flow = {
        "schema": "https://stepflow.org/schemas/v1/flow.json",
        "name": f"sdk-flow-{runtime.sdk_python.parent.parent.name}",
        "steps": [
            {"id": "s1", "component": "/builtin/eval", "input": {"$from": {"workflow": "input"}}}
        ],
        "output": {"$from": {"step": "s1"}},
    }
    output = runtime.execute("round_trip", {"value": flow, "blob_type": "flow"}).output
    assert output == {"blob_id": json_id(flow), "value": flow}
    assert sdk_grpc.stat(output["blob_id"]).blob_type is BlobType.FLOW  # type: ignore[union-attr]
    reply = _forwarded_reply(runtime, "blobs/get", output["blob_id"])
    assert reply["result"]["blob_type"] == "flow"


def test_keys_in_another_order_give_the_same_id(runtime: StandInRuntime) -> None:
    first, second = runtime.execute_many(
        [
            ("put_blob", {"value": {"alpha": 1, "beta": {"x": [1, 2], "y": "z"}, "gamma": None}}),
            ("put_blob", {"value": {"gamma": None, "beta": {"y": "z", "x": [1, 2]}, "alpha": 1}}),
        ]
    )
    assert first.output["blob_id"] == second.output["blob_id"]
    assert first.output["blob_id"] == json_id(
        {"alpha": 1, "beta": {"x": [1, 2], "y": "z"}, "gamma": None}
    )


def test_a_missing_blob_makes_the_sdk_raise(runtime: StandInRuntime) -> None:
    error = runtime.execute("get_blob", {"blob_id": MISSING_ID}).error
    # The component failed because the SDK's get_blob raised with our error.
    assert "-32008" in error["message"] and "Blob not found" in error["message"], error
    reply = _forwarded_reply(runtime, "blobs/get", MISSING_ID)
    assert reply["error"]["code"] == -32008
    assert reply["error"]["data"]["reason"] == "BLOB_NOT_FOUND"


def test_an_invalid_id_makes_the_sdk_raise(runtime: StandInRuntime) -> None:
    error = runtime.execute("get_blob", {"blob_id": "sha256:not-hex"}).error
    assert "-32602" in error["message"], error
    reply = _forwarded_reply(runtime, "blobs/get", "sha256:not-hex")
    assert reply["error"]["data"]["reason"] == "INVALID_BLOB_ID"


def test_24_concurrent_calls_each_get_their_own_answer(runtime: StandInRuntime) -> None:
    values = [
        {"call": n, "payload": "x" * (n * 97), "nested": {"n": [n] * (n % 5)}} for n in range(24)
    ]
    replies = runtime.execute_many([("round_trip", {"value": value}) for value in values])
    for value, reply in zip(values, replies, strict=True):
        assert reply.output == {"blob_id": json_id(value), "value": value}
    # Every SDK request got the bridge's reply to that very request.
    for call in runtime.forwarded:
        assert json.loads(call.reply)["id"] == json.loads(call.request)["id"]
