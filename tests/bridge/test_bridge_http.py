"""The bridge over HTTP against a real gRPC server: the seed's examples, ids, types, errors, HTTP.

One server and one bridge serve the whole module (content addressing makes
tests independent of each other's blobs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.bridge_processes import BridgeProcess, HttpRpc, Stack
from tests.bridge_seed import (
    GET_REQUEST,
    GET_RESPONSE,
    GET_RESPONSE_SCHEMA_NAMES,
    PLACEHOLDER_ID,
    PUT_REQUEST,
    PUT_RESPONSE,
    SEED_DATA,
    SEED_ID,
    json_id,
    with_real_id,
)

PUT = "blobs/put"
GET = "blobs/get"


# -- the seed's examples ------------------------------------------------------


def test_seed_put_example_verbatim(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    reply = rpc.post(PUT_REQUEST.encode())
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    # The seed's response, with its placeholder replaced by the id the data really has.
    assert reply.json() == orjson.loads(with_real_id(PUT_RESPONSE))
    assert SEED_ID != PLACEHOLDER_ID
    assert grpc_client.put_json(SEED_DATA).info.blob_id == SEED_ID


def test_seed_get_example_answers_with_the_schemas_type_name(rpc: HttpRpc) -> None:
    rpc.post(PUT_REQUEST.encode())
    reply = rpc.post(with_real_id(GET_REQUEST).encode())
    assert reply.status == 200
    assert reply.json() == orjson.loads(GET_RESPONSE_SCHEMA_NAMES)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_seed_get_example_verbatim_with_the_pages_type_names(
    bridge_stack: Stack, tmp_path: Path, how: str
) -> None:
    """--blob-type-names page (or its variable) answers as the page's examples: "Json"."""
    args = ("--blob-type-names", "page") if how == "flag" else ()
    env = {**os.environ, "BLOBSTORE_BRIDGE_BLOB_TYPE_NAMES": "Page"} if how == "env" else None
    bridge = BridgeProcess(bridge_stack.server.target, tmp_path / "page.log", *args, env=env)
    bridge.start()
    page = HttpRpc(bridge.url)
    try:
        page.post(PUT_REQUEST.encode())
        reply = page.post(with_real_id(GET_REQUEST).encode())
        assert reply.json() == orjson.loads(GET_RESPONSE)
        binary = page.result(PUT, {"data": "aGk=", "blob_type": "binary"})["blob_id"]
        assert page.result(GET, [binary]) == {"data": "aGk=", "blob_type": "Binary"}
        flow = page.result(PUT, {"data": {"steps": [1]}, "blob_type": "flow"})["blob_id"]
        assert page.result(GET, [flow]) == {"data": {"steps": [1]}, "blob_type": "Json"}
    finally:
        page.close()
        bridge.kill()


def test_get_of_the_placeholder_id_is_blob_not_found(rpc: HttpRpc) -> None:
    response = rpc.call(GET_REQUEST.encode())
    assert response["id"] == "get-blob-001"
    assert response["error"]["code"] == -32008
    assert response["error"]["message"] == "Blob not found"
    assert response["error"]["data"]["blob_id"] == PLACEHOLDER_ID
    assert response["error"]["data"]["reason"] == "BLOB_NOT_FOUND"


# -- ids: equal data, equal ids, through either door ----------------------------

SPELLINGS = [
    # (what a component server sends, an equal value spelled differently for gRPC)
    ({"b": 1, "a": [1.0, "x"]}, b'{ "a" : [1, "x"], "b" : 1e0 }'),
    (
        {"\u00e9": "caf\u00e9", "\U0001f600": 1, "z": None},
        b'{"z":null,"\\u00e9":"caf\\u00e9","\\ud83d\\ude00":1}',
    ),
    (
        [123456789012345678901234567890, -(2**70)],
        b"[123456789012345678901234567890, -1180591620717411303424]",
    ),
    (0.1, b"1e-1"),
    ("text", b'"te\\u0078t"'),
    (None, b" null "),
]


@pytest.mark.parametrize(("value", "other_spelling"), SPELLINGS)
def test_bridge_and_grpc_give_equal_data_one_id(
    rpc: HttpRpc, grpc_client: BlobClient, value: Any, other_spelling: bytes
) -> None:
    blob_id = rpc.result(PUT, {"data": value, "blob_type": "Json"})["blob_id"]
    assert blob_id == grpc_client.put_json_text(other_spelling).info.blob_id
    assert blob_id == grpc_client.put_json(value).info.blob_id


