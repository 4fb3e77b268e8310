"""Stepflow's own Python SDK over our bridge: stepflow-py 0.7.0 (stdio) and 0.9.2
(Streamable HTTP), real packages from PyPI in venvs of their own.

A component server built with the SDK calls the SDK's own `context.put_blob` and
`context.get_blob`; a stand-in runtime (runtime.py) starts it, sends `initialize` and
`components/execute`, and forwards the SDK's `blobs/*` requests to a real
`blobstore-bridge` byte for byte, and the replies back. Every case runs with both SDKs.
The last tests show why the bridge answers the schema's type names: with the page's
("Json"), the SDK drops the reply and waits forever; and stepflow-py 0.7's stdio reader
stops at a line over 512 KiB.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from blobstore.client import BlobClient
from blobstore.model import BlobMeta, BlobType
from tests import blob_id_vectors
from tests.bridge_seed import SEED_DATA, SEED_ID, json_id
from tests.processes import ServerProcess
from tests.stepflow.conftest import RuntimeFactory
from tests.stepflow.runtime import Exchange, Runtime, StdioRuntime

ABSENT_ID = "sha256:" + "ab" * 32
VECTORS = {v.number: v for v in blob_id_vectors.content_vectors()}


def last(runtime: Runtime, method: str) -> Exchange:
    return runtime.traffic.of(method)[-1]


def test_the_pages_example_value_round_trips(runtime: Runtime) -> None:
    output = runtime.execute("/put_get", {"value": SEED_DATA, "blob_type": "data"})

    assert output == {"blob_id": SEED_ID, "value": SEED_DATA}
    put, got = last(runtime, "blobs/put"), last(runtime, "blobs/get")
    assert json.loads(put.request)["params"]["blob_type"] == "data"  # what the SDK sends
    assert put.reply_json()["result"] == {"blob_id": SEED_ID}
    assert got.reply_json()["result"]["blob_type"] == "data"


@pytest.mark.parametrize("number", [1, 2, 7, 8, 10], ids=lambda n: f"vector-{n}")
def test_nested_unicode_and_big_number_json(runtime: Runtime, number: int) -> None:
    """docs/blob-ids.md's vectors: escapes, non-BMP characters, integers past 2^64,
    numbers past 2^53, nesting. The id is the document's; the value comes back equal."""
    vector = VECTORS[number]
    value = json.loads(vector.content)
    output = runtime.execute("/put_get", {"value": value})

    assert output["blob_id"] == vector.blob_id
    assert output["value"] == json.loads(vector.stored)
    assert last(runtime, "blobs/get").reply_json()["result"]["data"] == json.loads(vector.stored)


def test_a_flow_is_stored_as_a_flow(runtime: Runtime, grpc_server: ServerProcess) -> None:
    flow = {"schema": "https://stepflow.org/schemas/v1/flow.json", "name": "sdk", "steps": []}
    output = runtime.execute("/put_get", {"value": flow, "blob_type": "flow"})

    assert output == {"blob_id": json_id(flow), "value": flow}
    assert json.loads(last(runtime, "blobs/put").request)["params"]["blob_type"] == "flow"
    assert last(runtime, "blobs/get").reply_json()["result"]["blob_type"] == "flow"
    with BlobClient(grpc_server.target) as client:
        info = client.stat(output["blob_id"])
    assert info is not None and info.blob_type is BlobType.FLOW


def test_a_filename_in_the_replies_does_not_trouble_the_sdk(
    runtime: Runtime, grpc_server: ServerProcess
) -> None:
    """The bridge adds "filename" to results of blobs with one (stored here through the
    client); the SDK's decoders ignore the field, so its calls work unchanged."""
    value = {"named": runtime.sdk.version, "by": "another client"}
    with BlobClient(grpc_server.target) as client:
        client.put_json(value, meta=BlobMeta("named.json"))
    output = runtime.execute("/put_get", {"value": value})

    assert output == {"blob_id": json_id(value), "value": value}
    assert last(runtime, "blobs/put").reply_json()["result"]["filename"] == "named.json"
    assert last(runtime, "blobs/get").reply_json()["result"]["filename"] == "named.json"


def test_the_same_value_with_keys_in_another_order_has_the_same_id(runtime: Runtime) -> None:
    first = {"z": [1, {"b": 2, "a": 1}], "a": "x", "m": {"y": None, "x": True}}
    second = {"m": {"x": True, "y": None}, "a": "x", "z": [1, {"a": 1, "b": 2}]}
    output = runtime.execute("/put_only", {"values": [first, second]})

    assert output["blob_ids"] == [json_id(first)] * 2
    sent = [json.loads(e.request)["params"]["data"] for e in runtime.traffic.of("blobs/put")]
    assert list(sent[-2]) != list(sent[-1])  # the SDK really sent two key orders


