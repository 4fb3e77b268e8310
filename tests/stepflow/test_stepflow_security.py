"""A real Stepflow worker (no token, insecure channel) against a server with tokens on.

The server has --tokens-file and --anonymous stepflow.v1=read,write: the real
stepflow-server 0.13.0 runs tests/stepflow/flow_worker.py, whose SDK dials our
stepflow.v1 without credentials, and the flow completes; the same blobs read
through blobstore.v1 need a token (docs/security.md, "Stepflow workers").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import rfc8785

from blobstore import errors
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from tests.processes import ServerProcess
from tests.stepflow.stepflow_helpers import DOC, Orchestrator, run_outputs, server_binary_runs
from tests.stepflow_venv import StepflowVenv

TOKEN = "reader-token-c0ffee5eed"


def test_a_tokenless_stepflow_worker_uses_the_anonymous_policy(
    stepflow: StepflowVenv, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    reason = server_binary_runs(stepflow)
    if reason is not None:
        pytest.skip(reason)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(TOKEN)} auditor read\n")
    server = start_server("--tokens-file", str(tokens), "--anonymous", "stepflow.v1=read,write")
    (tmp_path / "stepflow").mkdir()
    orchestrator = Orchestrator(stepflow, server.target, tmp_path / "stepflow")
    try:
        orchestrator.start()
        outputs = orchestrator.run_flow(DOC)
    finally:
        orchestrator.stop()
    out = run_outputs(outputs)
    doc_id = "sha256:" + hashlib.sha256(rfc8785.dumps(DOC)).hexdigest()
    assert out["json"]["read_back_equal"] is True and "sha256:" + out["json"]["id"] == doc_id
    with (
        BlobClient(server.target, timeout=30, retry=RetryPolicy.off()) as anonymous,
        pytest.raises(errors.Unauthenticated),
    ):
        anonymous.get(doc_id)
    credentials = channel_credentials(token=TOKEN)
    with BlobClient(server.target, timeout=30, credentials=credentials) as auditor:
        assert auditor.get(doc_id).data == rfc8785.dumps(DOC)
    assert TOKEN not in server.log()
