"""stepflow-py 0.13's own worker blob calls against our stepflow.v1.BlobService.

The SDK (installed from PyPI into its own venv) talks to our server through
STEPFLOW_BLOB_URL exactly as a worker does: `blob_store.put_blob/get_blob`,
`put_blob_binary/get_blob_binary` and the gRPC task context's
`put_blob/get_blob`. Ids must be the bare SHA-256 Stepflow computes (RFC 8785
for JSON, raw bytes for binary) and the same blob must be readable through
blobstore.v1 under "sha256:<id>".
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import rfc8785
from google.protobuf import json_format, struct_pb2

from blobstore.api.blobstore.v1 import blobstore_pb2 as bs_pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as bs_grpc
from blobstore.api.stepflow.v1 import blobs_pb2 as sf_pb
from blobstore.api.stepflow.v1 import blobs_pb2_grpc as sf_grpc
from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.processes import ServerProcess
from tests.rpc_helpers import error_info, rpc_failure, serve_for_module
from tests.stepflow.stepflow_helpers import binary, sdk_calls
from tests.stepflow_venv import StepflowVenv

DOC: dict[str, Any] = {
    "name": "John",
    "scores": [1.0, 2.5],
    "nested": {"é": "ü", "n": None, "t": True},
}
UNKNOWN = "0" * 64
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve_for_module(tmp_path_factory)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[BlobClient]:
    with BlobClient(server.target, timeout=30) as blobs:
        yield blobs


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[sf_grpc.BlobServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield sf_grpc.BlobServiceStub(channel)


def json_id(value: Any) -> str:
    return hashlib.sha256(rfc8785.dumps(value)).hexdigest()


def test_worker_json_and_binary_calls_use_our_store(
    stepflow: StepflowVenv, server: ServerProcess, client: BlobClient
) -> None:
    data = bytes(range(256)) * 300
    put = sdk_calls(
        stepflow,
        server.target,
        [
            {"op": "put_blob", "arg": DOC},
            {"op": "put_blob_binary", "arg": binary(data)},
            {"op": "put_blob_binary", "arg": binary(b"")},
            {"op": "context_put_blob", "arg": {"steps": [1, 2]}, "blob_type": "flow"},
            {"op": "context_put_blob", "arg": binary(b"ctx bytes")},
        ],
    )
    doc_id, data_id, empty_id, flow_id, ctx_bytes_id = (answer["result"] for answer in put)
    assert doc_id == json_id(DOC)
    assert data_id == hashlib.sha256(data).hexdigest()
    assert empty_id == hashlib.sha256(b"").hexdigest()
    assert flow_id == json_id({"steps": [1, 2]})
    assert ctx_bytes_id == hashlib.sha256(b"ctx bytes").hexdigest()

    got = sdk_calls(
        stepflow,
        server.target,
        [
            {"op": "get_blob", "arg": doc_id},
            {"op": "get_blob", "arg": doc_id.upper()},
            {"op": "get_blob_binary", "arg": data_id},
            {"op": "get_blob_binary", "arg": empty_id},
            {"op": "context_get_blob", "arg": flow_id},
            {"op": "context_get_blob", "arg": ctx_bytes_id},
        ],
    )
    assert [answer["result"] for answer in got] == [
        DOC,
        DOC,
        binary(data),
        binary(b""),
        {"steps": [1, 2]},
        binary(b"ctx bytes"),
    ]
    # The same blobs, through blobstore.v1, under their "sha256:" ids.
    assert client.get("sha256:" + data_id).data == data
    assert client.get("sha256:" + doc_id).data == rfc8785.dumps(DOC)
    assert client.get("sha256:" + empty_id).data == b""
    flow = client.stat("sha256:" + flow_id)
    assert flow is not None and flow.blob_type is BlobType.FLOW


def test_worker_errors_carry_stepflow_codes(stepflow: StepflowVenv, server: ServerProcess) -> None:
    answers = sdk_calls(
        stepflow,
        server.target,
        [
            {"op": "get_blob", "arg": UNKNOWN},
            {"op": "get_blob_binary", "arg": UNKNOWN.replace("0", "A")},
            {"op": "context_get_blob", "arg": UNKNOWN},
            {"op": "get_blob", "arg": "not-a-blob-id"},
            {"op": "get_blob", "arg": "sha256:" + UNKNOWN},
            {"op": "get_blob", "arg": UNKNOWN[:63]},
            {"op": "get_blob", "arg": ""},
            {"op": "put_blob", "arg": {"a": 1}, "blob_type": "Json"},
            {"op": "put_blob", "arg": {"a": 1}, "blob_type": "binary"},
        ],
    )
    codes = [answer["error"]["code"] for answer in answers]
    assert codes == ["NOT_FOUND"] * 3 + ["INVALID_ARGUMENT"] * 6
    assert "64 hex" in answers[3]["error"]["details"]
    assert "no 'sha256:' prefix" in answers[4]["error"]["details"]
    assert "unknown blob_type 'Json'" in answers[7]["error"]["details"]


def test_put_and_get_messages_as_the_contract_says(
    stub: sf_grpc.BlobServiceStub, client: BlobClient
) -> None:
    empty_type = stub.PutBlob(sf_pb.PutBlobRequest(json_data=_value({"k": 1})))
    assert empty_type.blob_id == json_id({"k": 1})
    reply = stub.GetBlob(sf_pb.GetBlobRequest(blob_id=empty_type.blob_id))
    assert reply.blob_type == "data" and reply.blob_id == empty_type.blob_id
    assert reply.WhichOneof("content") == "json_data"
    assert not reply.HasField("filename") and not reply.HasField("content_type")

    failure = rpc_failure(lambda: stub.PutBlob(sf_pb.PutBlobRequest(blob_type="data")))
    assert failure.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs content" in (failure.details() or "")
    # The same google.rpc.ErrorInfo details as blobstore.v1.
    failure = rpc_failure(lambda: stub.GetBlob(sf_pb.GetBlobRequest(blob_id="f" * 64)))
    assert failure.code() is grpc.StatusCode.NOT_FOUND
    assert error_info(failure).reason == "BLOB_NOT_FOUND"
    failure = rpc_failure(lambda: stub.GetBlob(sf_pb.GetBlobRequest(blob_id="xyz")))
    assert error_info(failure).reason == "INVALID_BLOB_ID"


def test_filename_and_content_type_round_trip(stub: sf_grpc.BlobServiceStub) -> None:
    named = stub.PutBlob(
        sf_pb.PutBlobRequest(raw_data=b"%PDF-1.7", blob_type="binary", filename="a.pdf")
    )
    assert named.filename == "a.pdf"
    reply = stub.GetBlob(sf_pb.GetBlobRequest(blob_id=named.blob_id))
    assert (reply.raw_data, reply.blob_type, reply.filename, reply.content_type) == (
        b"%PDF-1.7",
        "binary",
        "a.pdf",
        "application/octet-stream",
    )
    typed = stub.PutBlob(
        sf_pb.PutBlobRequest(raw_data=b"<svg/>", blob_type="binary", content_type="image/svg+xml")
    )
    reply = stub.GetBlob(sf_pb.GetBlobRequest(blob_id=typed.blob_id))
    assert reply.content_type == "image/svg+xml" and not reply.HasField("filename")


def test_limits_and_overload_are_blobstores(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Same limits and the same guard: one call at a time here, and a held stream is that one."""
    servers = serve_for_module(  # a generator: closing it stops the server
        tmp_path_factory, "--max-blob-bytes", str(MiB * 4), "--max-concurrent-rpcs", "1"
    )
    server = next(servers)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = sf_grpc.BlobServiceStub(channel)
            too_large = rpc_failure(
                lambda: stub.PutBlob(
                    sf_pb.PutBlobRequest(raw_data=b"x" * (MiB * 4 + 1), blob_type="binary")
                )
            )
            assert too_large.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(too_large).reason == "BLOB_TOO_LARGE"
            garbage = rpc_failure(
                lambda: channel.unary_unary(  # type: ignore[call-arg]  # raw bytes both ways
                    "/stepflow.v1.BlobService/GetBlob"
                )(b"\xff\xff\xff")
            )
            assert garbage.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "not a stepflow.v1.GetBlobRequest message" in (garbage.details() or "")

            big = stub.PutBlob(sf_pb.PutBlobRequest(raw_data=b"y" * (MiB * 4), blob_type="binary"))
            held = bs_grpc.BlobServiceStub(channel).GetStream(
                bs_pb.GetStreamRequest(id="sha256:" + big.blob_id, chunk_size=64 * 1024)
            )
            next(iter(held))  # the stream is now the one call in progress
            overloaded = rpc_failure(
                lambda: stub.GetBlob(sf_pb.GetBlobRequest(blob_id=big.blob_id))
            )
            assert error_info(overloaded).reason == "OVERLOADED"
            held.cancel()  # type: ignore[no-untyped-call]
            assert server.alive()
    finally:
        servers.close()  # type: ignore[attr-defined]


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def test_reflection_and_health_cover_both_services(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("blobstore.v1.BlobService", "stepflow.v1.BlobService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    listed = subprocess.run(
        [str(Path(sys.executable).parent / "grpcurl"), "-plaintext", server.target, "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert {"blobstore.v1.BlobService", "stepflow.v1.BlobService"} <= set(listed.stdout.split())
    described = subprocess.run(
        [
            str(Path(sys.executable).parent / "grpcurl"),
            "-plaintext",
            server.target,
            "describe",
            "stepflow.v1.BlobService",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "rpc PutBlob" in described.stdout and "rpc GetBlob" in described.stdout
