"""The lean OTLP span encoding (blobstore/otlp_encoding.py) writes the library's bytes.

Every batch here is encoded both ways and compared byte for byte with what
opentelemetry-exporter-otlp-proto-common writes: spans the fast path covers, and the
ones it hands back to the library (events, links, list attributes), mixed in one
batch, over several resources and scopes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from blobstore import otlp_encoding
from blobstore.otlp_encoding import SpanEncoder

RESOURCES = [
    Resource.create({"service.name": "blobstore"}),
    Resource(
        {"service.name": "other", "n": 3}, schema_url="https://opentelemetry.io/schemas/1.21.0"
    ),
]
SCOPES: list[InstrumentationScope | None] = [
    InstrumentationScope("blobstore"),
    InstrumentationScope("x", "1.0", "https://example.com/schema"),
    None,
]
ATTRIBUTE_VALUES: list[Any] = [
    "grpc",
    "",
    "ünïcode ✓",
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    300,
    True,
    False,
    0.0,
    -2.5,
    -0.0,
    float("inf"),
]


def _context(rng: random.Random, remote: bool = False, state: bool = False) -> SpanContext:
    return SpanContext(
        rng.getrandbits(128) or 1,
        rng.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(rng.choice((0, 1))),
        trace_state=TraceState([("vendor", "abc"), ("k", "v")]) if state else None,
    )


def _span(rng: random.Random, fast: bool) -> ReadableSpan:
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.method": rng.choice(("Get", "Put", "BatchGet")),
        "rpc.grpc.status_code": rng.randrange(17),
    }
    for n in range(rng.randrange(4)):
        attributes[f"a{n}"] = rng.choice(ATTRIBUTE_VALUES)
    events: tuple[Event, ...] = ()
    links: tuple[Link, ...] = ()
    if not fast:
        kind = rng.randrange(3)
        if kind == 0:
            events = (Event("exception", {"exception.type": "ValueError"}, 17),)
        elif kind == 1:
            links = (Link(_context(rng), {"l": 1}),)
        else:
            attributes["list"] = [1, 2, 3]
    parent = rng.choice((None, _context(rng, remote=True), _context(rng, remote=False)))
    status = rng.choice(
        (
            Status(StatusCode.UNSET),
            Status(StatusCode.OK),
            Status(StatusCode.ERROR, "DATA_LOSS"),
            Status(StatusCode.ERROR),
        )
    )
    start = rng.randrange(1, 2**63)
    return ReadableSpan(
        name=rng.choice(("blobstore.v1.BlobService/Get", "stepflow.v1.BlobService/PutBlob", "")),
        context=_context(rng, state=rng.random() < 0.3),
        parent=parent,
        resource=rng.choice(RESOURCES),
        instrumentation_scope=rng.choice(SCOPES),
        attributes=attributes,
        events=events,
        links=links,
        kind=rng.choice(list(SpanKind)),
        status=status,
        start_time=start,
        end_time=start + rng.randrange(10**9),
    )


@pytest.mark.parametrize("seed", range(20))
def test_batches_are_the_librarys_bytes(seed: int) -> None:
    rng = random.Random(seed)
    spans = [_span(rng, fast=rng.random() < 0.8) for _ in range(rng.randrange(1, 200))]
    expected = encode_spans(spans).SerializePartialToString()
    ours = SpanEncoder(encode_spans).encode(spans)
    assert ours == expected
    # And what a collector decodes from it is the same request.
    assert ExportTraceServiceRequest.FromString(ours) == encode_spans(spans)


def test_a_servers_spans_take_the_fast_path() -> None:
    """The spans the server makes (grpc/tracing.py) are encoded without the library."""
    rng = random.Random(7)
    spans = [_span(rng, fast=True) for _ in range(50)]
    asked: list[int] = []

    def library(batch: Any) -> Any:
        asked.append(len(batch))
        return encode_spans(batch)

    encoder = SpanEncoder(library)
    assert encoder.encode(spans) == encode_spans(spans).SerializePartialToString()
    # Only once per resource and scope, to learn their fields; never for a span.
    groups = {(id(s.resource), id(s.instrumentation_scope)) for s in spans}
    assert asked == [1] * len(groups)
    asked.clear()
    encoder.encode(spans)
    assert asked == []


def test_a_nan_attribute_keeps_its_bits() -> None:
    rng = random.Random(5)
    spans = [_span(rng, fast=True) for _ in range(3)]
    nan: dict[str, Any] = {**(spans[1].attributes or {}), "nan": float("nan")}
    spans[1]._attributes = nan
    assert SpanEncoder(encode_spans).encode(spans) == encode_spans(spans).SerializePartialToString()


def test_an_empty_batch() -> None:
    assert SpanEncoder(encode_spans).encode([]) == b""


def test_install_makes_the_exporter_use_it() -> None:
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    assert otlp_encoding.install()
    assert otlp_encoding.install()  # a second time changes nothing
    rng = random.Random(3)
    spans = [_span(rng, fast=True) for _ in range(10)]
    request = trace_exporter.encode_spans(spans)  # type: ignore[attr-defined]
    assert not isinstance(request, ExportTraceServiceRequest)  # encoded by ours
    encoded = request.SerializePartialToString()
    assert encoded == encode_spans(spans).SerializePartialToString()