def test_big_integers_stay_exact(rpc: HttpRpc) -> None:
    digits = "1" + "0" * 40
    body = b'{"jsonrpc":"2.0","id":7,"method":"blobs/put","params":{"data":{"n":%s}}}' % (
        digits.encode()
    )
    blob_id = rpc.call(body)["result"]["blob_id"]
    reply = rpc.post(orjson.dumps({"jsonrpc": "2.0", "id": 8, "method": GET, "params": [blob_id]}))
    assert b'"data":{"n":%s}' % digits.encode() in reply.body
    assert reply.json()["result"]["data"] == {"n": int(digits)}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_value_gets_the_grpc_id_and_comes_back_equal(
    rpc: HttpRpc, grpc_client: BlobClient, value: Any
) -> None:
    # Floats go as Python writes them; the service canonicalises both spellings.
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": PUT, "params": {"data": None}})
    body = body.replace(b'"data":null', b'"data":' + _python_json(value))
    blob_id = rpc.call(body)["result"]["blob_id"]
    assert blob_id == grpc_client.put_json(value).info.blob_id
    data = rpc.result(GET, {"blob_id": blob_id})["data"]
    assert _equal_json(data, value)


def _python_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _equal_json(received: Any, sent: Any) -> bool:
    if isinstance(sent, float) and isinstance(received, int | float):
        return float(received) == sent
    if isinstance(sent, list):
        return len(received) == len(sent) and all(map(_equal_json, received, sent))
    if isinstance(sent, dict):
        return received.keys() == sent.keys() and all(
            _equal_json(received[k], v) for k, v in sent.items()
        )
    return bool(received == sent)


# -- blob types and Stepflow SDK spellings ------------------------------------------


def test_stepflow_sdk_shaped_requests(rpc: HttpRpc) -> None:
    data = {"user_id": "12345", "preferences": {"theme": "dark", "notifications": True}}
    expected = json_id(data)
    for spelling in ["data", "Json", "json", "JSON", "Data", None]:
        params: dict[str, object] = {"data": data}
        if spelling is not None:
            params["blob_type"] = spelling
        assert rpc.result(PUT, params)["blob_id"] == expected
    bare_hex = expected.removeprefix("sha256:")
    assert rpc.result(GET, {"blob_id": bare_hex}) == {"data": data, "blob_type": "data"}


