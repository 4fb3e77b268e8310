"""Traces across real processes (issue 16): a caller's traceparent sent to the bridge over
HTTP reaches the server; both export their spans to a real OTLP/HTTP receiver started by
the test, and the bridge's span and the server's share the caller's trace id."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.bridge_processes import BridgeProcess, HttpRpc
from tests.faults import wait_until
from tests.otlp_receiver import otlp_receiver
from tests.processes import ServerProcess

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER_KIND, CLIENT_KIND = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


def test_bridge_and_server_spans_join_the_callers_trace(tmp_path: Path) -> None:
    # Batches sent every 100 ms (default 5 s): the spans arrive while the test waits.
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with otlp_receiver() as receiver:
        server = ServerProcess(
            tmp_path / "data",
            tmp_path / "server.log",
            "--otlp-endpoint",
            receiver.url,
            env=env,
        )
        bridge: BridgeProcess | None = None
        try:
            server.start()
            bridge = BridgeProcess(
                server.target,
                tmp_path / "bridge.log",
                env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url},  # the standard way
            ).start()
            http = HttpRpc(bridge.url)
            try:
                body = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "blobs/put",
                    "params": {"data": {"traced": True}},
                }
                headers = {
                    "Content-Type": "application/json",
                    "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
                }
                reply = http.request("POST", "/", json.dumps(body).encode(), headers)
                assert reply.status == 200 and "result" in reply.json()
                untraced = http.result("blobs/put", {"data": {"untraced": True}})
                assert untraced["blob_id"].startswith("sha256:")
            finally:
                http.close()

            def ours() -> list:  # type: ignore[type-arg]
                return [s for s in receiver.received() if s.trace_id == TRACE_ID]

            def theirs() -> list:  # type: ignore[type-arg]
                return [s for s in receiver.received() if s.trace_id != TRACE_ID]

            wait_until(
                lambda: len(ours()) >= 3 and len(theirs()) >= 3,
                20,
                "the bridge's and the server's spans of both calls",
            )
        finally:
            if bridge is not None:
                bridge.kill()
            server.kill()
        spans = ours()
        by = {(s.service, s.kind): s for s in spans}
        assert sorted(by) == [
            ("blobstore", SERVER_KIND),
            ("blobstore-bridge", SERVER_KIND),
            ("blobstore-bridge", CLIENT_KIND),
        ]
        http_span = by[("blobstore-bridge", SERVER_KIND)]
        upstream = by[("blobstore-bridge", CLIENT_KIND)]
        served = by[("blobstore", SERVER_KIND)]
        assert http_span.name == "POST /" and http_span.parent_span_id == CALLER_SPAN
        assert upstream.parent_span_id == http_span.span_id
        assert served.name == "blobstore.v1.BlobService/Put"
        assert served.parent_span_id == upstream.span_id
        assert served.attributes["rpc.grpc.status_code"] == 0
        # The call sent without a traceparent is a trace of its own, also through both.
        assert len(theirs()) == 3 and len({s.trace_id for s in theirs()}) == 1
