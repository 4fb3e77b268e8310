"""The pieces of issue 16 that need no process: JSON log lines, request id rules, the
storage MetricsBackend over the in-memory backend (each counter moved by exactly the
operations made, in a registry of the test's own), and the call observer in front of
the guard."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from blobstore import logs
from blobstore.api.blobstore.v1 import blobstore_pb2 as pb
from blobstore.errors import BlobNotFound, DataLoss
from blobstore.grpc.guard import Guard
from blobstore.grpc.interceptor_base import InterceptorChain
from blobstore.grpc.metrics import CallObserver, RpcMetrics
from blobstore.model import BlobType
from blobstore.service.admission import Admission, AdmissionLimits
from blobstore.storage.memory import MemoryBackend
from blobstore.storage.metrics import MetricsBackend, StorageMetrics
from blobstore.storage.verifying import VerifyingBackend
from tests.rpc_helpers import sha256_id


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("blobstore.test", logging.WARNING, __file__, 1, message, args, None)


def test_json_lines_carry_the_request_id_of_the_running_call() -> None:
    formatter = logs.JsonFormatter()
    outside = json.loads(formatter.format(_record("free %d", 1)))
    assert outside["message"] == "free 1" and "request_id" not in outside
    assert outside["level"] == "WARNING" and outside["logger"] == "blobstore.test"
    assert outside["time"].endswith("Z")
    token = logs.request_id.set("abc")
    try:
        record = _record("in a call: %s", 'quote " and \n newline')
        record.fields = {"code": "OK"}
        line = formatter.format(record)
    finally:
        logs.request_id.reset(token)
    assert "\n" not in line  # one line per record, whatever the message holds
    inside = json.loads(line)
    assert inside["request_id"] == "abc" and inside["code"] == "OK"
    assert inside["message"] == 'in a call: quote " and \n newline'


@pytest.mark.parametrize(
    ("given", "kept"),
    [("caller-1", True), ("", False), (None, False), ("tab\there", False), ("é", False)],
)
def test_a_caller_id_is_kept_only_if_printable_ascii(given: str | None, kept: bool) -> None:
    rid = logs.accept_request_id(given)
    assert (rid == given) is kept
    if not kept:
        assert len(rid) == 32 and int(rid, 16) >= 0


def test_a_long_caller_id_is_cut() -> None:
    assert logs.accept_request_id("x" * 1000) == "x" * logs.MAX_REQUEST_ID


async def test_metrics_backend_counts_each_operation(memory: MemoryBackend) -> None:
    registry = CollectorRegistry()
    backend = VerifyingBackend(MetricsBackend(memory, "memory", StorageMetrics(registry)))

    def sample(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, {"backend": "memory", **labels})
        return found or 0.0

    data = b"x" * 1000
    await backend.put(sha256_id(data), BlobType.BINARY, data)
    await backend.put(sha256_id(data), BlobType.BINARY, data)
    assert (await backend.get(sha256_id(data))).data == data
    with pytest.raises(BlobNotFound):
        await backend.get(sha256_id(b"absent"))
    writer = await backend.open_writer()
    await writer.write(b"ab")
    await writer.write(b"cd")
    await writer.commit(sha256_id(b"abcd"), BlobType.BINARY)
    stream = await backend.get_stream(sha256_id(b"abcd"), 3)
    assert b"".join([chunk async for chunk in stream]) == b"abcd"
    await stream.aclose()
    # Content stored under another's id: the verifier quarantines it through the decorator.
    await memory.put(sha256_id(b"claimed"), BlobType.BINARY, b"actual")
    with pytest.raises(DataLoss):
        await backend.get(sha256_id(b"claimed"))

    assert sample("blobstore_storage_puts_total", result="created") == 2
    assert sample("blobstore_storage_puts_total", result="deduplicated") == 1
    assert sample("blobstore_storage_bytes_total", operation="put") == 2000
    assert sample("blobstore_storage_bytes_total", operation="commit") == 4
    assert sample("blobstore_storage_bytes_total", operation="get") == 1000 + len(b"actual")
    assert sample("blobstore_storage_bytes_total", operation="get_stream") == 4
    assert sample("blobstore_storage_quarantines_total") == 1
    duration = "blobstore_storage_operation_duration_seconds_count"
    assert sample(duration, operation="get", outcome="ok") == 2
    assert sample(duration, operation="get", outcome="BlobNotFound") == 1
    assert sample(duration, operation="put", outcome="ok") == 2
    assert sample(duration, operation="commit", outcome="ok") == 1


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("b'Authorization: Bearer s3cr3t\\x01tail'", "b'Authorization: [redacted]'"),
        ("('authorization', 'Bearer s3cr3t')", "('authorization', '[redacted]')"),
        ("authorization=Basic s3cr3t", "authorization=[redacted]"),
        ("Bearer s3cr3t, again Bearer s3cr3t", "Bearer [redacted], again Bearer [redacted]"),
        ("token 'reader' has scope(s) read", "token 'reader' has scope(s) read"),
        ("TLS off; no bearer tokens", "TLS off; no bearer tokens"),
        ("Bearer eyJhbGciOi.eyJzdWIi.sig", "Bearer [redacted]"),
        ("BEARER AbCdEfGh", "BEARER [redacted]"),
    ],
)
def test_credentials_are_redacted(text: str, clean: str) -> None:
    assert logs.redact(text) == clean


@pytest.mark.parametrize("formatter", [logs.JsonFormatter(), logging.Formatter()])
def test_the_redaction_filter_covers_messages_and_tracebacks(
    formatter: logging.Formatter,
) -> None:
    try:
        raise ValueError("header Authorization: Bearer s3cr3t is bad")
    except ValueError:
        record = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "got %s", ("Bearer s3cr3t",), None
        )
        record.exc_info = sys.exc_info()
    assert logs.Redaction().filter(record)
    line = formatter.format(record)
    assert "s3cr3t" not in line
    assert "got Bearer [redacted]" in line and "Authorization: [redacted]" in line


def test_access_log_sampling_keeps_every_failure() -> None:
    """Sampled access lines: routine calls by the fraction set, failures always."""
    import grpc

    from blobstore.grpc.metrics import _sampled
    from jsonrpc_bridge.observe import AccessLog

    assert not any(_sampled(0.0, code) for code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND))
    assert _sampled(0.0, grpc.StatusCode.DATA_LOSS) and _sampled(0.0, grpc.StatusCode.INTERNAL)
    assert _sampled(1.0, grpc.StatusCode.OK)
    kept = sum(_sampled(0.5, grpc.StatusCode.OK) for _ in range(2000))
    assert 600 < kept < 1400  # about half (the chance of missing this is below 1e-40)
    quiet = AccessLog(on=True, sample=0.0)
    assert not quiet.wants(200) and not quiet.wants(404)
    assert quiet.wants(415) and quiet.wants(503)
    assert not AccessLog(on=False).wants(500)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


class _Context:
    """What the observer and the guard ask of a call's context."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None

    def code(self) -> grpc.StatusCode | None:
        return self.status

    async def abort(self, code: grpc.StatusCode, details: str = "", trailers: object = ()) -> None:
        self.status = code
        raise grpc.aio.AbortError(details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def set_trailing_metadata(self, metadata: object) -> None:
        pass


@pytest.mark.parametrize("request_ids", [False, True])
async def test_the_observer_counts_admitted_and_refused_calls_of_a_method_in_any_order(
    request_ids: bool,
) -> None:
    """The guard answers an admitted call with the method's handler (unary) and a refused
    one with a handler of another kind (it reads no request): the observer must wrap
    whichever behaviour each has, whichever came first."""
    registry = CollectorRegistry()
    admission = Admission(AdmissionLimits(max_calls=1))
    chain = InterceptorChain(
        [CallObserver(RpcMetrics(registry), request_ids=request_ids), Guard(admission)]
    )
    details = _Details("/blobstore.v1.BlobService/Stat")
    request = pb.StatRequest(id=sha256_id(b"x")).SerializeToString()

    async def stat(message: pb.StatRequest, context: object) -> pb.StatResponse:
        return pb.StatResponse(id=message.id)

    base = grpc.unary_unary_rpc_method_handler(
        stat,
        request_deserializer=pb.StatRequest.FromString,
        response_serializer=pb.StatResponse.SerializeToString,
    )

    async def lookup(_: grpc.HandlerCallDetails) -> Any:
        return base

    async def admitted() -> None:
        handler = await chain.intercept_service(lookup, details)
        message = handler.request_deserializer(request)
        handler.response_serializer(await handler.unary_unary(message, _Context()))

    async def refused() -> None:
        admission.calls += 1  # the one call the cap allows is in progress
        try:
            handler = await chain.intercept_service(lookup, details)

            async def no_messages() -> AsyncIterator[bytes]:
                return
                yield b""

            context = _Context()
            with pytest.raises(grpc.aio.AbortError):
                await handler.stream_unary(no_messages(), context)
            assert context.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            admission.calls -= 1

    def calls(code: str) -> float:
        labels = {"service": "blobstore.v1.BlobService", "method": "Stat", "code": code}
        return registry.get_sample_value("blobstore_rpc_calls_total", labels) or 0.0

    for step in (refused, admitted, admitted, refused, admitted):
        await step()
    assert (calls("OK"), calls("RESOURCE_EXHAUSTED")) == (3, 2)
    assert admission.calls == 0 and admission.bytes == 0
