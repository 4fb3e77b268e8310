"""Property tests: whatever is posted to the bridge, it stays up and answers with valid JSON-RPC.

Hypothesis throws arbitrary JSON, JSON-RPC-shaped requests with random
members, batches, mutated request texts and arbitrary bytes at the HTTP
endpoint of a real bridge in front of a real server. Every answer must be a
well-formed JSON-RPC response (or 204 exactly when only notifications were
sent), with the request's id, a result of the method's shape or an error
from the documented table.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.bridge_processes import HttpReply, HttpRpc, Stack, stack
from tests.bridge_seed import SEED_DATA, SEED_ID

CODES = {-32700, -32600, -32601, -32602, -32603, -32000, -32001, -32002, -32003, -32004,
         -32005, -32006, -32008}  # fmt: skip
BLOB_ID = re.compile(r"sha256:[0-9a-f]{64}")
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def bridge_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("bridge-property")) as running:
        running.http.result("blobs/put", {"data": SEED_DATA})
        yield running
        # After everything it was thrown, it is still up and still right.
        assert running.bridge.alive()
        assert running.http.result("blobs/put", {"data": SEED_DATA}) == {"blob_id": SEED_ID}


# -- strategies ------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: json.dumps writes them as NaN/Infinity
    | st.text(max_size=10)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
ids = st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.none(), json_values)
base64_texts = st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
blob_types = st.sampled_from(
    ["Json", "Binary", "json", "BINARY", "data", "flow", "Flow", "xml", 1, None]
)
blob_ids = st.sampled_from([SEED_ID, SEED_ID[7:], "sha256:" + "0" * 64, "", "sha256:xyz"]) | (
    st.text(max_size=70)
)
put_params = st.fixed_dictionaries(
    {"data": json_values | base64_texts}, optional={"blob_type": blob_types}
) | st.lists(json_values | base64_texts | blob_types, max_size=3)
get_params = st.fixed_dictionaries({"blob_id": blob_ids}) | st.lists(blob_ids, max_size=2)


def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """A draw from `valid` most of the time, from `other` sometimes."""
    return draw(valid if odds(draw, 8, 10) else other)


def odds(draw: st.DrawFn, k: int, n: int) -> bool:
    """True about k times in n (hypothesis favours a sample's first items: they are True)."""
    return bool(draw(st.sampled_from([True] * k + [False] * (n - k))))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method = mostly(draw, st.sampled_from(["blobs/put", "blobs/get"]), st.text(max_size=12))
    members: dict[str, Any] = {}
    if odds(draw, 19, 20):
        members["jsonrpc"] = mostly(draw, st.just("2.0"), json_values)
    if odds(draw, 19, 20):
        members["method"] = mostly(draw, st.just(method), json_values)
    if odds(draw, 4, 5):
        members["id"] = mostly(draw, st.text(max_size=8) | st.integers(), ids)
    if odds(draw, 19, 20):
        params = get_params if method == "blobs/get" else put_params
        members["params"] = mostly(draw, params, json_values)
    if not odds(draw, 9, 10):
        members[draw(st.text(max_size=5))] = draw(json_values)
    return members


# -- what a valid answer is -----------------------------------------------------------


class Bad:
    """What the oracle's decoder puts where the bridge must see an invalid value."""


def _pairs(pairs: list[tuple[str, Any]]) -> object:
    return Bad() if len({k for k, _ in pairs}) != len(pairs) else dict(pairs)


_ORACLE = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=lambda _: Bad())


def oracle_decode(body: bytes) -> tuple[object, bool]:
    """What the bridge should make of `body`: (message, whether it is one JSON value)."""
    try:
        text = body.decode("utf-8")
        return _ORACLE.decode(text), True
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, False


def is_valid_id(value: object) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def is_notification(message: object) -> bool:
    """A message the specification says must not be answered: a valid request without id."""
    return (
        isinstance(message, dict)
        and "id" not in message
        and message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and isinstance(message.get("params", []), dict | list | Bad)
    )


