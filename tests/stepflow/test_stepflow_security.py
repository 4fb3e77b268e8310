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
from typing import TypeVar

import pytest
import rfc8785

from blobstore import errors
from blobstore.client import BlobClient
from blobstore.credentials import channel_credentials
from blobstore.grpc.auth import token_hash
from blobstore.retry import RetryPolicy
from tests.bridge_processes import BridgeFactory, BridgeProcess
from tests.bridge_seed import json_id
from tests.processes import ServerProcess
from tests.stepflow.runtime import (
    HttpRuntime,
    Runtime,
    SdkProcess,
    StdioRuntime,
    execute_params,
)
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


class _SdkRuntimes:
    """Stepflow SDK component servers, each behind an initialized stand-in runtime; on exit
    every SDK is killed and every HTTP runtime closed."""

    def __init__(self, logs: Path) -> None:
        self._logs = logs
        self._sdks: list[SdkProcess] = []
        self._http: list[HttpRuntime] = []

    def http(
        self,
        bridge: BridgeProcess,
        log_name: str,
        *,
        authorization: str | None = None,
        client_cert: tuple[Path, Path] | None = None,
        bridge_ca: Path,
    ) -> HttpRuntime:
        """stepflow-py 0.9 (Streamable HTTP), its runtime posting to an https:// bridge."""
        sdk = self._sdk("09", log_name)
        runtime = HttpRuntime(
            bridge, sdk, bridge_ca=bridge_ca, authorization=authorization, client_cert=client_cert
        )
        self._http.append(runtime)
        return _initialized(runtime)

    def stdio(self, bridge: BridgeProcess, log_name: str) -> StdioRuntime:
        """stepflow-py 0.7 (stdio), wired to a stdio bridge."""
        return _initialized(StdioRuntime(bridge, self._sdk("07", log_name)))

    def _sdk(self, version: str, log_name: str) -> SdkProcess:
        sdk = SdkProcess(version, self._logs / log_name)
        self._sdks.append(sdk)  # before its runtime starts it: killed even if that fails
        return sdk

    def __enter__(self) -> _SdkRuntimes:
        return self

    def __exit__(self, *exc: object) -> None:
        for sdk in self._sdks:
            sdk.kill()
        for runtime in self._http:
            runtime.close()


_R = TypeVar("_R", bound=Runtime)


def _initialized(runtime: _R) -> _R:
    assert runtime.initialize()["result"] == {"server_protocol_version": 1}
    return runtime


def _writes_only_through(allowed: Runtime, refused: Runtime, value: object) -> None:
    """A put_get through `allowed` stores and reads `value`; through `refused` the blobs/put
    is answered PERMISSION_DENIED."""
    assert allowed.execute("/put_get", {"value": value}) == {
        "blob_id": json_id(value),
        "value": value,
    }
    refused.call("components/execute", execute_params("/put_get", {"value": {"read": "only"}}))
    error = refused.traffic.of("blobs/put")[-1].reply_json()["error"]
    assert (error["code"], error["data"]["reason"]) == (-32011, "PERMISSION_DENIED")


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
    with _SdkRuntimes(tmp_path) as runtimes:
        bridge = start_bridge(server.target, *upstream, *https)
        allowed, refused = (
            runtimes.http(
                bridge, f"sdk-09-{token}.log", bridge_ca=pki.ca, authorization=f"Bearer {token}"
            )
            for token in (writer, reader)
        )
        _writes_only_through(allowed, refused, value)

        # stepflow-py 0.7 over stdio: the bridge's service token, from the environment.
        stdio = start_bridge(
            server.target, *upstream, stdio=True, env={**os.environ, "BLOBSTORE_TOKEN": writer}
        )
        over_stdio = runtimes.stdio(stdio, "sdk-07.log")
        assert over_stdio.execute("/put_get", {"value": [value]})["value"] == [value]
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
    with _SdkRuntimes(tmp_path) as runtimes:
        builder, reader = (
            runtimes.http(
                bridge,
                f"sdk-09-{pair.cert.stem}.log",
                bridge_ca=pki.ca,
                client_cert=(pair.cert, pair.key),
            )
            for pair in (pki.san_client, pki.client)
        )
        _writes_only_through(builder, reader, value)
    assert service not in server.log() and service not in bridge.log()
