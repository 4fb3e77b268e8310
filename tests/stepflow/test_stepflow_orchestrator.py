"""The real Stepflow orchestrator runs a flow whose Python worker keeps its blobs in our server.

`stepflow-server` 0.13.0 (the binary shipped in the stepflow-orchestrator
wheel) starts tests/stepflow/flow_worker.py as a `grpc` plugin with
STEPFLOW_BLOB_URL set to our server. The flow stores and reads JSON, 1 MiB
and empty binary blobs, the task context's flow blob, passes a `$blob`
reference from one step to the next (the worker resolves it through our
GetBlob), and asks for an unknown and a malformed id. Then every id the worker
got is read back identical through blobstore.v1, the bridge's blobs/get and
its REST route, and is absent from the orchestrator's own blob store: the
blobs went to us.

Where the binary cannot run on this machine (not Linux x86-64), the test is
skipped with that reason.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import rfc8785

from blobstore.client import BlobClient
from blobstore.model import BlobType
from tests.bridge_processes import Stack
from tests.processes import ServerProcess
from tests.stepflow.stepflow_helpers import DOC, Orchestrator, run_outputs, server_binary_runs
from tests.stepflow_venv import StepflowVenv

MiB = 1024 * 1024


def _pattern(size: int) -> bytes:
    """The bytes flow_worker.pattern() stores."""
    block = hashlib.sha256(b"stepflow").digest() * (64 * 1024 // 32)
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(scope="module")
def server(bridge_stack: Stack) -> ServerProcess:
    """Our server, with the bridge (JSON-RPC and REST) of bridge_stack in front of it."""
    return bridge_stack.server


@pytest.fixture(scope="module")
def run(
    stepflow: StepflowVenv, server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Orchestrator, dict[str, Any]]]:
    """The flow's run result, and the orchestrator (still running) that ran it."""
    reason = server_binary_runs(stepflow)
    if reason is not None:
        print(f"SKIPPED orchestrator test: {reason}")
        pytest.skip(reason)
    orchestrator = Orchestrator(stepflow, server.target, tmp_path_factory.mktemp("stepflow"))
    try:
        orchestrator.start()
        yield orchestrator, orchestrator.run_flow(DOC)
    finally:
        orchestrator.stop()


def test_worker_blobs_live_in_our_store(
    run: tuple[Orchestrator, dict[str, Any]], server: ServerProcess
) -> None:
    _, result = run
    out = run_outputs(result)
    doc_id = hashlib.sha256(rfc8785.dumps(DOC)).hexdigest()
    assert out["json"]["id"] == doc_id and out["json"]["read_back_equal"] is True
    assert out["json"]["ref"]["$blob"] == doc_id
    # The next step got the `$blob` reference resolved by the SDK, through our GetBlob.
    assert out["read"]["resolved"] == DOC
    assert out["mib"] == {
        "id": hashlib.sha256(_pattern(MiB)).hexdigest(),
        "size": MiB,
        "read_back_equal": True,
    }
    assert out["empty"] == {
        "id": hashlib.sha256(b"").hexdigest(),
        "size": 0,
        "read_back_equal": True,
    }
    flow_id = hashlib.sha256(rfc8785.dumps({"flow_of": DOC})).hexdigest()
    assert out["context"] == {"id": flow_id, "read_back_equal": True}
    with BlobClient(server.target, timeout=30) as blobs:
        assert blobs.get("sha256:" + doc_id).data == rfc8785.dumps(DOC)
        info = blobs.stat("sha256:" + doc_id)
        assert info is not None and info.blob_type is BlobType.JSON
        flow = blobs.stat("sha256:" + flow_id)
        assert flow is not None and flow.blob_type is BlobType.FLOW
        assert blobs.get("sha256:" + out["mib"]["id"]).data == _pattern(MiB)
        assert blobs.get("sha256:" + out["empty"]["id"]).data == b""


def test_worker_ids_read_back_through_the_bridge_and_rest(
    run: tuple[Orchestrator, dict[str, Any]], bridge_stack: Stack
) -> None:
    _, result = run
    out = run_outputs(result)
    http = bridge_stack.http
    expected = {
        out["json"]["id"]: rfc8785.dumps(DOC),
        out["context"]["id"]: rfc8785.dumps({"flow_of": DOC}),
        out["mib"]["id"]: _pattern(MiB),
        out["empty"]["id"]: b"",
    }
    for blob_id, content in expected.items():
        rest = http.request(
            "GET", f"/api/v1/blobs/{blob_id}", None, {"Accept": "application/octet-stream"}
        )
        assert (rest.status, rest.body) == (200, content), blob_id
        got = http.result("blobs/get", {"blob_id": "sha256:" + blob_id})
        if got["blob_type"].lower() == "binary":
            assert base64.b64decode(got["data"]) == content, blob_id
        else:
            assert rfc8785.dumps(got["data"]) == content, blob_id
    types = {
        blob_id: http.request("GET", f"/api/v1/blobs/{blob_id}").json()["blobType"]
        for blob_id in expected
    }
    assert list(types.values()) == ["data", "flow", "binary", "binary"]


def test_worker_ids_are_absent_from_the_orchestrators_store(
    run: tuple[Orchestrator, dict[str, Any]],
) -> None:
    orchestrator, result = run
    out = run_outputs(result)

    def status(blob_id: str) -> int:
        url = f"http://{orchestrator.target}/api/v1/blobs/{blob_id}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    # The orchestrator's store works (it holds the flow it stored) but has none of ours.
    assert status(result["flow_id"]) == 200
    for step in ("json", "mib", "empty", "context"):
        assert status(out[step]["id"]) == 404, step


def test_worker_errors_raise_with_stepflow_codes(
    run: tuple[Orchestrator, dict[str, Any]],
) -> None:
    _, result = run
    assert run_outputs(result)["errors"]["codes"] == {
        "0" * 64: "NOT_FOUND",
        "F" * 64: "NOT_FOUND",
        "not-a-blob-id": "INVALID_ARGUMENT",
    }