def test_a_missing_id_raises_in_the_sdk(runtime: Runtime) -> None:
    output = runtime.execute("/get", {"blob_id": ABSENT_ID})

    assert "value" not in output, output
    assert "-32008" in output["message"], output  # Blob not found, as the protocol documents
    assert last(runtime, "blobs/get").reply_json()["error"]["code"] == -32008


@pytest.mark.parametrize("bad_id", ["not-a-blob-id", "sha256:" + "A" * 64, "ab" * 31])
def test_an_invalid_id_raises_in_the_sdk(runtime: Runtime, bad_id: str) -> None:
    output = runtime.execute("/get", {"blob_id": bad_id})

    assert "value" not in output, output
    assert "-32602" in output["message"], output
    error = last(runtime, "blobs/get").reply_json()["error"]
    assert (error["code"], error["data"]["reason"]) == (-32602, "INVALID_BLOB_ID")


def test_24_concurrent_calls_are_matched_to_their_requests(runtime: Runtime) -> None:
    values: list[Any] = [{"n": i, "text": "é" * i, "big": 2**70 + i} for i in range(24)]
    before = len(runtime.traffic.exchanges)
    output = runtime.execute("/many", {"values": values})

    assert output["blob_ids"] == [json_id_exact(value) for value in values]
    assert output["values"] == values
    exchanges = runtime.traffic.exchanges[before:]
    assert [e.method for e in exchanges] == ["blobs/put"] * 24 + ["blobs/get"] * 24
    # Each reply carries its own request's id (the SDK matches them by id alone).
    for exchange in exchanges:
        assert json.loads(exchange.reply)["id"] == json.loads(exchange.request)["id"]
    assert len({json.loads(e.request)["id"] for e in exchanges}) == 48


def json_id_exact(value: Any) -> str:
    """json_id for values with integers past 2^53 (rfc8785 refuses those): their canonical
    form is written by hand here, keys in order, digits as they are."""
    text = '{"big":%d,"n":%d,"text":%s}' % (  # noqa: UP031 - the digits as they are
        value["big"],
        value["n"],
        json.dumps(value["text"], ensure_ascii=False),
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# -- what the bridge's defaults avoid ----------------------------------------------------


@pytest.mark.parametrize("sdk", ["0.7-stdio", "0.9-http"])
def test_with_the_pages_type_names_the_sdk_never_gets_its_blob(
    start_runtime: RuntimeFactory, sdk: str
) -> None:
    """--blob-type-names page answers "Json": the SDK cannot decode that, drops the
    reply, and get_blob waits until the component's own timeout gives up."""
    page = start_runtime(sdk, "--blob-type-names", "page")
    output = page.execute("/put_get", {"value": {"page": True}, "timeout": 3})

    assert output["raised"] == "TimeoutError", output
    got = last(page, "blobs/get")
    assert got.reply_json()["result"]["blob_type"] == "Json"  # the reply did arrive
    if got.reply_status is not None:  # HTTP: the SDK refused the reply it could not decode
        assert got.reply_status == 400


def test_stepflow_py_07_reads_stdio_lines_up_to_512_kib(
    start_runtime: RuntimeFactory, grpc_server: ServerProcess
) -> None:
    """A blobs/get reply over 512 KiB cannot reach stepflow-py 0.7: its stdin reader
    (asyncio, limit=512 KiB) fails on the line and the component server stops reading."""
    with BlobClient(grpc_server.target) as client:
        fits = client.put_json("x" * (400 * 1024)).info.blob_id
        too_long = client.put_json("y" * (600 * 1024)).info.blob_id
    runtime = start_runtime("0.7-stdio")
    assert isinstance(runtime, StdioRuntime)

    assert runtime.execute("/get", {"blob_id": fits, "summary": True}) == {"length": 400 * 1024}
    with pytest.raises(AssertionError, match="no answer to components/execute"):
        runtime.execute("/get", {"blob_id": too_long, "summary": True}, timeout=15)
    assert len(last(runtime, "blobs/get").reply) > 512 * 1024
    assert re.search(r"chunk (exceed the|is longer than) limit", runtime.sdk.log())
    assert not runtime.sdk.alive()
    assert runtime.broken_lines == []
