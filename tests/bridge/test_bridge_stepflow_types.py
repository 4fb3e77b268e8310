"""Blob types and metadata as Stepflow has them, through every door: bridge, gRPC, CLI.

A flow (a workflow definition) is JSON kept as a type of its own; a file name
and a content type may travel with any blob. They are stored with the blob by
the put that creates it (first writer wins, like the type) and come back from
blobs/get, blobstore.v1 Get/Stat/GetStream and `blobstore stat`/`get`.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.client import BlobClient
from blobstore.model import BlobMetadata, BlobType
from tests.bridge_processes import HttpRpc, Stack
from tests.bridge_seed import json_id
from tests.rpc_helpers import raw_stub, sha256_id

PUT = "blobs/put"
GET = "blobs/get"
FLOW = {
    "schema": "https://stepflow.org/schemas/v1/flow.json",
    "name": "through-every-door",
    "steps": [{"id": "add", "component": "/builtin/eval", "input": {"x": 1}}],
    "output": {"$from": {"step": "add"}},
}


def cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobstore.cli", *args, "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_flow_with_a_filename_reads_back_through_every_door(
    bridge_stack: Stack, rpc: HttpRpc, grpc_client: BlobClient, tmp_path: Path
) -> None:
    put = rpc.result(PUT, {"data": FLOW, "blob_type": "flow", "filename": "add.flow.json"})
    blob_id = json_id(FLOW)
    assert put == {"blob_id": blob_id, "filename": "add.flow.json"}

    # The bridge: the schema's type name and the file name.
    assert rpc.result(GET, {"blob_id": blob_id}) == {
        "data": FLOW,
        "blob_type": "flow",
        "filename": "add.flow.json",
    }

    # blobstore.v1, through the client and on the wire.
    expected = BlobMetadata(filename="add.flow.json")
    blob = grpc_client.get(blob_id)
    assert (blob.info.blob_type, blob.info.metadata) == (BlobType.FLOW, expected)
    assert json.loads(blob.data) == FLOW
    stat = grpc_client.stat(blob_id)
    assert stat is not None and (stat.blob_type, stat.metadata) == (BlobType.FLOW, expected)
    assert grpc_client.get_to_file(blob_id, tmp_path / "flow.json").metadata == expected
    with raw_stub(bridge_stack.server.target) as stub:
        reply = stub.Get(pb.GetRequest(id=blob_id, as_json_value=True), timeout=30)
        assert reply.blob_type == pb.BLOB_TYPE_FLOW and reply.filename == "add.flow.json"
        assert not reply.HasField("content_type")
        stat_reply = stub.Stat(pb.StatRequest(id=blob_id), timeout=30)
        assert (stat_reply.blob_type, stat_reply.filename) == (pb.BLOB_TYPE_FLOW, "add.flow.json")

    # The CLI.
    shown = {"blob_id": blob_id, "exists": True, "blob_type": "Flow", "size": blob.info.size}
    shown |= {"filename": "add.flow.json", "content_type": None}
    stat_cli = cli(bridge_stack.server.target, "stat", blob_id)
    assert stat_cli.returncode == 0, stat_cli.stderr
    assert json.loads(stat_cli.stdout) == shown
    get_cli = cli(bridge_stack.server.target, "get", blob_id, "-o", str(tmp_path / "out.json"))
    assert get_cli.returncode == 0, get_cli.stderr
    assert json.loads(get_cli.stdout) == shown
    assert json.loads((tmp_path / "out.json").read_bytes()) == FLOW


def test_the_first_writer_keeps_type_and_metadata(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    value = {"first": "writer", "wins": True}
    first = rpc.result(PUT, {"data": value, "blob_type": "flow", "filename": "first.json"})
    again = rpc.result(PUT, {"data": value, "blob_type": "data", "filename": "second.json"})
    assert again == first == {"blob_id": json_id(value), "filename": "first.json"}
    result = grpc_client.put_json(value, BlobType.JSON, BlobMetadata("third.json", "text/plain"))
    assert not result.created
    assert result.info.blob_type is BlobType.FLOW
    assert result.info.metadata == BlobMetadata("first.json")
    assert rpc.result(GET, [json_id(value)])["blob_type"] == "flow"


def test_binary_with_filename_and_content_type(rpc: HttpRpc, grpc_client: BlobClient) -> None:
    content = b"%PDF-1.7 not really a pdf \x00\xff"
    encoded = base64.b64encode(content).decode()
    params = {
        "data": encoded,
        "blob_type": "binary",
        "filename": "r\u00e9sum\u00e9 2026.pdf",
        "content_type": "application/pdf",
    }
    blob_id = rpc.result(PUT, params)["blob_id"]
    assert blob_id == sha256_id(content)
    assert rpc.result(GET, {"blob_id": blob_id}) == {
        "data": encoded,
        "blob_type": "binary",
        "filename": "r\u00e9sum\u00e9 2026.pdf",
        "content_type": "application/pdf",
    }
    stored = grpc_client.get(blob_id)
    assert stored.info.metadata == BlobMetadata("r\u00e9sum\u00e9 2026.pdf", "application/pdf")


def test_cli_put_with_metadata_reads_back_over_the_bridge(
    bridge_stack: Stack, rpc: HttpRpc, tmp_path: Path
) -> None:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"cli": "flow", "steps": []}))
    put = cli(
        bridge_stack.server.target,
        "put",
        str(path),
        "--type",
        "flow",
        "--filename",
        "cli.flow.json",
        "--content-type",
        "application/json",
    )
    assert put.returncode == 0, put.stderr
    blob_id = put.stdout.strip()
    assert blob_id == json_id({"cli": "flow", "steps": []})
    assert rpc.result(GET, [blob_id]) == {
        "data": {"cli": "flow", "steps": []},
        "blob_type": "flow",
        "filename": "cli.flow.json",
        "content_type": "application/json",
    }


@pytest.mark.parametrize(
    ("params", "field", "why"),
    [
        ({"filename": 7}, "params.filename", "must be a string"),
        ({"filename": "a\nb"}, "params.filename", "control characters"),
        ({"filename": "x" * 1025}, "params.filename", "at most 1024"),
        ({"content_type": ["text/plain"]}, "params.content_type", "must be a string"),
        ({"content_type": "t" * 256}, "params.content_type", "at most 255"),
    ],
)
def test_bad_metadata_is_refused_with_the_field(
    rpc: HttpRpc, params: dict[str, object], field: str, why: str
) -> None:
    error = rpc.error(PUT, {"data": {"bad": "metadata"}, **params})
    assert error["code"] == -32602, error
    assert error["data"]["field"] == field
    assert why in error["message"], error


def test_bad_metadata_over_grpc_is_invalid_argument(bridge_stack: Stack) -> None:
    with raw_stub(bridge_stack.server.target) as stub:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Put(pb.PutRequest(data=b"x", filename="tab\there"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "control characters" in (caught.value.details() or "")