def check_response(response: Any, candidates: list[dict[str, Any]]) -> None:
    """One response object; `candidates` are the requests it may answer (same id)."""
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "id" in response, response
    kind = "result" if "result" in response else "error"
    event(kind if kind == "result" else f"error {response['error']['code']}")
    assert set(response) == {"jsonrpc", "id", kind}, response
    if kind == "error":
        error = response["error"]
        assert error["code"] in CODES, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["data"], dict) and isinstance(error["data"]["reason"], str)
        assert "Traceback" not in json.dumps(error)
        return
    result = response["result"]
    # A request whose method is not a string cannot have been answered with a result.
    methods = {m for request in candidates if isinstance(m := request.get("method"), str)}
    if "blobs/put" in methods and set(result) == {"blob_id"}:
        assert BLOB_ID.fullmatch(result["blob_id"]), result
    else:
        assert "blobs/get" in methods, (response, candidates)
        assert set(result) == {"data", "blob_type"}, result
        assert result["blob_type"] in {"data", "flow", "binary"}, result


def answered_with(response: Any, messages: list[object]) -> list[dict[str, Any]]:
    """The messages `response` may answer: those whose valid id it carries."""
    return [
        m
        for m in messages
        if isinstance(m, dict) and is_valid_id(m.get("id", Bad())) and m["id"] == response["id"]
    ]


def check_reply(reply: HttpReply, message: object, parsed: bool) -> None:
    """Checks the HTTP answer to `message` (`parsed`: whether the body was valid JSON)."""
    if not parsed:
        assert reply.status == 200, reply
        response = reply.json()
        assert response["id"] is None and response["error"]["code"] == -32700, response
        return
    batch = isinstance(message, list) and len(message) > 0
    messages: list[object] = list(message) if isinstance(message, list) and batch else [message]
    expected = [m for m in messages if not is_notification(m)]
    if not expected:
        assert (reply.status, reply.body) == (204, b""), reply
        return
    assert reply.status == 200, reply
    answer = reply.json()
    responses = answer if batch else [answer]
    assert isinstance(responses, list) and len(responses) == len(expected), answer
    for response in responses:
        candidates = answered_with(response, expected)
        # Each answer carries a request's id, or null when the id could not be read.
        assert candidates or response["id"] is None, (response, expected)
        check_response(response, candidates)


def post(rpc: HttpRpc, message: object) -> None:
    body = json.dumps(message).encode()
    check_reply(rpc.post(body), *oracle_decode(body))


# -- properties --------------------------------------------------------------------


@SETTINGS
@given(message=json_values)
def test_any_json_body_gets_a_valid_answer(rpc: HttpRpc, message: Any) -> None:
    post(rpc, message)


@SETTINGS
@given(message=requests())
def test_any_request_shaped_body_gets_a_valid_answer(rpc: HttpRpc, message: Any) -> None:
    post(rpc, message)


@SETTINGS
@given(batch=st.lists(requests() | json_values, max_size=6))
def test_any_batch_gets_valid_answers(rpc: HttpRpc, batch: list[Any]) -> None:
    post(rpc, batch)


@SETTINGS
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_valid_answer(rpc: HttpRpc, body: bytes) -> None:
    check_reply(rpc.post(body), *oracle_decode(body))


@SETTINGS
@given(
    message=requests(),
    position=st.integers(min_value=0, max_value=200),
    cut=st.integers(min_value=0, max_value=5),
    insert=st.binary(max_size=5),
)
def test_mutated_requests_get_a_valid_answer(
    rpc: HttpRpc, message: Any, position: int, cut: int, insert: bytes
) -> None:
    body = json.dumps(message).encode()
    position = min(position, len(body))
    body = body[:position] + insert + body[position + cut :]
    check_reply(rpc.post(body), *oracle_decode(body))
