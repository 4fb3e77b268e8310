"""Every example of the JSON-RPC 2.0 specification's "Examples" section, adapted to our methods.

https://www.jsonrpc.org/specification#examples - the spec's methods
(subtract, sum, update, get_data...) become blobs/put and blobs/get; its
bodies, ids, notifications, batches and broken inputs are kept as they are.
They run against a real bridge and server over HTTP; the parse-level ones
also over stdio, which shares the same core but has its own framing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from blobstore.client import BlobClient
from tests.bridge_processes import BridgeProcess, HttpRpc, Stack
from tests.bridge_seed import json_id

INVALID_REQUEST = {"code": -32600, "message": "Invalid Request"}
PARSE_ERROR = {"code": -32700, "message": "Parse error"}
METHOD_NOT_FOUND = {"code": -32601, "message": "Method not found"}


def post(rpc: HttpRpc, body: str) -> Any:
    """Posts a body as written; returns the decoded response, None for 204."""
    reply = rpc.post(body.encode())
    if reply.status == 204:
        assert reply.body == b""
        return None
    assert reply.status == 200, reply
    return reply.json()


def error_of(response: dict[str, Any]) -> dict[str, Any]:
    """The error object without its `data` (the spec's examples show none)."""
    assert response["jsonrpc"] == "2.0"
    assert set(response) == {"jsonrpc", "id", "error"}, response
    assert isinstance(response["error"]["data"], dict)
    return {k: v for k, v in response["error"].items() if k != "data"}


# -- rpc call with positional parameters ------------------------------------------


def test_call_with_positional_parameters(rpc: HttpRpc) -> None:
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}
    response = post(rpc, '{"jsonrpc": "2.0", "method": "blobs/put", "params": [[42, 23]], "id": 1}')
    assert response == {"jsonrpc": "2.0", "result": {"blob_id": json_id([42, 23])}, "id": 1}
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}
    response = post(
        rpc, '{"jsonrpc": "2.0", "method": "blobs/put", "params": [[23, 42], "Json"], "id": 2}'
    )
    assert response == {"jsonrpc": "2.0", "result": {"blob_id": json_id([23, 42])}, "id": 2}
    get = '{"jsonrpc": "2.0", "method": "blobs/get", "params": ["%s"], "id": 3}'
    response = post(rpc, get % json_id([23, 42]))
    assert response == {
        "jsonrpc": "2.0",
        "result": {"data": [23, 42], "blob_type": "data"},
        "id": 3,
    }


# -- rpc call with named parameters -------------------------------------------------


def test_call_with_named_parameters(rpc: HttpRpc) -> None:
    # --> {"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, ...
    first = post(
        rpc,
        '{"jsonrpc": "2.0", "method": "blobs/put",'
        ' "params": {"data": {"subtrahend": 23, "minuend": 42}, "blob_type": "Json"}, "id": 3}',
    )
    # Named parameters in the other order, and the data's keys too: the same result.
    second = post(
        rpc,
        '{"jsonrpc": "2.0", "method": "blobs/put",'
        ' "params": {"blob_type": "Json", "data": {"minuend": 42, "subtrahend": 23}}, "id": 4}',
    )
    blob_id = json_id({"minuend": 42, "subtrahend": 23})
    assert first == {"jsonrpc": "2.0", "result": {"blob_id": blob_id}, "id": 3}
    assert second == {"jsonrpc": "2.0", "result": {"blob_id": blob_id}, "id": 4}


# -- a Notification ---------------------------------------------------------------


