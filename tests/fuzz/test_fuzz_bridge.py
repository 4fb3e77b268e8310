"""Hostile input on the JSON-RPC bridge, over HTTP and stdio, as hypothesis properties.

Arbitrary bytes, arbitrary JSON and request-shaped JSON with random members go to a
real bridge in front of a real server. Every answer is a well-formed JSON-RPC 2.0
response (or nothing, for notifications), both processes stay up and the blobs stored
before are untouched.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobstore.client import BlobClient
from tests.bridge_processes import BridgeProcess, Stack, stack
from tests.bridge_seed import json_id
from tests.rpc_helpers import blob_path

# scripts/fuzz.py raises the number of examples for its longer runs.
FUZZ = settings(
    max_examples=int(os.environ.get("BLOBSTORE_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SENTINEL_IDS = itertools.count(1)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, BridgeProcess]]:
    folder = tmp_path_factory.mktemp("fuzz-bridge")
    with stack(folder) as running:
        stdio = BridgeProcess(running.server.target, folder / "stdio.log", stdio=True).start()
        with BlobClient(running.server.target, timeout=30) as client:
            kept = {client.put_bytes(b"kept before the fuzz").info.blob_id: b"kept before the fuzz"}
        try:
            yield running, stdio
            assert stdio.alive(), stdio.log()
            assert running.bridge.alive(), running.bridge.log()
            with BlobClient(running.server.target, timeout=30) as client:
                for blob_id, data in kept.items():
                    assert client.get(blob_id).data == data
            assert "Traceback" not in running.bridge.log() + stdio.log()
        finally:
            stdio.kill()


def check_response(response: Any) -> None:
    """One JSON-RPC 2.0 response object, as the specification shapes it."""
    assert isinstance(response, dict), response
    assert response.get("jsonrpc") == "2.0", response
    assert "id" in response and (
        response["id"] is None or type(response["id"]) in (int, str, float)
    )
    assert ("result" in response) != ("error" in response), response
    if "error" in response:
        error = response["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str), error
        assert error["code"] != -32603, f"internal error for bad input: {error}"


def check_body(body: Any) -> None:
    if isinstance(body, list):
        assert body, "an empty batch reply"
        for response in body:
            check_response(response)
    else:
        check_response(body)


# -- strategies -------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Request-shaped objects whose members are right, wrong, missing or of the wrong kind."""
    message: dict[str, Any] = {}
    if draw(st.integers(0, 5)):
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "1.0", 2.0]) | json_values)
    if draw(st.integers(0, 5)):
        message["method"] = draw(
            st.sampled_from(["blobs/put", "blobs/get", "blobs/nope", ""]) | json_values
        )
    if draw(st.integers(0, 3)):
        params = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "data": json_values,
                    "blob_type": st.sampled_from(["Json", "Binary", "json", ""]) | json_values,
                    "blob_id": st.sampled_from(["sha256:" + "0" * 64, "0" * 64, "../x"])
                    | json_values,
                },
            )
            | json_values
        )
        message["params"] = params
    if draw(st.integers(0, 4)):
        message["id"] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.text(max_size=5))] = draw(json_values)
    return message


bodies = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests().map(lambda m: json.dumps(m).encode()),
    st.lists(requests(), max_size=4).map(lambda batch: json.dumps(batch).encode()),
)


# -- properties -------------------------------------------------------------------


@FUZZ
@given(body=bodies)
def test_any_http_body_gets_a_well_formed_answer(
    fuzzed: tuple[Stack, BridgeProcess], body: bytes
) -> None:
    rpc = fuzzed[0].http
    reply = rpc.post(body)
    if reply.status == 204:  # only notifications go unanswered
        assert reply.body == b""
        return
    assert reply.status == 200, (reply.status, reply.body)
    check_body(reply.json())


@FUZZ
@given(body=bodies.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")))
def test_any_stdio_line_gets_a_well_formed_answer(
    fuzzed: tuple[Stack, BridgeProcess], body: bytes
) -> None:
    bridge = fuzzed[1]
    sentinel = f"sentinel-{next(_SENTINEL_IDS)}"
    bridge.send(body)
    bridge.send({"jsonrpc": "2.0", "id": sentinel, "method": "blobs/get", "params": {}})
    # Whatever the fuzzed line got (nothing for notifications) comes before or after the
    # sentinel's answer, which arrives in any case; every line is a well-formed answer.
    for _ in range(10):
        line = bridge.read_line()
        assert line, f"stdout closed; log:\n{bridge.log()}"
        answer = json.loads(line)
        check_body(answer)
        if isinstance(answer, dict) and answer.get("id") == sentinel:
            return
    raise AssertionError("the sentinel request was never answered")


# -- random Authorization headers in front of a server with tokens ------------------

_FUZZ_TOKEN = "fuzz-writer-token-0c4f9b2e"
_REFUSED_PUT = {"jsonrpc": "2.0", "id": 1, "method": "blobs/put", "params": {"data": "fuzz"}}


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server with --tokens-file and a pass-through bridge; the only token is not fuzzed."""
    from blobstore.grpc.auth import token_hash

    folder = tmp_path_factory.mktemp("fuzz-auth")
    tokens = folder / "tokens"
    tokens.write_text(f"{token_hash(_FUZZ_TOKEN)} writer read,write\n")
    # Every example is a failed authentication from one peer: without a high free count,
    # the brute-force slow-down (docs/security.md) delays each refusal up to 5 s - the
    # server's (the bridge is its peer) and the bridge's own (127.0.0.1 is the caller).
    free = ("--auth-failures-free", "100000")
    server_args = ("--tokens-file", str(tokens), *free)
    with stack(folder, *free, server_args=server_args) as running:
        yield running
        assert running.bridge.alive(), running.bridge.log()
        assert "Traceback" not in running.bridge.log() + running.server.log()


# Header values http.client can send (latin-1, no line breaks), from "Bearer ..." look-alikes
# to arbitrary text; non-ASCII ones reach the bridge as bytes it must not forward.
authorization_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E)).map("Bearer ".__add__),
)


@FUZZ
@given(value=authorization_values)
def test_any_authorization_header_is_a_clean_refusal(token_stack: Stack, value: str) -> None:
    """JSON-RPC: -32010 from the server, or HTTP 401 from the bridge; REST: 401. Never a
    5xx, never stored, never a value in a log."""
    headers = {"Content-Type": "application/json", "Authorization": value}
    reply = token_stack.http.request("POST", "/", json.dumps(_REFUSED_PUT).encode(), headers)
    if reply.status == 200:
        assert reply.json()["error"]["code"] == -32010, reply.body
    else:
        assert reply.status == 401, (reply.status, reply.body)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    rest = token_stack.http.request("POST", "/api/v1/blobs", b'{"data": "fuzz"}', headers)
    assert rest.status == 401, (rest.status, rest.body)
    assert rest.headers["WWW-Authenticate"].startswith('Bearer realm="blobstore"')
    assert not blob_path(token_stack.server.data_dir, json_id("fuzz")).exists()
    secret = max(value.split(), key=len, default="")
    if len(set(secret)) >= 8:  # varied enough not to match ordinary log text by chance
        assert secret not in token_stack.bridge.log() + token_stack.server.log()
