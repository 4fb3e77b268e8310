"""Tracing (issue 16, point 3) without processes: the SDK's in-memory exporter records the
spans of an in-process gRPC server (the real servicer, guard and tracing interceptor over
the memory backend) and of the bridge's aiohttp middleware and client interceptors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from blobstore import tracing
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.api.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from blobstore.grpc.guard import Guard
from blobstore.grpc.servicer import BlobServicer
from blobstore.grpc.tracing import TracingInterceptor
from blobstore.service.admission import Admission, AdmissionLimits
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.verifying import VerifyingBackend
from blobstore.store import BlobStore
from jsonrpc_bridge import tracing as bridge_tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@contextlib.asynccontextmanager
async def _served(exporter: InMemorySpanExporter) -> AsyncIterator[str]:
    """An in-process server with the tracing interceptor, tracing started now (so with
    the OTEL_* variables set now)."""
    traced = tracing.start("blobstore-test", "", exporter=exporter)
    guard = Guard(Admission(AdmissionLimits()), stream_idle=60.0)
    server = grpc.aio.server(interceptors=[TracingInterceptor(traced.tracer), guard])
    BlobServicer(BlobStore(VerifyingBackend(MemoryBackend()))).add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        traced.shutdown()


@pytest.fixture
async def target(exporter: InMemorySpanExporter) -> AsyncIterator[str]:
    async with _served(exporter) as address:
        yield address


def _hex(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


async def test_a_call_joins_the_callers_trace(target: str, exporter: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        await stub.Put(pb.PutRequest(data=b"traced"), metadata=(("traceparent", TRACEPARENT),))
    (span,) = exporter.get_finished_spans()
    assert span.name == "blobstore.v1.BlobService/Put"
    assert span.kind is SpanKind.SERVER
    assert _hex(span.context.trace_id, 32) == TRACE_ID
    assert span.parent is not None and _hex(span.parent.span_id, 16) == PARENT
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.method"] == "Put"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert span.status.status_code is StatusCode.UNSET


async def test_without_traceparent_a_call_starts_a_trace(
    target: str, exporter: InMemorySpanExporter
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await stub.Get(pb.GetRequest(id="sha256:" + "0" * 64))
        assert absent.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError):
            # A garbled traceparent is ignored, never an error of the call.
            await stub.Get(pb.GetRequest(id="bad"), metadata=(("traceparent", "00-zz"),))
    # An error is sent by context.abort() before the handler unwinds, so the caller can
    # see it before the server's span ends: wait (bounded) for the second span.
    for _ in range(200):
        if len(exporter.get_finished_spans()) >= 2:
            break
        await asyncio.sleep(0.01)
    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["blobstore.v1.BlobService/Get"] * 2
    for span in spans:
        assert span.parent is None
        # A caller's mistake, not the server's: no error status.
        assert span.status.status_code is StatusCode.UNSET
    assert spans[0].attributes is not None and spans[1].attributes is not None
    assert spans[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert spans[1].attributes["rpc.grpc.status_code"] == code


async def _put(target: str, data: bytes, traceparent: str | None = None) -> None:
    metadata = (("traceparent", traceparent),) if traceparent else None
    async with grpc.aio.insecure_channel(target) as channel:
        await pb_grpc.BlobServiceStub(channel).Put(pb.PutRequest(data=data), metadata=metadata)


async def test_a_callers_unsampled_trace_is_followed(
    target: str, exporter: InMemorySpanExporter
) -> None:
    """parentbased_always_on (the default): a caller that did not sample its trace gets
    no span from us either; one that did, and one without a trace, do."""
    await _put(target, b"not sampled", f"00-{TRACE_ID}-{PARENT}-00")
    assert exporter.get_finished_spans() == ()
    await _put(target, b"sampled", TRACEPARENT)
    await _put(target, b"no trace")
    spans = exporter.get_finished_spans()
    assert [s.parent is not None for s in spans] == [True, False]
    assert all(s.context.trace_flags.sampled for s in spans)


@pytest.mark.parametrize(
    ("sampler", "arg", "recorded"),
    [("always_off", "", False), ("traceidratio", "1.0", True), ("traceidratio", "0", False)],
)
async def test_the_sampler_of_the_environment_decides(
    monkeypatch: pytest.MonkeyPatch,
    exporter: InMemorySpanExporter,
    sampler: str,
    arg: str,
    recorded: bool,
) -> None:
    """OTEL_TRACES_SAMPLER other than the default: the SDK's sampler is asked per call."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    async with _served(exporter) as address:
        await _put(address, b"sampled or not", TRACEPARENT)
    spans = exporter.get_finished_spans()
    assert len(spans) == (1 if recorded else 0)
    for span in spans:  # not parent-based, yet still the caller's trace and its child
        assert _hex(span.context.trace_id, 32) == TRACE_ID
        assert span.parent is not None and _hex(span.parent.span_id, 16) == PARENT