def test_notifications_get_no_response(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    # --> {"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}
    assert post(rpc, '{"jsonrpc": "2.0", "method": "blobs/put", "params": [[1,2,3,4,5]]}') is None
    # The call was made all the same: the blob is stored.
    assert grpc_client.stat(json_id([1, 2, 3, 4, 5])) is not None
    # --> {"jsonrpc": "2.0", "method": "foobar"}
    assert post(rpc, '{"jsonrpc": "2.0", "method": "foobar"}') is None
    # Not even an error: a notification with bad params is not answered either.
    assert post(rpc, '{"jsonrpc": "2.0", "method": "blobs/get", "params": {"blob_id": 1}}') is None


# -- rpc call of non-existent method ----------------------------------------------------


def test_call_of_a_non_existent_method(rpc: HttpRpc) -> None:
    # --> {"jsonrpc": "2.0", "method": "foobar", "id": "1"}
    response = post(rpc, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
    assert response["id"] == "1"
    assert error_of(response) == METHOD_NOT_FOUND
    assert response["error"]["data"]["method"] == "foobar"


# -- rpc call with invalid JSON ---------------------------------------------------------

INVALID_JSON = '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'


def test_call_with_invalid_json(rpc: HttpRpc) -> None:
    response = post(rpc, INVALID_JSON)
    assert response["id"] is None
    assert error_of(response) == PARSE_ERROR


# -- rpc call with invalid Request object ----------------------------------------------


def test_call_with_an_invalid_request_object(rpc: HttpRpc) -> None:
    # --> {"jsonrpc": "2.0", "method": 1, "params": "bar"}
    response = post(rpc, '{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert response["id"] is None
    assert error_of(response) == INVALID_REQUEST


# -- rpc call Batch, invalid JSON ----------------------------------------------------------

BATCH_INVALID_JSON = """[
  {"jsonrpc": "2.0", "method": "blobs/put", "params": [[1,2,4]], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"""


def test_batch_with_invalid_json(rpc: HttpRpc) -> None:
    response = post(rpc, BATCH_INVALID_JSON)
    assert isinstance(response, dict)  # one error, not an array
    assert response["id"] is None
    assert error_of(response) == PARSE_ERROR


# -- rpc call with an empty Array, invalid Batch ------------------------------------------------


def test_empty_batch(rpc: HttpRpc) -> None:
    response = post(rpc, "[]")
    assert isinstance(response, dict)
    assert response["id"] is None
    assert error_of(response) == INVALID_REQUEST


def test_invalid_batch_of_one(rpc: HttpRpc) -> None:
    response = post(rpc, "[1]")
    assert isinstance(response, list) and len(response) == 1
    assert response[0]["id"] is None
    assert error_of(response[0]) == INVALID_REQUEST


def test_invalid_batch_of_three(rpc: HttpRpc) -> None:
    response = post(rpc, "[1,2,3]")
    assert isinstance(response, list) and len(response) == 3
    for item in response:
        assert item["id"] is None
        assert error_of(item) == INVALID_REQUEST


# -- rpc call Batch ---------------------------------------------------------------------

BATCH = """[
  {"jsonrpc": "2.0", "method": "blobs/put", "params": [[1,2,4]], "id": "1"},
  {"jsonrpc": "2.0", "method": "blobs/put", "params": [7]},
  {"jsonrpc": "2.0", "method": "blobs/put", "params": {"data": [42,23]}, "id": "2"},
  {"foo": "boo"},
  {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
  {"jsonrpc": "2.0", "method": "blobs/get", "params": {"blob_id": "%s"}, "id": "9"}
]"""


def test_batch(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    stored = json_id(["hello", 5])
    grpc_client.put_json(["hello", 5])
    response = post(rpc, BATCH % stored)
    assert isinstance(response, list)
    # Answers come in any order; the invalid request is the one with a null id.
    by_id = {item["id"]: item for item in response}
    assert len(response) == len(by_id) == 5
    assert by_id["1"] == {"jsonrpc": "2.0", "result": {"blob_id": json_id([1, 2, 4])}, "id": "1"}
    assert by_id["2"] == {"jsonrpc": "2.0", "result": {"blob_id": json_id([42, 23])}, "id": "2"}
    assert error_of(by_id[None]) == INVALID_REQUEST
    assert error_of(by_id["5"]) == METHOD_NOT_FOUND
    assert by_id["9"] == {
        "jsonrpc": "2.0",
        "result": {"data": ["hello", 5], "blob_type": "data"},
        "id": "9",
    }
    # The notification in the batch was carried out too.
    assert grpc_client.stat(json_id(7)) is not None


# -- rpc call Batch (all notifications) ----------------------------------------------------


def test_batch_of_notifications_only(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    body = """[
      {"jsonrpc": "2.0", "method": "blobs/put", "params": [[1,2,4,"notify_sum"]]},
      {"jsonrpc": "2.0", "method": "blobs/put", "params": [[7,"notify_hello"]]}
    ]"""
    assert post(rpc, body) is None
    assert grpc_client.stat(json_id([1, 2, 4, "notify_sum"])) is not None
    assert grpc_client.stat(json_id([7, "notify_hello"])) is not None


# -- ids and the rest of the Request object's rules -----------------------------------------


@pytest.mark.parametrize(
    ("id_text", "echoed"),
    [
        ('"abc"', '"abc"'),
        ("0", "0"),
        ("-17", "-17"),
        ("18446744073709551615", "18446744073709551615"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        ("1.5", "1.5"),
        ("1e3", "1e3"),
        ("null", "null"),  # allowed, if discouraged: a request, not a notification
        ('"\\u00e9\\ud83d\\ude00"', '"\u00e9\U0001f600"'),
    ],
)
def test_ids_are_echoed_exactly(rpc: HttpRpc, id_text: str, echoed: str) -> None:
    reply = rpc.post(
        b'{"jsonrpc": "2.0", "method": "blobs/put", "params": [1], "id": %s}' % id_text.encode()
    )
    assert reply.status == 200
    assert b'"id":%s,' % echoed.encode() in reply.body, reply.body
    assert "result" in reply.json()


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ('{"jsonrpc": "2.0", "method": "blobs/put", "params": [1], "id": true}', "id must be"),
        ('{"jsonrpc": "2.0", "method": "blobs/put", "params": [1], "id": [1]}', "id must be"),
        ('{"jsonrpc": "2.0", "method": "blobs/put", "params": [1], "id": {}}', "id must be"),
        ('{"jsonrpc": "2.0", "method": "blobs/put", "id": "\\udc00"}', "id must be"),
        ('{"method": "blobs/put", "params": [1], "id": 1}', '"jsonrpc" member is missing'),
        ('{"jsonrpc": "1.0", "method": "blobs/put", "params": [1], "id": 1}', 'must be "2.0"'),
        ('{"jsonrpc": 2.0, "method": "blobs/put", "params": [1], "id": 1}', 'must be "2.0"'),
        ('{"jsonrpc": "2.0", "params": [1], "id": 1}', '"method" member is missing'),
        ('{"jsonrpc": "2.0", "method": null, "id": 1}', '"method" must be a string'),
        ('{"jsonrpc": "2.0", "method": "blobs/put", "params": 1, "id": 1}', '"params" must be'),
        ('{"jsonrpc": "2.0", "method": "blobs/put", "params": null, "id": 1}', '"params" must be'),
        ('{"jsonrpc": "2.0", "jsonrpc": "2.0", "method": "blobs/put", "id": 1}', "duplicate"),
        ('"blobs/put"', "must be an object"),
        ("NaN", "not a valid object"),
    ],
)
def test_invalid_request_objects(rpc: HttpRpc, body: str, detail: str) -> None:
    response = post(rpc, body)
    assert error_of(response) == INVALID_REQUEST
    assert detail in response["error"]["data"]["detail"]
    # The id is echoed when it could be read, else null.
    valid_id = '"id": 1' in body and "duplicate" not in detail
    assert response["id"] == (1 if valid_id else None)


def test_parse_errors(rpc: HttpRpc) -> None:
    for body in [b"", b" ", b"{", b'{"a":1} {"b":2}', b"\xff\xfe{}", b'"\x01"', b"[" * 100_000]:
        reply = rpc.post(body)
        assert reply.status == 200
        response = reply.json()
        assert response["id"] is None
        assert error_of(response) == PARSE_ERROR, body[:20]
        assert response["error"]["data"]["detail"]


# -- the same core over stdio --------------------------------------------------------------


def test_spec_examples_over_stdio(bridge_stack: Stack, tmp_path: Path) -> None:
    bridge = BridgeProcess(bridge_stack.server.target, tmp_path / "stdio.log", stdio=True).start()
    try:
        bridge.send(INVALID_JSON.encode())
        assert error_of(bridge.read_message()) == PARSE_ERROR
        bridge.send(BATCH_INVALID_JSON.replace("\n", " ").encode())
        assert error_of(bridge.read_message()) == PARSE_ERROR
        bridge.send(b"[]")
        assert error_of(bridge.read_message()) == INVALID_REQUEST
        bridge.send(b"[1,2,3]")
        assert [error_of(item) for item in bridge.read_message()] == [INVALID_REQUEST] * 3
        bridge.send(b'{"jsonrpc": "2.0", "method": "foobar"}')
        bridge.send(
            b'[{"jsonrpc": "2.0", "method": "blobs/put", "params": [7]},'
            b' {"jsonrpc": "2.0", "method": "blobs/put", "params": [8]}]'
        )
        bridge.send(b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}')
        response = bridge.read_message()
        assert response["id"] == "1" and error_of(response) == METHOD_NOT_FOUND
        bridge.send(BATCH.replace("\n", " ").encode() % json_id(7).encode())
        by_id = {item["id"]: item for item in bridge.read_message()}
        assert set(by_id) == {"1", "2", None, "5", "9"}
        assert by_id["9"]["result"] == {"data": 7, "blob_type": "data"}
        bridge.close_stdin()
        assert bridge.read_line() == b""  # notifications were never answered
        assert bridge.wait() == 0
    finally:
        bridge.kill()


def test_stdio_lines_are_json_rpc_only(bridge_stack: Stack, tmp_path: Path) -> None:
    bridge = BridgeProcess(bridge_stack.server.target, tmp_path / "stdio.log", stdio=True).start()
    try:
        for i in range(20):
            bridge.send({"jsonrpc": "2.0", "id": i, "method": "blobs/put", "params": [i]})
        bridge.close_stdin()
        lines = []
        while line := bridge.read_line():
            lines.append(json.loads(line))
        assert sorted(item["id"] for item in lines) == list(range(20))
        assert all(item["result"]["blob_id"] == json_id(item["id"]) for item in lines)
        assert bridge.wait() == 0
        assert "JSON-RPC on stdio" in bridge.log()
    finally:
        bridge.kill()
