"""A real Stepflow worker (no token, insecure channel) against a server with tokens on.

The server has --tokens-file and --anonymous stepflow.v1=read,write: the real
stepflow-server 0.13.0 runs tests/stepflow/flow_worker.py, whose SDK dials our
stepflow.v1 without credentials, and the flow completes; the same blobs read
through blobstore.v1 need a token (docs/security.md, "Stepflow workers").

The JSON-RPC-era SDKs reach a token-protected server through the bridge: stepflow-py 0.9
(Streamable HTTP) through an HTTPS bridge, its runtime passing a caller's token on;
stepflow-py 0.7 (stdio) through a stdio bridge with the service token (docs/security.md,
"The bridge").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import rfc8785

from blobstore import errors
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from tests.bridge_processes import BridgeFactory
from tests.bridge_seed import json_id
from tests.processes import ServerProcess
from tests.stepflow.runtime import HttpRuntime, SdkProcess, StdioRuntime, execute_params
from tests.stepflow.stepflow_helpers import DOC, Orchestrator, run_outputs, server_binary_runs
from tests.stepflow_venv import StepflowVenv
from tests.tls_certs import Pki, server_tls_args

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


def test_the_sdks_reach_a_token_server_through_the_bridge(
    stepflow_sdks: None,
    start_server: Callable[..., ServerProcess],
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    writer, reader = "sdk-writer-token-2b7d", "sdk-reader-token-6f1a"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(writer)} writer read,write\n{token_hash(reader)} reader read\n")
    server = start_server(
        "--tokens-file",
        str(tokens),
        *server_tls_args(pki),
    )
    upstream = ("--upstream-tls-ca", str(pki.ca))
    https = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    value = {"through": "an https bridge", "n": [1, 2.5]}
    sdks: list[SdkProcess] = []
    runtimes: list[HttpRuntime] = []
    try:
        bridge = start_bridge(server.target, *upstream, *https)
        for token in (writer, reader):
            sdks.append(SdkProcess("09", tmp_path / f"sdk-09-{token}.log"))
            runtimes.append(
                HttpRuntime(bridge, sdks[-1], bridge_ca=pki.ca, authorization=f"Bearer {token}")
            )
            assert runtimes[-1].initialize()["result"] == {"server_protocol_version": 1}
        allowed, refused = runtimes
        assert allowed.execute("/put_get", {"value": value}) == {
            "blob_id": json_id(value),
            "value": value,
        }
        refused.call("components/execute", execute_params("/put_get", {"value": {"read": "only"}}))
        error = refused.traffic.of("blobs/put")[-1].reply_json()["error"]
        assert (error["code"], error["data"]["reason"]) == (-32011, "PERMISSION_DENIED")

        # stepflow-py 0.7 over stdio: the bridge's service token, from the environment.
        stdio = start_bridge(
            server.target, *upstream, stdio=True, env={**os.environ, "BLOBSTORE_TOKEN": writer}
        )
        sdks.append(SdkProcess("07", tmp_path / "sdk-07.log"))
        over_stdio = StdioRuntime(stdio, sdks[-1])
        assert over_stdio.initialize()["result"] == {"server_protocol_version": 1}
        assert over_stdio.execute("/put_get", {"value": [value]})["value"] == [value]
    finally:
        for sdk in sdks:
            sdk.kill()
        for runtime in runtimes:
            runtime.close()
    for log in (server.log(), bridge.log(), stdio.log()):
        assert writer not in log and reader not in log


def test_the_09_sdk_reaches_the_bridge_with_a_client_certificate(
    stepflow_sdks: None,
    start_server: Callable[..., ServerProcess],
    start_bridge: BridgeFactory,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """stepflow-py 0.9's blobs/* through a bridge deciding by client certificate.

    The SDK's component server never connects to the bridge itself: it sends blobs/* to
    the runtime on its event stream, and the runtime (the stand-in) posts them to the
    bridge - here over mTLS, presenting a certificate and no token. The bridge checks the
    certificate's line and calls the server with its own service token.
    """
    service = "sdk-bridge-service-token-4c1d"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token_hash(service)} bridge read,write\n")
    server = start_server("--tokens-file", str(tokens), *server_tls_args(pki))
    identities = tmp_path / "identities"
    identities.write_text(
        "uri:spiffe://blobs/worker-2 builder read,write\ncn:worker-1 reader read\n"
    )
    service_file = tmp_path / "service-token"
    service_file.write_text(service)
    bridge = start_bridge(
        server.target,
        *("--upstream-tls-ca", str(pki.ca), "--upstream-token-file", str(service_file)),
        *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
        *("--tls-client-ca", str(pki.ca), "--client-identities", str(identities)),
    )
    value = {"through": "mTLS", "n": [3, 4.5]}
    sdks: list[SdkProcess] = []
    runtimes: list[HttpRuntime] = []
    try:
        for pair in (pki.san_client, pki.client):
            sdks.append(SdkProcess("09", tmp_path / f"sdk-09-{pair.cert.stem}.log"))
            runtimes.append(
                HttpRuntime(bridge, sdks[-1], bridge_ca=pki.ca, client_cert=(pair.cert, pair.key))
            )
            assert runtimes[-1].initialize()["result"] == {"server_protocol_version": 1}
        builder, reader = runtimes
        assert builder.execute("/put_get", {"value": value}) == {
            "blob_id": json_id(value),
            "value": value,
        }
        reader.call("components/execute", execute_params("/put_get", {"value": {"read": "only"}}))
        error = reader.traffic.of("blobs/put")[-1].reply_json()["error"]
        assert (error["code"], error["data"]["reason"]) == (-32011, "PERMISSION_DENIED")
    finally:
        for sdk in sdks:
            sdk.kill()
        for runtime in runtimes:
            runtime.close()
    assert service not in server.log() and service not in bridge.log()