async def test_the_bridge_passes_its_span_to_the_service(
    target: str, exporter: InMemorySpanExporter
) -> None:
    """HTTP request span → client span → the server's span, one trace."""
    traced = tracing.start("bridge-test", "", exporter=exporter)
    channel = grpc.aio.insecure_channel(
        target, interceptors=bridge_tracing.client_interceptors(traced.tracer)
    )
    stub = pb_grpc.BlobServiceStub(channel)

    async def handler(request: web.Request) -> web.Response:
        await stub.Put(pb.PutRequest(data=await request.read()))
        return web.Response(text="stored")

    app = web.Application(middlewares=[bridge_tracing.middleware(traced.tracer)])
    app.router.add_post("/", handler)
    async with TestClient(TestServer(app)) as client:
        reply = await client.post("/", data=b"via bridge", headers={"traceparent": TRACEPARENT})
        assert reply.status == 200
    await channel.close(None)
    finished = exporter.get_finished_spans()
    assert sorted((s.name, s.kind.name) for s in finished) == [
        ("POST /", "SERVER"),
        ("blobstore.v1.BlobService/Put", "CLIENT"),
        ("blobstore.v1.BlobService/Put", "SERVER"),
    ]
    http = next(s for s in finished if s.name == "POST /")
    client_span = next(s for s in finished if s.kind is SpanKind.CLIENT)
    server = next(s for s in finished if s.kind is SpanKind.SERVER and s is not http)
    assert {_hex(s.context.trace_id, 32) for s in (http, client_span, server)} == {TRACE_ID}
    assert http.parent is not None and _hex(http.parent.span_id, 16) == PARENT
    assert client_span.parent is not None and client_span.parent.span_id == http.context.span_id
    assert server.parent is not None and server.parent.span_id == client_span.context.span_id
    assert http.attributes is not None and http.attributes["http.response.status_code"] == 200
    traced.shutdown()


def test_tracing_is_off_unless_asked() -> None:
    assert not tracing.wanted("", {})
    assert tracing.wanted("http://collector:4318", {})
    assert tracing.wanted("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing.wanted("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.wanted("http://c:4318", {"OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted(
        "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_TRACES_EXPORTER": "none"}
    )
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"


async def test_each_call_joins_its_own_callers_trace(
    target: str, exporter: InMemorySpanExporter
) -> None:
    """The traced handler is made once per method; the parent is each call's own."""
    other = "0af7651916cd43dd8448eb211c80319c"
    parents = [TRACEPARENT, None, f"00-{other}-b7ad6b7169203331-01", TRACEPARENT]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.BlobServiceStub(channel)
        for parent in parents:
            metadata = (("traceparent", parent),) if parent else ()
            await stub.Put(pb.PutRequest(data=b"traced"), metadata=metadata)
    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    joined = [None if span.parent is None else _hex(span.context.trace_id, 32) for span in spans]
    assert joined == [TRACE_ID, None, other, TRACE_ID]