def test_a_flow_keeps_its_type_and_its_filename(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    flow = {"name": "f", "steps": [{"id": "s1", "component": "/python/x"}], "n": 2.0}
    for spelling in ["flow", "FLOW", "Flow"]:
        put = rpc.result(PUT, {"data": flow, "blob_type": spelling, "filename": "f.yaml"})
        assert put == {"blob_id": json_id(flow), "filename": "f.yaml"}
    got = rpc.result(GET, {"blob_id": json_id(flow)})
    assert got == {"data": flow, "blob_type": "flow", "filename": "f.yaml"}
    stored = grpc_client.get(json_id(flow))
    assert (stored.info.blob_type, stored.info.meta.filename) == (BlobType.FLOW, "f.yaml")
    # The same value as data later: the first type and filename stay.
    again = rpc.result(PUT, {"data": flow, "blob_type": "data", "filename": "other.json"})
    assert again == {"blob_id": json_id(flow), "filename": "f.yaml"}


def test_filename_errors_name_the_param(rpc: HttpRpc) -> None:
    for filename, words in [(7, "must be a string or null"), ("a\nb", "control characters")]:
        error = rpc.error(PUT, {"data": 1, "filename": filename})
        assert error["code"] == -32602
        assert error["data"]["field"] == "params.filename", error
        assert words in error["message"], error
    assert rpc.result(PUT, {"data": 1, "filename": None}) == {"blob_id": json_id(1)}


def test_binary_round_trip(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    content = bytes(range(256)) * 300 + b"\x00\xff"
    encoded = base64.b64encode(content).decode()
    result = rpc.result(PUT, {"data": encoded, "blob_type": "Binary"})
    assert result["blob_id"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert rpc.result(GET, {"blob_id": result["blob_id"]}) == {
        "data": encoded,
        "blob_type": "binary",
    }
    stored = grpc_client.get(result["blob_id"])
    assert stored.data == content and stored.info.blob_type is BlobType.BINARY
    # Any case, and the empty blob.
    empty = rpc.result(PUT, {"data": "", "blob_type": "bInArY"})["blob_id"]
    assert empty == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert rpc.result(GET, [empty]) == {"data": "", "blob_type": "binary"}


def test_blob_stored_over_grpc_is_read_over_the_bridge(
    rpc: HttpRpc, grpc_client: BlobClient
) -> None:
    blob_id = grpc_client.put_bytes(b"\x01\x02 from gRPC").info.blob_id
    result = rpc.result(GET, {"blob_id": blob_id})
    assert base64.b64decode(result["data"]) == b"\x01\x02 from gRPC"
    json_blob = grpc_client.put_json_text(b'{"k": [1, 2.5, "three"]}').info.blob_id
    assert rpc.result(GET, {"blob_id": json_blob})["data"] == {"k": [1, 2.5, "three"]}


# -- invalid params: -32602, naming the field and why ----------------------------------

HEX = "0" * 64
INVALID_PARAMS = [
    (GET, {"blob_id": "sha256:" + HEX[:-1]}, "params.blob_id", "63 characters"),
    (GET, {"blob_id": "SHA256:" + HEX}, "params.blob_id", "sha256"),
    (GET, {"blob_id": "md5:" + HEX}, "params.blob_id", "md5"),
    (GET, {"blob_id": "../../etc/passwd"}, "params.blob_id", "invalid blob id"),
    (GET, {"blob_id": HEX.upper().replace("0", "A")}, "params.blob_id", "lowercase"),
    (GET, {"blob_id": 12}, "params.blob_id", "must be a string"),
    (GET, {}, "params.blob_id", "missing"),
    (GET, ["a", "b"], "params", "expected [blob_id]"),
    (PUT, {"blob_type": "Json"}, "params.data", "missing"),
    (PUT, {"data": 1, "blob_type": "xml"}, "params.blob_type", "unknown blob type 'xml'"),
    (PUT, {"data": 1, "blob_type": 3}, "params.blob_type", "must be a string"),
    (PUT, {"data": "a GVsbG8=", "blob_type": "Binary"}, "params.data", "base64"),
    (PUT, {"data": "aGVsbG8", "blob_type": "Binary"}, "params.data", "base64"),
    (PUT, {"data": "aGVsbG9=", "blob_type": "Binary"}, "params.data", "canonical"),
    (PUT, {"data": "aGVs-G8_", "blob_type": "Binary"}, "params.data", "base64"),
    (PUT, {"data": {"x": 1}, "blob_type": "Binary"}, "params.data", "base64 string"),
    (PUT, [], "params", "expected [data]"),
]


@pytest.mark.parametrize(("method", "params", "field", "why"), INVALID_PARAMS)
def test_invalid_params_name_the_field_and_why(
    rpc: HttpRpc, method: str, params: object, field: str, why: str
) -> None:
    error = rpc.error(method, params)
    assert error["code"] == -32602
    assert error["message"].startswith(f"Invalid params: {field}: ")
    assert why in error["message"]
    assert error["data"]["field"] == field


INVALID_JSON_DATA = [
    (b'{"a": 1, "a": 2}', "params.data", "duplicate object key 'a'"),
    (b'{"x": [1, NaN]}', "params.data.x[1]", "NaN"),
    (b"[Infinity]", "params.data[0]", "Infinity"),
    (b"-Infinity", "params.data", "-Infinity"),
    (b"[1e400]", "params.data", "outside the range of a double"),
    (b'["\\ud800"]', "params.data[0]", "lone UTF-16 surrogate"),
    (b"[" * 300 + b"]" * 300, "params.data", "nested deeper than 250 levels"),
]


@pytest.mark.parametrize(("data", "field", "why"), INVALID_JSON_DATA)
def test_json_no_blob_may_hold_is_refused(rpc: HttpRpc, data: bytes, field: str, why: str) -> None:
    body = b'{"jsonrpc": "2.0", "id": "bad", "method": "blobs/put", "params": {"data": %s}}' % data
    response = rpc.call(body)
    assert response["id"] == "bad"
    error = response["error"]
    assert error["code"] == -32602, error
    assert error["message"].startswith(f"Invalid params: {field}: "), error
    assert why in error["message"]
    assert error["data"]["reason"] == "INVALID_JSON"


# -- HTTP --------------------------------------------------------------------------


def test_http_statuses(rpc: HttpRpc) -> None:
    assert rpc.request("GET", "/").status == 405
    wrong_method = rpc.request("PUT", "/", b"{}", {"Content-Type": "application/json"})
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert (
        rpc.request("POST", "/nowhere", b"{}", {"Content-Type": "application/json"}).status == 404
    )

    for content_type in ["text/plain", "application/json; charset=latin-1"]:
        reply = rpc.post(PUT_REQUEST.encode(), content_type)
        assert reply.status == 415, content_type
        assert reply.json()["error"]["code"] == -32600
        assert "Content-Type" in reply.json()["error"]["data"]["detail"]
    for content_type in [
        "application/json; charset=utf-8",
        "application/json; charset=UTF-8",
        'Application/JSON; Charset="Utf8"',
        "application/x-www-form-urlencoded",  # what `curl -d` sends
    ]:
        reply = rpc.post(PUT_REQUEST.encode(), content_type)
        assert reply.status == 200, (content_type, reply.body)
        assert "result" in reply.json(), reply.body
    no_type = rpc.request("POST", "/", b" \n" + PUT_REQUEST.encode(), {})
    assert no_type.status == 200 and "result" in no_type.json(), no_type.body
    # A form or untyped body that is not JSON is still refused, saying why.
    for headers in [{"Content-Type": "application/x-www-form-urlencoded"}, {}]:
        reply = rpc.request("POST", "/", b"data=x&blob_type=Json", headers)
        assert reply.status == 415, reply.body
        assert "not a JSON object or array" in reply.json()["error"]["data"]["detail"]

    notification = {"jsonrpc": "2.0", "method": PUT, "params": {"data": "notified"}}
    reply = rpc.post(orjson.dumps(notification))
    assert (reply.status, reply.body) == (204, b"")
    # JSON-RPC errors travel as 200 with the error in the body.
    reply = rpc.post(b"{not json")
    assert reply.status == 200 and reply.json()["error"]["code"] == -32700


def test_connection_is_kept_alive(rpc: HttpRpc) -> None:
    rpc.result(PUT, {"data": "first"})
    sock = rpc.connection.sock
    assert sock is not None
    for i in range(5):
        rpc.result(PUT, {"data": i})
    assert rpc.connection.sock is sock


def test_request_size_limit(tmp_path: Path, bridge_stack: Stack) -> None:
    limit = 4096
    bridge = BridgeProcess(
        bridge_stack.server.target, tmp_path / "bridge.log", "--max-request-bytes", str(limit)
    ).start()
    client = HttpRpc(bridge.url)
    try:
        fits = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": PUT, "params": {"data": "x"}})
        assert "result" in client.call(fits)
        too_big = orjson.dumps(
            {"jsonrpc": "2.0", "id": 2, "method": PUT, "params": {"data": "x" * limit}}
        )
        reply = client.post(too_big)
        assert reply.status == 413
        error = reply.json()["error"]
        assert error["code"] == -32006
        assert error["data"]["limit_bytes"] == limit
        # Chunked, without a Content-Length: refused once it goes over.
        chunked = _chunked_post(bridge.port, too_big)
        assert chunked.startswith(b"HTTP/1.1 413")
        assert bridge.alive()
        assert "result" in HttpRpc(bridge.url).call(fits)
    finally:
        client.close()
        bridge.kill()


def _chunked_post(port: int, body: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        for start in range(0, len(body), 1000):
            piece = body[start : start + 1000]
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                break  # the bridge answered and closed before the end
        with contextlib.suppress(OSError):
            sock.sendall(b"0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


async def test_many_concurrent_requests(bridge_stack: Stack) -> None:
    values = [{"concurrent": i, "pad": "y" * (i % 7)} for i in range(200)]
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def put(i: int) -> Any:
            message = {"jsonrpc": "2.0", "id": i, "method": PUT, "params": {"data": values[i]}}
            async with session.post(bridge_stack.bridge.url, json=message) as response:
                assert response.status == 200
                return await response.json()

        responses = await asyncio.gather(*(put(i) for i in range(len(values))))
    for i, response in enumerate(responses):
        assert response["id"] == i
        assert response["result"]["blob_id"] == json_id(values[i])


def test_healthz_reports_the_service(bridge_stack: Stack) -> None:
    reply = bridge_stack.http.request("GET", "/healthz")
    assert reply.status == 200
    assert reply.json() == {"serving": True, "grpc_status": "SERVING"}
